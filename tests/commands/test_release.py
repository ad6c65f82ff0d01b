"""Release bundles are byte-identical across clean builds; `verify --rebuild` compares with the lock."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from tests.conftest import TINY_RECIPE, make_conv_model, run_process, write

RECIPE = TINY_RECIPE + "  profile:  {kind: profile, context: context, runs: 2}\n"


def built(folder: Path) -> Path:
    folder.mkdir(parents=True)
    make_conv_model(folder / "model.onnx")
    write(folder, "tiny.yaml", RECIPE)
    assert run_process(["run", "tiny.yaml"], folder).returncode == 0
    return folder


def test_release_bundle_is_byte_identical_and_complete(tmp_path: Path) -> None:
    bundles = []
    for name in ("a", "b/c"):
        folder = built(tmp_path / name)
        proc = run_process(["release", "tiny.yaml", "-o", "out/tiny.tar.gz"], folder)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("wrote out/tiny.tar.gz: 6 files")
        bundles.append((folder / "out/tiny.tar.gz").read_bytes())
    assert bundles[0] == bundles[1]
    with tarfile.open(tmp_path / "a/out/tiny.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert {m.mtime for m in members.values()} == {0} and {m.uid for m in members.values()} == {0}
        manifest = json.loads(tar.extractfile("tiny/MANIFEST.json").read())  # type: ignore[union-attr]
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(tar.extractfile(name).read()).hexdigest() == digest  # type: ignore[union-attr]
        assert set(manifest["files"]) == {"tiny/recipe.yaml", "tiny/qnnbuild.lock", "tiny/SM8650/io_spec.json",
                                          "tiny/SM8650/tiny_SM8650.bin", "tiny/SM8650/tiny_SM8650.onnx"}
        assert set(manifest["tools"]) >= {"onnxruntime", "onnxruntime-qnn"}
        lock = json.loads(tar.extractfile("tiny/qnnbuild.lock").read())  # type: ignore[union-attr]
        assert "profile[SM8650]" not in lock["instances"] and lock["schema_version"] == 1


def test_release_refuses_a_stale_build(tmp_path: Path) -> None:
    folder = built(tmp_path / "p")
    write(folder, "tiny.yaml", RECIPE.replace("optimization_level: 3", "optimization_level: 2"))
    proc = run_process(["release", "tiny.yaml", "-o", "x.tar.gz"], folder)
    assert proc.returncode == 1
    assert proc.stderr == ("qnnbuild: not built or out of date: compile[SM8650], context[SM8650]; "
                           "run `qnnbuild run` first\n")
    assert not (folder / "x.tar.gz").exists()


def test_verify_rebuild(tmp_path: Path) -> None:
    folder = built(tmp_path / "p")
    proc = run_process(["verify", "tiny.yaml", "--rebuild"], folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "profile[SM8650]/*" in proc.stdout and "not compared (timings)" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "18 of 18 outputs reproduced; 1 stage(s) not compared (timings)"

    lock_path = folder / "artifacts/tiny/qnnbuild.lock"
    lock = json.loads(lock_path.read_text())
    lock["instances"]["compile[SM8650]"]["outputs"]["model_ctx_qnn.bin"] = "0" * 64  # as if built differently
    lock_path.write_text(json.dumps(lock))
    proc = run_process(["verify", "tiny.yaml", "--rebuild"], folder)
    assert proc.returncode == 1
    assert "DIFFERS  compile[SM8650]/model_ctx_qnn.bin" in proc.stderr
    assert "compile[SM8650]/model_ctx_qnn.bin  000000000000" in proc.stdout


def test_a_release_follows_its_own_recipe_whatever_was_built_before(tmp_path: Path) -> None:
    """Two recipes that differ only in name share their work but not the deliverable, whose files are named
    after the recipe: recipe b's release is the same bytes whether or not `tiny` was built first in that
    project (the context-binary entry keys the recipe's name)."""
    bundles = []
    for name, first in (("alone", []), ("after", ["tiny.yaml"])):
        folder = tmp_path / name
        folder.mkdir()
        make_conv_model(folder / "model.onnx")
        write(folder, "tiny.yaml", RECIPE)
        write(folder, "b.yaml", RECIPE.replace("recipe: tiny", "recipe: b"))
        for recipe in [*first, "b.yaml"]:
            assert run_process(["run", recipe], folder).returncode == 0
        proc = run_process(["release", "b.yaml", "-o", "b.tar.gz"], folder)
        assert proc.returncode == 0, proc.stderr
        with tarfile.open(folder / "b.tar.gz") as tar:
            assert {"b/SM8650/b_SM8650.bin", "b/SM8650/b_SM8650.onnx"} <= set(tar.getnames())
        bundles.append((folder / "b.tar.gz").read_bytes())
    assert bundles[0] == bundles[1]
