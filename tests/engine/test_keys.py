from __future__ import annotations

import json
from pathlib import Path

import pytest

from qnnbuild.engine.keys import versions as keys


def test_version_cache_is_trusted_only_while_the_site_folders_are_unchanged(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_versions", {})
    file = tmp_path / "versions.json"
    cache = keys.VersionCache(file)
    real = keys.tool_version("pyyaml")
    cache.save()
    assert json.loads(file.read_text())["data"] == {"pyyaml": real}

    raw = json.loads(file.read_text())
    file.write_text(json.dumps({**raw, "data": {"pyyaml": "0.0-cached"}}))
    monkeypatch.setattr(keys, "_versions", {})
    keys.VersionCache(file)
    assert keys.tool_version("pyyaml") == "0.0-cached"  # same stamp: no importlib.metadata

    file.write_text(json.dumps({"stamp": [["/elsewhere/site-packages", 1, 1]], "data": {"pyyaml": "0.0-cached"}}))
    monkeypatch.setattr(keys, "_versions", {})
    keys.VersionCache(file)
    assert keys.tool_version("pyyaml") == real  # a site folder changed: looked up again


def test_code_digest_covers_the_stage_module_and_what_it_imports(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from qnnbuild.engine.keys import code as codekeys

    rel = [p.relative_to(codekeys.PACKAGE).as_posix() for p in codekeys.closure("qnnbuild.stages.quantize")]
    assert {"stages/quantize/__init__.py", "toolchain/quant/quantizer.py", "toolchain/data/calibration.py", "stages/base.py"} <= set(rel)
    assert "stages/profile.py" not in rel and not [r for r in rel if r.startswith("engine/")]
    # an edit to a module quantize imports (a forgotten version bump) changes quantize's digest, not profile's
    fake = tmp_path / "qnnbuild"
    import shutil

    shutil.copytree(codekeys.PACKAGE, fake, ignore=shutil.ignore_patterns("__pycache__"))
    from qnnbuild.common import stamps

    monkeypatch.setattr(codekeys, "PACKAGE", fake)
    monkeypatch.setattr(stamps, "PACKAGE", fake)
    stamps.package_stamp.cache_clear()
    before = codekeys.CodeDigests(tmp_path / "a.json")
    digests = {m: before.digest(m) for m in ("qnnbuild.stages.quantize", "qnnbuild.stages.profile")}
    before.save()
    with (fake / "toolchain" / "quant" / "quantizer.py").open("a") as fh:
        fh.write("\n# changed\n")
    stamps.package_stamp.cache_clear()  # a new process would take the stamp anew
    after = codekeys.CodeDigests(tmp_path / "a.json")  # the remembered digests are dropped: a file changed
    assert after.digest("qnnbuild.stages.quantize") != digests["qnnbuild.stages.quantize"]
    assert after.digest("qnnbuild.stages.profile") == digests["qnnbuild.stages.profile"]


def test_tools_keyed_are_the_tools_that_run() -> None:
    from qnnbuild.stages import KINDS

    quantize, export = KINDS["quantize"], KINDS["export"]
    assert "aimet-onnx" not in quantize.tools_for({})
    assert {"aimet-onnx", "torch"} <= set(quantize.tools_for({"technique": "adaround"}))
    assert "torch" in export.tools_for({"torch": "m:f"}) and "torch" not in export.tools_for({"onnx": "m.onnx"})


def test_a_workers_toolchain_proof_names_what_differs() -> None:
    """What a Dask worker checks before building under a client's key (the cluster test runs it on a real
    worker whose onnxruntime-qnn differs)."""
    from qnnbuild.engine.keys.code import closure_digest
    from qnnbuild.engine.keys.proof import disagreements, installed
    from qnnbuild.stages import KINDS

    kind = KINDS["compile"]
    document = {"tools": {d: installed(d) for d in kind.tools_for({})}, "code": closure_digest(kind.run.__module__)}
    assert disagreements("compile", {}, document) == []
    assert disagreements("compile", {}, {**document, "tools": {**document["tools"], "onnx": "0.0"}}) == [
        f"onnx {installed('onnx')} here, 0.0 in the key"]
    assert disagreements("compile", {}, {**document, "code": "0" * 64}) == [
        "qnnbuild's code for compile differs (another version or checkout of qnnbuild)"]


def test_a_stage_server_older_than_the_installed_code_is_not_used(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A long-lived Dask worker's fork server preloaded qnnbuild and its distributions when it started; once
    they change on disk, stages start new interpreters, so what ran is what a key's proof read."""
    from qnnbuild.engine.workers import process

    monkeypatch.delenv("QNNBUILD_FORKSERVER", raising=False)
    monkeypatch.setattr(process, "_server_stamp", process._code_stamp())
    assert process._use_forkserver()
    monkeypatch.setattr(process, "_server_stamp", [[], []])  # as if the files had changed since
    monkeypatch.setattr(process, "_said", set())
    assert not process._use_forkserver()
    assert "stages now start new interpreters" in capsys.readouterr().err


def test_a_library_the_stage_loaded_is_in_its_key(tmp_path: Path) -> None:
    """No kind lists protobuf among its tools, yet onnx runs on it: the stages' processes report the
    distributions they loaded, and their keys hold those versions. A protobuf of another version (its metadata
    ahead of site-packages on the path, as another environment would have it) rebuilds them, and status names
    it; back to the installed one, everything is cached again."""
    import os
    import sys
    from importlib.metadata import version

    from tests.conftest import TINY_RECIPE, make_conv_model, run_process

    make_conv_model(tmp_path / "model.onnx")
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    proc = run_process(["run", "tiny.yaml", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    built = json.loads((tmp_path / "artifacts/tiny/qnnbuild.lock").read_text())["instances"]
    libraries = {i: entry["document"]["libraries"] for i, entry in built.items()}
    assert all(found["protobuf"] == version("protobuf") for found in libraries.values()), libraries
    assert all("qnnbuild" not in found and not found.keys() & set(sys.stdlib_module_names)
               for found in libraries.values())

    site = tmp_path / "other-env"
    (site / "protobuf-0.0.1.dist-info").mkdir(parents=True)
    (site / "protobuf-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: protobuf\n"
                                                                "Version: 0.0.1\n")
    other = {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}
    proc = run_process(["status", "tiny.yaml"], tmp_path, other)
    assert f"library protobuf: {version('protobuf')} → 0.0.1" in proc.stdout, proc.stdout
    proc = run_process(["run", "tiny.yaml", "--json"], tmp_path, other)
    assert proc.returncode == 0, proc.stderr
    assert {s["id"]: s["status"] for s in json.loads(proc.stdout)["stages"]} == dict.fromkeys(built, "ran")
    proc = run_process(["run", "tiny.yaml", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {s["id"]: s["status"] for s in json.loads(proc.stdout)["stages"]} == dict.fromkeys(built, "cached")


def test_a_repointed_symlink_is_a_changed_input(tmp_path: Path) -> None:
    """model.onnx → v1.onnx, built; pointed at v2.onnx, the export is stale and rebuilt from v2 (the plan kept
    the resolved path, v1, and served v1's build under v1's key); pointed back, v1's build is a cache hit."""
    from tests.conftest import TINY_RECIPE, make_conv_model, run_process

    make_conv_model(tmp_path / "v1.onnx", seed=0)
    make_conv_model(tmp_path / "v2.onnx", seed=1)
    (tmp_path / "model.onnx").symlink_to("v1.onnx")
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    args = ["run", "tiny.yaml", "--json", "--only", "export"]
    proc = run_process(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}["export"]
    (tmp_path / "model.onnx").unlink()
    (tmp_path / "model.onnx").symlink_to("v2.onnx")
    proc = run_process(["status", "tiny.yaml"], tmp_path)
    assert "export                         stale  input file onnx changed\n" in proc.stdout, proc.stdout
    proc = run_process(args, tmp_path)
    second = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}["export"]
    assert second["status"] == "ran" and second["key"] != first["key"]
    (tmp_path / "model.onnx").unlink()
    (tmp_path / "model.onnx").symlink_to("v1.onnx")
    proc = run_process(args, tmp_path)
    again = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}["export"]
    assert again["status"] == "cached" and again["key"] == first["key"]


def test_an_onnx_files_external_data_is_in_the_export_key(tmp_path: Path) -> None:
    """model.onnx keeps its weights in model.onnx.data: rewriting a weight there (1.0 → 5.0) leaves model.onnx
    as it was, and the export was served from the old key. The export reports the data file it read."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tests.conftest import run_process

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    (tmp_path / "r.yaml").write_text("schema_version: 1\nrecipe: r\nstages:\n  export: {kind: export, onnx: model.onnx}\n")
    proc = run_process(["run", "r.yaml", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)["stages"][0]
    (tmp_path / "model.onnx.data").write_bytes(np.full((4, 4), 5.0, np.float32).tobytes())
    proc = run_process(["status", "r.yaml"], tmp_path)
    assert "input file model.onnx.data changed" in proc.stdout, proc.stdout
    proc = run_process(["run", "r.yaml", "--json"], tmp_path)
    second = json.loads(proc.stdout)["stages"][0]
    assert second["status"] == "ran" and second["key"] != first["key"]
    exported = onnx.load(str(tmp_path / "artifacts/r/export/model.onnx"))
    assert float(numpy_helper.to_array(exported.graph.initializer[0]).max()) == 5.0
