"""The incremental contract, end to end through the CLI, on a real 5-stage recipe of `command` stages."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import CLI, run_process, write

STEP = """\
import sys
from pathlib import Path
out, tag, fail, *inputs = sys.argv[1:]
if fail == "1":
    sys.exit("step failed on purpose")
parts = [tag]
for item in inputs:
    p = Path(item)
    files = sorted(f for f in p.rglob("*") if f.is_file() and ".qnnbuild" not in f.parts) if p.is_dir() else [p]
    parts += [f.read_text() for f in files if f.suffix != ".bin"]
    parts += [str(len(f.read_bytes())) for f in files if f.suffix == ".bin"]
Path(out).write_text("\\n".join(parts))
"""


def stage(name: str, upstream: str | None, tag: str | None = None, fail: int = 0) -> str:
    source = "inputs: {src: big.bin, script: step.py}" if upstream is None else \
        f"inputs: {{script: step.py}}, uses: {{up: {upstream}}}"
    feed = '"{inputs.src}"' if upstream is None else '"{uses.up}"'
    return (f"  {name}: {{kind: command, argv: [python3, '{{inputs.script}}', '{{out.{name}.txt}}', "
            f"'{{params.tag}}', '{{params.fail}}', {feed}], {source}, outputs: [{name}.txt], "
            f"params: {{tag: {tag or name}, fail: {fail}}}}}\n")


def recipe(d_tag: str = "d", c_fail: int = 0, extra: str = "") -> str:
    return ("schema_version: 1\nrecipe: five\nstages:\n" + stage("a", None) + stage("b", "a") +
            stage("c", "b", fail=c_fail) + stage("d", "c", d_tag) + stage("e", "d") + extra)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, "step.py", STEP)
    (tmp_path / "big.bin").write_bytes(os.urandom(1 << 20))
    write(tmp_path, "five.yaml", recipe())
    return tmp_path


def statuses(cli: CLI, *extra: str) -> dict[str, str]:
    code, out, err = cli("run", "five.yaml", "--json", *extra)
    assert out, err
    result = json.loads(out)
    assert result["ok"] is (code == 0)
    return {s["id"]: s["status"] for s in result["stages"]}


RAN = dict.fromkeys("abcde", "ran")
CACHED = dict.fromkeys("abcde", "cached")


def test_incremental_contract(project: Path, cli: CLI) -> None:
    assert statuses(cli) == RAN
    assert (project / "artifacts/five/e/e.txt").read_text().startswith("e\nd\nc\nb\na\n")
    assert statuses(cli) == CACHED  # no-op

    write(project, "five.yaml", recipe(d_tag="D"))  # edit one late stage's parameter
    assert statuses(cli) == {**CACHED, "d": "ran", "e": "ran"}
    assert (project / "artifacts/five/e/e.txt").read_text().startswith("e\nD\n")

    write(project, "five.yaml", recipe())  # revert: everything is in the store already
    assert statuses(cli) == CACHED
    assert (project / "artifacts/five/e/e.txt").read_text().startswith("e\nd\n")

    os.utime(project / "big.bin", ns=(1, 1))  # touch without changing content
    assert statuses(cli) == CACHED

    (project / "big.bin").write_bytes(os.urandom(1 << 19))  # change content: its downstream runs
    assert statuses(cli) == RAN


def test_status_names_what_changed(project: Path, cli: CLI) -> None:
    code, out, _ = cli("status", "five.yaml", "--json")
    assert code == 0
    assert [(s["id"], s["status"], s["reason"]) for s in json.loads(out)["stages"]][:2] == [
        ("a", "stale", "never built"), ("b", "stale", "input a will be rebuilt first")]
    cli("run", "five.yaml")
    write(project, "five.yaml", recipe(d_tag="D"))
    code, out, _ = cli("status", "five.yaml")
    assert out.splitlines() == [
        "a                              fresh  ", "b                              fresh  ",
        "c                              fresh  ", "d                              stale  parameter params.tag: d → D",
        "e                              stale  input d will be rebuilt first"]
    (project / "big.bin").write_bytes(b"other")
    _, out, _ = cli("status", "five.yaml")
    assert out.splitlines()[0] == "a                              stale  input file inputs.src changed"


def test_failure_publishes_nothing_and_resumes_after_the_fix(project: Path, cli: CLI) -> None:
    write(project, "five.yaml", recipe(c_fail=1, extra=stage("side", None, "side")))
    code, out, err = cli("run", "five.yaml", "--json")
    assert code == 1
    result = {s["id"]: s for s in json.loads(out)["stages"]}
    assert {k: v["status"] for k, v in result.items()} == {
        "a": "ran", "b": "ran", "c": "failed", "d": "skipped", "e": "skipped", "side": "ran"}
    assert "✗ c" in err and "command exited with status 1" in err
    log = project / "artifacts/five/logs/c.log"
    assert "step failed on purpose" in log.read_text()
    assert "log: artifacts/five/logs/c.log" in err
    assert not (project / "artifacts/five/c").exists()
    assert list((project / "artifacts/.store/.tmp").iterdir()) == []  # nothing half-written left behind
    entries = set(os.listdir(project / "artifacts/.store"))

    write(project, "five.yaml", recipe(extra=stage("side", None, "side")))
    assert statuses(cli) == {"a": "cached", "b": "cached", "c": "ran", "d": "ran", "e": "ran", "side": "cached"}
    assert entries < set(os.listdir(project / "artifacts/.store"))
    assert not log.exists()


def test_parallel_only_and_force(project: Path, cli: CLI) -> None:
    write(project, "five.yaml", recipe(extra=stage("side", None, "side")))
    code, out, _ = cli("run", "five.yaml", "--json", "--only", "b")
    assert code == 0
    assert {s["id"]: s["status"] for s in json.loads(out)["stages"]} == {"a": "ran", "b": "ran"}
    assert statuses(cli, "-j", "2") == {"a": "cached", "b": "cached", "c": "ran", "d": "ran", "e": "ran",
                                        "side": "ran"}
    forced = statuses(cli, "--force", "c")
    assert forced == {"a": "cached", "b": "cached", "c": "ran", "d": "cached", "e": "cached", "side": "cached"}
    code, _, err = cli("run", "five.yaml", "--only", "nope")
    assert code == 2
    assert err == "qnnbuild: five.yaml: no stage named 'nope'; stages: a, b, c, d, e, side\n"


def test_json_contract_on_a_clean_stdout(project: Path) -> None:
    proc = run_process(["run", "five.yaml", "--json"], project)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert set(result) == {"recipe", "ok", "seconds", "stages"}
    assert result["recipe"] == "five" and result["ok"] is True and isinstance(result["seconds"], float)
    first = result["stages"][0]
    assert set(first) == {"id", "stage", "target", "status", "seconds", "key", "outputs"}
    assert first["outputs"] == ["artifacts/five/a/a.txt"] and len(first["key"]) == 64
    assert first["target"] is None
    assert "✓ a" in proc.stderr and "done in" in proc.stderr


def test_store_layout_lock_and_readonly_outputs(project: Path, cli: CLI) -> None:
    cli("run", "five.yaml")
    view = project / "artifacts/five/a"
    assert view.is_symlink()
    key = view.resolve().name
    manifest = json.loads((view / ".qnnbuild/manifest.json").read_text())
    assert manifest["key"] == key and set(manifest["files"]) == {"a.txt"}
    assert not (view / "a.txt").stat().st_mode & stat.S_IWUSR
    lock = json.loads((project / "artifacts/five/qnnbuild.lock").read_text())
    assert lock["schema_version"] == 1
    assert lock["instances"]["a"]["key"] == key
    assert lock["instances"]["a"]["document"]["params"]["params"] == {"tag": "a", "fail": 0}
    assert set(lock["platform"]) == {"qnnbuild", "python", "machine", "system"}


def test_verify_gc_and_clean(project: Path, cli: CLI) -> None:
    cli("run", "five.yaml")
    assert cli("verify")[0] == 0
    target = (project / "artifacts/five/c/c.txt").resolve().relative_to(project)
    (project / target).chmod(0o644)
    (project / target).write_text("tampered")
    code, out, _ = cli("verify", "five.yaml")
    assert code == 1
    assert f"BAD  {target} (content differs from manifest)" in out.splitlines()

    write(project, "five.yaml", recipe(d_tag="D"))
    cli("run", "five.yaml")
    code, out, err = cli("gc")
    assert code == 0, err
    assert out.startswith("dropped 2 store entries")
    code, out, _ = cli("clean", "five.yaml")
    assert code == 0 and not (project / "artifacts/five").exists()
    cli("clean")
    assert os.listdir(project / "artifacts") == []


def test_command_cannot_publish_outside_its_folder(project: Path, cli: CLI) -> None:
    write(project, "five.yaml", "schema_version: 1\nrecipe: five\nstages:\n"
          "  s: {kind: command, argv: [sh, -c, 'echo x > keep.txt; echo y > junk.txt; ln -s /etc/passwd link'], "
          "outputs: [keep.txt]}\n")
    code, out, _ = cli("run", "five.yaml", "--json")
    assert code == 0
    assert json.loads(out)["stages"][0]["outputs"] == ["artifacts/five/s/keep.txt"]
    assert sorted(os.listdir(project / "artifacts/five/s")) == [".qnnbuild", "keep.txt"]


def test_dag_command(project: Path, cli: CLI) -> None:
    code, out, _ = cli("dag", "five.yaml", "--format", "mermaid")
    assert code == 0 and out.startswith("flowchart LR")
    assert cli("dag", "five.yaml")[1].splitlines()[0] == "five: 5 stage instances in 5 generations"


def test_damaged_store_entry_is_rebuilt_not_used(project: Path, cli: CLI) -> None:
    cli("run", "five.yaml")
    target = (project / "artifacts/five/c/c.txt").resolve()
    target.chmod(0o644)
    target.write_text("")  # truncated
    assert statuses(cli) == {**CACHED, "c": "ran"}
    assert (project / "artifacts/five/c/c.txt").read_text().startswith("c\nb\n")
    assert cli("verify")[0] == 0


def test_touched_input_is_hashed_once(project: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    from qnnbuild.common import hashing
    from qnnbuild.common.hashing import StatCache

    cli("run", "five.yaml")
    os.utime(project / "big.bin", ns=(5, 5))
    big = (project / "big.bin").resolve()
    hashed: list[Path] = []
    real = hashing.sha256_file

    def counting(path: Path) -> str:
        hashed.append(Path(path).resolve())
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    assert statuses(cli) == CACHED
    assert hashed.count(big) == 1  # touched: read once, its digest found unchanged
    cache = StatCache(project / "artifacts/.qnnbuild/statcache.json")
    assert cache.cache.data[str(big)][1] == 5  # the new mtime is remembered ...
    hashed.clear()
    assert statuses(cli) == CACHED
    assert big not in hashed  # ... so the next run only stats it


def test_input_deleted_after_a_build_is_a_located_recipe_error(project: Path, cli: CLI) -> None:
    cli("run", "five.yaml")
    (project / "big.bin").unlink()
    code, _, err = cli("run", "five.yaml")
    assert code == 2
    assert err.startswith("five.yaml:4:") and "stages.a.inputs.src: file not found: big.bin" in err


def test_output_modified_through_the_view_is_reported_and_rebuilt(project: Path, cli: CLI) -> None:
    cli("run", "five.yaml")
    view_file = project / "artifacts/five/b/b.txt"
    view_file.resolve().chmod(0o644)
    with view_file.open("a") as fh:
        fh.write("appended by hand")
    code, out, _ = cli("verify")
    assert code == 1
    assert any(line.startswith("BAD  ") and line.endswith("/b.txt (content differs from manifest)")
               for line in out.splitlines())
    assert statuses(cli) == {**CACHED, "b": "ran"}
    assert "appended by hand" not in view_file.read_text()
    assert cli("verify")[0] == 0


def test_symlinked_declared_output_fails_the_stage(project: Path, cli: CLI) -> None:
    write(project, "five.yaml", "schema_version: 1\nrecipe: five\nstages:\n"
          "  s: {kind: command, argv: [ln, -s, /etc/hostname, out.txt], outputs: [out.txt]}\n")
    code, _, err = cli("run", "five.yaml")
    assert code == 1
    assert "declared outputs must be regular files, not symlinks: out.txt" in err
    assert not (project / "artifacts/five/s").exists()


def test_json_gives_a_failed_stage_its_reason(tmp_path: Path, cli: CLI) -> None:
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: f
        stages:
          bad: {kind: command, argv: [python3, -c, "raise SystemExit(7)"], outputs: [x.txt]}
          after: {kind: command, argv: [python3, -c, "open('y.txt', 'w')"], outputs: [y.txt], after: [bad]}
        """)
    code, out, err = cli("run", "r.yaml", "--json")
    assert code == 1
    stages = {s["id"]: s for s in json.loads(out)["stages"]}
    assert stages["bad"]["status"] == "failed" and stages["bad"]["message"]
    assert stages["bad"]["message"] in err  # the same line the console prints
    assert stages["bad"]["log"].endswith("bad.log")
    assert stages["after"]["status"] == "skipped" and "bad" in stages["after"]["message"]
