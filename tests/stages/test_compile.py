from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CLI, TINY_RECIPE, make_conv_model, run_process, write


def test_minimal_recipe_builds_a_context_that_runs_on_the_emulator(tiny_project: Path, cli: CLI) -> None:
    code, out, err = cli("run", "tiny.yaml", "--json")
    assert code == 0, err
    assert {s["id"]: s["status"] for s in json.loads(out)["stages"]} == {
        "export": "ran", "quantize": "ran", "convert": "ran", "compile[SM8650]": "ran", "context[SM8650]": "ran"}
    deliverable = tiny_project / "artifacts/tiny/context/SM8650"
    assert sorted(p.name for p in deliverable.iterdir()) == [".qnnbuild", "io_spec.json", "tiny_SM8650.bin",
                                                             "tiny_SM8650.onnx"]
    spec = json.loads((deliverable / "io_spec.json").read_text())
    assert spec["target"]["soc_model"] == 57 and spec["target"]["htp_arch"] == 75
    [inp] = spec["inputs"]
    assert (inp["name"], inp["shape"], inp["dtype"]) == ("input", [1, 3, 16, 16], "float32")
    assert inp["quantization"]["dtype"] == "uint8" and inp["quantization"]["offset"] <= 0
    [out] = spec["outputs"]  # the Quantize before the output (an earlier version looked it up by the wrong name)
    assert out["quantization"]["dtype"] == "uint8" and out["quantization"]["scale"] > 0

    # The deliverable loads and runs on the HTP emulator, and agrees with the fp32 model on the CPU.
    probe = write(tiny_project, "probe.py", """\
        import numpy as np, sys
        from qnnbuild.toolchain.runtime import qnn
        x = np.random.default_rng(7).standard_normal((1, 3, 16, 16)).astype(np.float32)
        npu = qnn.htp_session(sys.argv[1], {}).run(None, {"input": x})[0]
        ref = qnn.cpu_session(sys.argv[2]).run(None, {"input": x})[0]
        print("SQNR", 10 * np.log10((ref ** 2).sum() / ((ref - npu) ** 2).sum()))
        """)
    done = subprocess.run([sys.executable, str(probe), "tiny_SM8650.onnx", str(tiny_project / "model.onnx")],
                          cwd=deliverable, capture_output=True, text=True, check=True)
    sqnr = float(done.stdout.split("SQNR")[-1])
    assert 20 < sqnr < 80, done.stdout

    code, out, _ = cli("run", "tiny.yaml", "--json")  # a second run builds nothing
    assert code == 0 and {s["status"] for s in json.loads(out)["stages"]} == {"cached"}


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every output file, read through the views (symlinks into the store)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder / "artifacts/tiny", followlinks=True):
        dirnames[:] = [d for d in dirnames if d not in (".qnnbuild", "logs")]
        for name in filenames:
            path = Path(dirpath) / name
            if name != "qnnbuild.lock":
                found[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_two_clean_builds_in_different_folders_are_byte_identical(tmp_path: Path) -> None:
    for name in ("one", "two/deeper"):
        folder = tmp_path / name
        folder.mkdir(parents=True)
        make_conv_model(folder / "model.onnx")
        write(folder, "tiny.yaml", TINY_RECIPE)
        proc = run_process(["run", "tiny.yaml"], folder)
        assert proc.returncode == 0, proc.stderr
    one, two = digests(tmp_path / "one"), digests(tmp_path / "two/deeper")
    assert len(one) == 18  # export: model.onnx, io.json, names.json, rewrites.json; quantize: rewrites.json, rules.json too
    assert one == two
    lock_one = json.loads((tmp_path / "one/artifacts/tiny/qnnbuild.lock").read_text())
    lock_two = json.loads((tmp_path / "two/deeper/artifacts/tiny/qnnbuild.lock").read_text())
    assert {k: v["key"] for k, v in lock_one["instances"].items()} == {
        k: v["key"] for k, v in lock_two["instances"].items()}


def test_compile_options_are_validated(tiny_project: Path, cli: CLI) -> None:
    recipe = TINY_RECIPE.replace("optimization_level: 3", "optimization_level: 4, vtcm_mb: 16, fp16: maybe")
    write(tiny_project, "tiny.yaml", recipe)
    code, _, err = cli("run", "tiny.yaml")
    assert code == 2
    assert err.splitlines()[:3] == [
        "tiny.yaml:8:84: stages.compile.optimization_level: 4 is greater than the maximum of 3",
        "tiny.yaml:8:96: stages.compile.vtcm_mb: 16 is greater than the maximum of 8",
        "tiny.yaml:8:106: stages.compile.fp16: 'maybe' is not of type 'boolean'"]
    write(tiny_project, "tiny.yaml", TINY_RECIPE.replace("targets: [SM8650]", "targets: [SM8635]").replace(
        "optimization_level: 3", "optimization_level: 1, vtcm_mb: 8"))
    code, _, err = cli("run", "tiny.yaml")
    assert code == 1
    assert "vtcm_mb 8 exceeds the 4 MB VTCM of SM8635" in err


def test_every_target_gets_its_own_binary(tiny_project: Path, cli: CLI) -> None:
    write(tiny_project, "tiny.yaml", TINY_RECIPE.replace("targets: [SM8650]", "targets: [SM8550, SM8750]"))
    code, _, err = cli("run", "tiny.yaml", "-j", "2")
    assert code == 0, err
    a = (tiny_project / "artifacts/tiny/context/SM8550/tiny_SM8550.bin").read_bytes()
    b = (tiny_project / "artifacts/tiny/context/SM8750/tiny_SM8750.bin").read_bytes()
    assert a != b  # finalized for v73 and v79 respectively


def test_a_refused_node_is_named_with_its_shapes_and_the_rewrite_tried(tmp_path: Path) -> None:
    """A GatherND whose indices come from data (an ArgMax) is no constant table: QNN refuses it (error 3110), and
    compile and convert name the node, its op, its input shapes and the rewrite export tried; a node with no
    rewrite (Det) says so, and the Quantize/Dequantize around it are not listed beside it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])
    one = numpy_helper.from_array(np.array(1, np.float32), "one")
    models = {
        "gnd": [helper.make_node("ArgMax", ["x"], ["am"], axis=1, keepdims=1, name="argmax"),
                helper.make_node("GatherND", ["x", "am"], ["g"], batch_dims=1, name="gathernd"),
                helper.make_node("Add", ["g", "one"], ["y"], name="add")],
        "det": [helper.make_node("MatMul", ["x", "xt"], ["m"], name="matmul"),
                helper.make_node("Det", ["m"], ["d"], name="det"), helper.make_node("Add", ["d", "one"], ["y"])],
    }
    for name, nodes in models.items():
        inits = [one, numpy_helper.from_array(np.ones((8, 4), np.float32), "xt")]
        graph = helper.make_graph(nodes, name, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  inits[:1 if name == "gnd" else 2])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / f"{name}.onnx")
        (tmp_path / f"{name}.yaml").write_text(
            f"schema_version: 1\nrecipe: {name}\ntargets: [SM8650]\nstages:\n"
            f"  export: {{kind: export, onnx: {name}.onnx}}\n"
            "  quantize: {kind: quantize, model: export, calibration: {synthetic: {count: 2}}}\n"
            "  convert: {kind: convert, model: quantize}\n  compile: {kind: compile, model: quantize}\n")
        proc = run_process(["run", f"{name}.yaml", "--json"], tmp_path)
        assert proc.returncode == 1, proc.stderr
        stages = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}
        for stage in ("convert", "compile[SM8650]"):
            message = stages[stage]["message"]
            if name == "gnd":
                assert "gathernd (GatherND)" in message and "[inputs [4, 8], [4, 1]]" in message, message
                assert "tried constant-indices" in message, message
            else:
                assert "det (Det)" in message and "[inputs [4, 4]]" in message, message
                assert "no rewrite for Det" in message and "QuantizeLinear" not in message, message
            assert "docs/troubleshooting.md" in message
