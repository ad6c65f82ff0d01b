"""Hostile recipes: each one a clear error (exit 2, no traceback), quickly and without memory blow-up; and a
property-based test that the loader never raises anything but a recipe error."""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qnnbuild.engine.recipe.checks import load_recipe
from qnnbuild.errors import RecipeError
from tests.conftest import TINY_RECIPE

BOMB = "\n".join(["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] +
                 [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]).encode()

HOSTILE = {
    "billion laughs": BOMB,
    "huge file": b"schema_version: 1\nrecipe: x\nstages: {}\n" + b"# padding\n" * 300_000,
    "deep nesting": b"a: " + b"[" * 300_000 + b"]" * 300_000,
    "deep block nesting": "".join(f"{' ' * i}k{i}:\n" for i in range(2000)).encode(),
    "binary garbage": bytes(range(256)) * 64,
    "not UTF-8": b"schema_version: 1\nrecipe: caf\xe9\n",
    "tabs": b"schema_version: 1\nstages:\n\texport: {kind: export}\n",
    "duplicate keys": TINY_RECIPE.encode() + b"recipe: again\n",
    "escaping recipe name": TINY_RECIPE.replace("recipe: tiny", "recipe: ../../etc").encode(),
    "absolute recipe name": TINY_RECIPE.replace("recipe: tiny", "recipe: /tmp/x").encode(),
    "separator in stage name": TINY_RECIPE.replace("  convert:", "  con/vert:").encode(),
    "escaping output": b"schema_version: 1\nrecipe: x\nstages:\n  c: {kind: command, argv: [x], outputs: [../../x]}\n",
    "bad torch factory": b"schema_version: 1\nrecipe: x\nstages:\n  e: {kind: export, torch: 'os:system; rm -rf /', "
                         b"inputs: {x: [1]}}\n",
    "a list, not a mapping": b"- 1\n- 2\n",
    "python tags": b"!!python/object/apply:os.system ['touch pwned']\n",  # would create the file the test checks
    "python tags in a value": b"schema_version: 1\nrecipe: !!python/object/apply:os.system ['touch pwned']\n",
}


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # 2 GiB: a blow-up fails instead of swapping


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_recipe_is_a_clear_error(tmp_path: Path, name: str) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "r.yaml").write_bytes(HOSTILE[name])
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", "r.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, preexec_fn=_limit_memory, check=False)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("r.yaml:"), proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "pwned").exists()
    assert elapsed < 10, f"{name} took {elapsed:.1f} s"  # generous for a loaded CI box; typical is 0.2 s


def mutations() -> st.SearchStrategy[bytes]:
    base = TINY_RECIPE.encode()
    edit = st.tuples(st.integers(0, len(base)), st.integers(0, 8), st.binary(max_size=8))

    def apply(edits: list[tuple[int, int, bytes]]) -> bytes:
        out = base
        for where, cut, insert in edits:
            at = min(where, len(out))
            out = out[:at] + insert + out[at + cut:]
        return out

    structural = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                              lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=12)
    mutated_docs = structural.map(lambda value: yaml.safe_dump({"schema_version": 1, "recipe": "tiny",
                                                                "stages": value}).encode())
    return st.lists(edit, min_size=1, max_size=4).map(apply) | mutated_docs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=mutations())
def test_loader_raises_nothing_but_recipe_errors(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    path = tmp_path / "r.yaml"
    path.write_bytes(raw)
    try:
        load_recipe(path, "r.yaml")
    except RecipeError as exc:
        assert exc.problems and all(p.file == "r.yaml" and p.line >= 1 and p.column >= 1 for p in exc.problems)


def test_many_problems_stop_at_fifty(tmp_path: Path) -> None:
    """A recipe with thousands of problems is answered by its first 50, quickly (benchmarks/hostile.py times
    a 900 kB one)."""
    stages = "".join(f"  s{i}: {{kind: quantize, model: nowhere{i}, activations: int9, bogus: 1}}\n"
                     for i in range(2000))
    (tmp_path / "r.yaml").write_text("schema_version: 1\nrecipe: big\nstages:\n" + stages)
    with pytest.raises(RecipeError) as caught:
        load_recipe(tmp_path / "r.yaml", "r.yaml")
    messages = [p.message for p in caught.value.problems]
    assert len(messages) == 51 and messages[-1].startswith("… stopped after the first 50 problems")


def test_an_artifacts_folder_that_cannot_be_made_is_a_usage_error(tmp_path: Path) -> None:
    """`run --artifacts /dev/null/x` names the option and the folder (exit 2, no traceback); `--debug` shows one."""
    from tests.conftest import make_conv_model, run_process, write

    make_conv_model(tmp_path / "model.onnx")
    write(tmp_path, "tiny.yaml", TINY_RECIPE)
    proc = run_process(["run", "tiny.yaml", "--artifacts", "/dev/null/x"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--artifacts /dev/null/x: cannot make that folder (Not a directory)" in proc.stderr
    proc = run_process(["--debug", "run", "tiny.yaml", "--artifacts", "/dev/null/x"], tmp_path)
    assert "Traceback" in proc.stderr
