from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from qnnbuild.toolchain.quant.quantizer import stride_for
from tests.conftest import CLI, TINY_RECIPE, make_conv_model, write


def recipe(tmp_path: Path, quantize: str) -> None:
    make_conv_model(tmp_path / "model.onnx")
    write(tmp_path, "r.yaml", "schema_version: 1\nrecipe: q\nstages:\n  export: {kind: export, onnx: model.onnx}\n"
          f"  quantize: {{kind: quantize, model: export, {quantize}}}\n")


def built(tmp_path: Path, name: str) -> Path:
    return tmp_path / "artifacts/q/quantize" / name


def test_synthetic_u8_encodings_use_offset_minus_zero_point(tmp_path: Path, cli: CLI) -> None:
    recipe(tmp_path, "calibration: {synthetic: {count: 4, seed: 1}}")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    qdq = onnx.load(str(built(tmp_path, "model.qdq.onnx")))
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    q_in = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    encs = json.loads(built(tmp_path, "encodings.json").read_text())
    [enc] = encs["activation_encodings"]["input"]
    assert enc["offset"] == -int(inits[q_in.input[2]])
    assert enc["scale"] == pytest.approx(float(inits[q_in.input[1]]))
    assert enc["bitwidth"] == 8 and enc["is_symmetric"] == "False"
    assert enc["min"] == pytest.approx(enc["scale"] * enc["offset"])
    assert set(encs["param_encodings"]) >= {"w1", "w2"}
    stats = json.loads(built(tmp_path, "calibration.json").read_text())
    assert (stats["samples"], stats["source"], stats["method"], stats["stride"]) == (4, "synthetic", "minmax", 4)


def test_a16_int8_symmetric_per_channel(tmp_path: Path, cli: CLI) -> None:
    recipe(tmp_path, "calibration: {synthetic: {count: 3}}, activations: uint16, weights: int8, per_channel: true, "
                     "symmetric: true, method: percentile")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    encs = json.loads(built(tmp_path, "encodings.json").read_text())
    assert encs["activation_encodings"]["input"][0]["bitwidth"] == 16
    w1 = encs["param_encodings"]["w1"]
    assert len(w1) == 8  # one encoding per output channel
    assert {e["offset"] for e in w1} == {-128} and {e["is_symmetric"] for e in w1} == {"True"}


def test_npy_folder_and_overrides(tmp_path: Path, cli: CLI) -> None:
    (tmp_path / "cal").mkdir()
    for i in range(5):
        np.save(tmp_path / "cal" / f"{i}.npy", np.random.default_rng(i).standard_normal((3, 16, 16)).astype("f4"))
    recipe(tmp_path, "calibration: {npy: {dir: cal}}, overrides: {r1: {type: uint16}}")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    encs = json.loads(built(tmp_path, "encodings.json").read_text())
    assert encs["activation_encodings"]["r1"][0]["bitwidth"] == 16
    assert encs["activation_encodings"]["input"][0]["bitwidth"] == 8
    assert json.loads(built(tmp_path, "calibration.json").read_text())["samples"] == 5


def test_image_folder(tmp_path: Path, cli: CLI) -> None:
    (tmp_path / "img").mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
    recipe(tmp_path, "calibration: {images: {dir: img, resize: 20}}")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    assert json.loads(built(tmp_path, "calibration.json").read_text())["source"] == "images"


def test_unknown_override_tensor_fails_the_stage(tmp_path: Path, cli: CLI) -> None:
    recipe(tmp_path, "calibration: {synthetic: {count: 2}}, overrides: {nope: {type: uint16}}")
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "overrides name tensors the model does not have: nope" in err


def test_stride_divides_the_sample_count() -> None:
    assert [stride_for(n) for n in (1, 4, 16, 17, 512, 30)] == [1, 4, 16, 1, 16, 15]


def make_tf_style_model(path: Path) -> Path:
    """A shared bias named like tf2onnx does, beside an activation that the quantizer's copy of it would be named
    (`..._25` + `1`): onnxruntime writes an invalid QDQ model unless export renames the tensors."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "model/conv_a/w;1"),
             numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "model/conv_b/w;1"),
             numpy_helper.from_array(np.full(4, 0.1, np.float32), "model/conv1d_25"),
             numpy_helper.from_array((rng.standard_normal((4, 4, 1, 1)) * 0.3).astype(np.float32), "model/conv_c/w")]
    nodes = [helper.make_node("Conv", ["input:0", "model/conv_a/w;1", "model/conv1d_25"], ["model/conv1d_251"],
                              pads=[1, 1, 1, 1], name="model/conv_a"),
             helper.make_node("Conv", ["input:0", "model/conv_b/w;1", "model/conv1d_25"], ["model/conv1d_253"],
                              pads=[1, 1, 1, 1], name="model/conv_b"),
             helper.make_node("Conv", ["model/conv1d_251", "model/conv_c/w"], ["model/conv1d_2"], name="model/conv_c"),
             helper.make_node("Concat", ["model/conv1d_2", "model/conv1d_253"], ["Identity:0"], axis=1, name="cat")]
    graph = helper.make_graph(nodes, "tf", [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("Identity:0", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_tf_style_names_build_end_to_end(tmp_path: Path, cli: CLI) -> None:
    make_tf_style_model(tmp_path / "model.onnx")
    write(tmp_path, "tiny.yaml", TINY_RECIPE.replace("convert:", "layers:   {kind: layer-error, model: quantize, "
                                                     "reference: export, suggest_above_db: 0}\n  convert:"))
    code, _, err = cli("run", "tiny.yaml")
    assert code == 0, err
    names = json.loads((tmp_path / "artifacts/tiny/export/names.json").read_text())
    assert names and len({len(n) for n in names}) == 1  # one length: no suffix turns one into another
    assert "model/conv1d_25" in names.values() and "model/conv1d_251" in names.values()
    spec = json.loads((tmp_path / "artifacts/tiny/export/io.json").read_text())
    assert spec["inputs"][0]["source_name"] == "input:0" and spec["outputs"][0]["source_name"] == "Identity:0"
    layers = json.loads((tmp_path / "artifacts/tiny/layers/layers.json").read_text())
    assert {a["tensor"] for a in layers["activations"]} >= {"model/conv1d_251", "model/conv1d_253"}
    # overrides may use the source's names, as the layer report prints them
    suggested = layers["suggested_overrides"]
    assert suggested and all("/" in t for t in suggested)
    assert (tmp_path / "artifacts/tiny/context/SM8650").is_dir()


def test_a_qdq_model_that_does_not_load_fails_quantize(tmp_path: Path) -> None:
    from qnnbuild.errors import StageFailed
    from qnnbuild.stages.quantize import _check_loads

    bad = onnx.load(str(make_conv_model(tmp_path / "m.onnx")))
    bad.graph.node[1].input[0] = "no_such_tensor"
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(StageFailed, match=r"^onnxruntime.quantization wrote a QDQ model that does not load: .*"
                                          r"no_such_tensor"):
        _check_loads(tmp_path / "bad.onnx")


def test_integer_input_and_infinite_bound_quantize_faithfully(tmp_path: Path, cli: CLI) -> None:
    """The magika pattern: byte codes in, jax2tf's Max(x, -inf) before a softmax. Synthetic calibration must
    cover the byte range, and the -inf constant must not be quantized (its scale is inf, the output NaN)."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((256, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "codes"], ["emb"]),
             helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("ReduceMax", ["pooled"], ["top"], axes=[1], keepdims=1),
             helper.make_node("Max", ["top", "ninf"], ["top_safe"]),
             helper.make_node("Sub", ["pooled", "top_safe"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(-np.inf, np.float32), "ninf")]
    graph = helper.make_graph(nodes, "bytes", [helper.make_tensor_value_info("codes", TensorProto.INT32, [1, 64])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "b.onnx"))
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: b
        stages:
          export: {kind: export, onnx: b.onnx}
          quantize: {kind: quantize, model: export, activations: uint16}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    art = tmp_path / "artifacts/b"
    assert json.loads((art / "export/rewrites.json").read_text())[0]["rewrite"] == "infinite-bound"
    fp32, qdq = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                 for p in (art / "export/model.onnx", art / "quantize/model.qdq.onnx"))
    codes = {"codes": rng.integers(0, 256, (1, 64)).astype(np.int32)}
    want, got = fp32.run(None, codes)[0], qdq.run(None, codes)[0]
    assert np.isfinite(got).all()
    assert 10 * np.log10((want ** 2).sum() / ((want - got) ** 2).sum()) > 30


def test_synthetic_ranges_name_real_inputs(tmp_path: Path, cli: CLI) -> None:
    make_conv_model(tmp_path / "m.onnx")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: r
        stages:
          export: {kind: export, onnx: m.onnx}
          quantize: {kind: quantize, model: export, calibration: {synthetic: {ranges: {pixels: [0, 1]}}}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 1 and "synthetic ranges name inputs the model does not have: pixels (inputs: input)" in err


def test_reciprocal_of_small_values_is_right_on_htp(tmp_path: Path, cli: CLI) -> None:
    """A LayerNorm's 1/sqrt(var) with var < 1: the QNN EP quantizes Reciprocal's implicit 1 with x's encoding
    (saturating at max(x) < 1), so HTP was ~8x off while the QDQ model was right on the CPU."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["var_eps"]),
             helper.make_node("Sqrt", ["var_eps"], ["std"]),
             helper.make_node("Reciprocal", ["std"], ["inv"]),
             helper.make_node("Mul", ["x", "inv"], ["y"])]
    graph = helper.make_graph(nodes, "norm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(np.array(1e-4, np.float32), "eps")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "n.onnx"))
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: n
        targets: [SM8650]
        stages:
          export: {kind: export, onnx: n.onnx}
          quantize: {kind: quantize, model: export, calibration: {synthetic: {ranges: {x: [-0.05, 0.05]}}}}
          compile: {kind: compile, model: quantize}
          context: {kind: context-binary, compiled: compile}
          validate: {kind: validate, context: context, reference: export, min_sqnr_db: 20,
                     data: {synthetic: {count: 4, seed: 3, ranges: {x: [-0.05, 0.05]}}}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    rewrites = json.loads((tmp_path / "artifacts/n/export/rewrites.json").read_text())
    assert any(r["rewrite"] == "reciprocal-to-div" for r in rewrites)


def outlier_model(path: Path) -> None:
    """Three convolutions; the first has one output channel 60x larger than the rest, so per-tensor 8-bit
    weights crush the others (12 dB at a8w8)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3
    w1[0] *= 60
    w2 = rng.standard_normal((8, 16, 3, 3)).astype(np.float32) * 0.2
    w2[:, 0] *= 0.01
    w3 = rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["output"])]
    inits = [numpy_helper.from_array(w, n) for n, w in (("w1", w1), ("w2", w2), ("w3", w3))] + [
        numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}") for i, c in ((1, 16), (2, 8), (3, 4))]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


AMP_RECIPE = """\
schema_version: 1
recipe: amp
targets: [SM8650]
stages:
  export: {kind: export, onnx: m.onnx}
  quantize: {kind: quantize, model: export, calibration: {synthetic: {count: 8}}, auto_precision: %s}
  compile: {kind: compile, model: quantize}
  context: {kind: context-binary, compiled: compile}
  validate: {kind: validate, context: context, reference: export, quantized: quantize, min_sqnr_db: 35}
"""


def test_auto_precision_reaches_the_goal_and_holds_on_htp(tmp_path: Path, cli: CLI) -> None:
    outlier_model(tmp_path / "m.onnx")
    write(tmp_path, "r.yaml", AMP_RECIPE % "{min_sqnr_db: 35}")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    found = json.loads((tmp_path / "artifacts/amp/quantize/precision.json").read_text())
    assert found["sqnr_db"] >= 35 and found["steps"][0][1] < 20 and found["steps"][-1][1] == found["sqnr_db"]
    assert "c1" in found["promoted"]
    # a layer goes up as a unit: its weight (16-bit symmetric), its output and the Relu fused onto it
    assert found["overrides"]["w1"] == {"type": "int16", "symmetric": True}
    assert found["overrides"]["c1"] == found["overrides"]["r1"] == {"type": "uint16"}
    # the QDQ model written is the last step's, and the HTP context holds the figure (validate's gate: 35 dB)
    metrics = json.loads((tmp_path / "artifacts/amp/validate/SM8650/metrics.json").read_text())
    assert metrics["sqnr_db"]["output"]["htp"] >= 35


def test_auto_precision_that_cannot_reach_names_the_best(tmp_path: Path, cli: CLI) -> None:
    outlier_model(tmp_path / "m.onnx")
    write(tmp_path, "r.yaml", AMP_RECIPE % "{min_sqnr_db: 200, max_promoted: 1}")
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "auto precision could not reach 200 dB output SQNR (max_promoted 1 reached): the best was" in err


ENC_RECIPE = """\
schema_version: 1
recipe: e
stages:
  export: {kind: export, onnx: m.onnx}
  first: {kind: quantize, model: export, calibration: {synthetic: {count: 4}}, per_channel: true, symmetric: true}
  again: {kind: quantize, model: export, calibration: {synthetic: {count: 4, seed: 9}}, per_channel: true,
          symmetric: true, encodings: enc.json}
"""


def test_encodings_file_round_trip_exact_scales_and_refusals(tmp_path: Path, cli: CLI) -> None:
    outlier_model(tmp_path / "m.onnx")
    write(tmp_path, "enc.json", "{}")
    write(tmp_path, "r.yaml", ENC_RECIPE)
    code, _, err = cli("run", "r.yaml", "--only", "first")
    assert code == 0, err
    art = tmp_path / "artifacts/e"
    (tmp_path / "enc.json").write_bytes((art / "first/encodings.json").read_bytes())
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    # other calibration data, same file: the same QDQ model, byte for byte
    assert (art / "again/model.qdq.onnx").read_bytes() == (art / "first/model.qdq.onnx").read_bytes()

    # a 1.0.0 file fixes c1's encoding exactly; everything else is calibrated
    write(tmp_path, "enc.json", json.dumps({"version": "1.0.0", "activation_encodings": [
        {"name": "c1", "bw": 16, "dtype": "INT", "enc_type": "PER_TENSOR", "is_sym": False,
         "scale": [0.001], "offset": [-30000]}], "param_encodings": []}))
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    qdq = onnx.load(str(art / "again/model.qdq.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    c1 = {v: k for k, v in json.loads((art / "export/names.json").read_text()).items()}.get("c1", "c1")
    assert np.isclose(inits[f"{c1}_scale"], 0.001) and int(inits[f"{c1}_zero_point"]) == 30000
    assert inits[f"{c1}_zero_point"].dtype == np.uint16

    write(tmp_path, "enc.json", json.dumps({"activation_encodings": {"nope": [
        {"bitwidth": 8, "scale": 0.1, "offset": 0}]}, "param_encodings": {}}))
    code, _, err = cli("run", "r.yaml")
    assert code == 1 and "enc.json: the model has no tensor named nope" in err
    write(tmp_path, "enc.json", json.dumps({"activation_encodings": {"c1": [
        {"bitwidth": 12, "scale": 0.1, "offset": 0}]}, "param_encodings": {}}))
    code, _, err = cli("run", "r.yaml")
    assert code == 1 and "c1: bit width 12 is not supported" in err


def test_an_override_hits_the_source_tensor_it_names_when_source_names_look_short(tmp_path: Path, cli: CLI) -> None:
    """A source model whose tensors are called t0, t1 (one exported by qnnbuild before): short names must not
    collide with them, and `overrides: {t1: ...}` must reach the tensor the source calls t1."""
    model = onnx.load(str(make_conv_model(tmp_path / "m.onnx")))
    renames = {"c1": "t1", "r1": "t0"}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.save(model, str(tmp_path / "m.onnx"))
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: s
        stages:
          export: {kind: export, onnx: m.onnx}
          quantize: {kind: quantize, model: export, calibration: {synthetic: {count: 2}}, overrides: {t1: {type: uint16}}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    names = json.loads((tmp_path / "artifacts/s/export/names.json").read_text())
    assert not set(names) & {"t0", "t1"}  # short names never spell a source name
    short = next(k for k, v in names.items() if v == "t1")
    qdq = onnx.load(str(tmp_path / "artifacts/s/quantize/model.qdq.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    zero_points = {n.input[0]: inits[n.input[2]].dtype for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert zero_points[short] == np.uint16
    assert zero_points["input"] == np.uint8  # the rest keeps the recipe's activations


def test_adaround_refuses_settings_it_would_ignore(tmp_path: Path, cli: CLI) -> None:
    make_conv_model(tmp_path / "m.onnx")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: a
        stages:
          export: {kind: export, onnx: m.onnx}
          quantize: {kind: quantize, model: export, technique: [cle, adaround], per_channel: false, method: entropy}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 2
    assert "stages.quantize.per_channel: technique adaround quantizes with AIMET's HTP configuration" in err
    assert "per_channel: false contradicts it" in err and "method: \"entropy\" contradicts it" in err


def test_a_preset_and_its_spelled_out_form_get_one_answer_with_adaround() -> None:
    """`precision: w4a16` and the parameters it stands for are judged alike: both agree with AIMET's HTP
    configuration (per-channel symmetric weights), so neither is refused; block-wise weights are, either way."""
    from qnnbuild.stages.quantize.techniques import checks
    from qnnbuild.toolchain.quant.spec import PRESETS

    preset = {"precision": "w4a16", "technique": "adaround"}
    assert checks(preset) == checks({**PRESETS["w4a16"], "technique": "adaround"}) == []
    assert [path for path, _ in checks({**preset, "block_size": 32})] == [("block_size",)]
    assert [path for path, _ in checks({"precision": "w8a16", "technique": "seqmse", "symmetric": False})] == [
        ("symmetric",)]


def test_quantize_never_writes_into_its_input_entry(tmp_path: Path, cli: CLI) -> None:
    """onnxruntime's quantize_static writes `<model>-inferred.onnx` beside its input and deletes it: inside the
    export's store entry, two quantize stages of one export (a precision sweep, -j 2) deleted each other's file
    (FileNotFoundError, or a half-written model: 'Wire format was corrupt'). The entry's folder stays untouched."""
    make_conv_model(tmp_path / "m.onnx")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: r
        stages:
          export: {kind: export, onnx: m.onnx}
          quantize: {kind: quantize, model: export, calibration: {synthetic: {count: 2}}}
        """)
    code, _, err = cli("run", "r.yaml", "--only", "export")
    assert code == 0, err
    entry = (tmp_path / "artifacts/r/export").resolve()
    before = (entry.stat().st_mtime_ns, sorted(p.name for p in entry.iterdir()))
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    assert (entry.stat().st_mtime_ns, sorted(p.name for p in entry.iterdir())) == before
