"""QNN's 16-bit rules applied and listed (rules.json), refusals by tensor name, and `precision:` presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.conftest import CLI, make_conv_model, write


def attention(path: Path, heads: int = 2, seq: int = 16, dim: int = 8) -> None:
    """softmax(Q·Kᵀ)·V: two MatMuls of two activations each."""
    nodes = [helper.make_node("MatMul", ["q", "k"], ["scores"], name="qk"),
             helper.make_node("Softmax", ["scores"], ["probs"], axis=-1, name="softmax"),
             helper.make_node("MatMul", ["probs", "v"], ["out"], name="pv")]
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, heads, seq, dim]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, heads, dim, seq]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, heads, seq, dim])]
    graph = helper.make_graph(nodes, "attn", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, heads, seq, dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def test_act_act_matmul_gets_int16_symmetric_and_htp_follows_the_cpu(tmp_path: Path, cli: CLI) -> None:
    """Beside it, the same model with the recipe asking for plain uint16 on k and v (the recipe's overrides
    win over the rule): what quantize did before the rule."""
    attention(tmp_path / "attn.onnx")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: attn
        targets: [SM8650]
        stages:
          export: {kind: export, onnx: attn.onnx}
          quantize: {kind: quantize, model: export, precision: w8a16, calibration: {synthetic: {count: 8}}}
          compile: {kind: compile, model: quantize}
          context: {kind: context-binary, compiled: compile}
          validate: {kind: validate, context: context, reference: export, quantized: quantize}
          plain: {kind: quantize, model: export, precision: w8a16, calibration: {synthetic: {count: 8}},
                  overrides: {k: {type: uint16}, v: {type: uint16}}}
          plain_compile: {kind: compile, model: plain}
          plain_context: {kind: context-binary, compiled: plain_compile}
          plain_validate: {kind: validate, context: plain_context, reference: export, quantized: plain}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    rules = json.loads((tmp_path / "artifacts/attn/quantize/rules.json").read_text())
    assert rules == [{"rule": "matmul-act-act-int16", "by": "qnnbuild", "tensors": ["k", "v"]}]
    assert json.loads((tmp_path / "artifacts/attn/plain/rules.json").read_text()) == []
    encodings = json.loads((tmp_path / "artifacts/attn/quantize/encodings.json").read_text())
    assert encodings["activation_encodings"]["k"][0]["bitwidth"] == 16
    assert encodings["activation_encodings"]["k"][0]["is_symmetric"] == "True"
    ruled, plain = (json.loads((tmp_path / f"artifacts/attn/{v}/SM8650/metrics.json").read_text())["sqnr_db"]["out"]
                    for v in ("validate", "plain_validate"))
    print(f"attention w8a16: with the rule HTP {ruled['htp']:.1f} / CPU {ruled['qdq_cpu']:.1f} dB; "
          f"plain uint16 HTP {plain['htp']:.1f} / CPU {plain['qdq_cpu']:.1f} dB")
    assert abs(ruled["htp"] - ruled["qdq_cpu"]) < 1.0, ruled  # HTP follows the CPU
    assert ruled["htp"] > plain["htp"] + 5, (ruled, plain)  # measured: 44.4 against 35.1 dB


def test_symmetric_output_of_a_relu_is_refused_by_name(tmp_path: Path, cli: CLI) -> None:
    make_conv_model(tmp_path / "m.onnx")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: s
        stages:
          export: {kind: export, onnx: m.onnx}
          quantize: {kind: quantize, model: export, overrides: {r1: {type: uint16, symmetric: true}}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "a symmetric activation encoding on a Conv, Relu or Clip output is computed wrong by HTP: r1 (Relu" in err


def test_a_preset_and_its_spelled_out_form_share_a_key(tmp_path: Path, cli: CLI) -> None:
    make_conv_model(tmp_path / "m.onnx")
    base = "schema_version: 1\nrecipe: p\nstages:\n  export: {kind: export, onnx: m.onnx}\n"
    write(tmp_path, "a.yaml", base + "  quantize: {kind: quantize, model: export, precision: w8a16}\n")
    write(tmp_path, "b.yaml", base + "  quantize: {kind: quantize, model: export, activations: uint16, "
                                     "weights: uint8, per_channel: true}\n")
    write(tmp_path, "c.yaml", base + "  quantize: {kind: quantize, model: export, precision: w8a16, "
                                     "per_channel: false}\n")  # an explicit parameter wins over the preset
    from qnnbuild.engine.recipe.plancache import load_plan

    params = {name: load_plan(str(tmp_path / f"{name}.yaml"), tmp_path, cached=False).by_id()["quantize"].params
              for name in ("a", "b", "c")}
    assert params["a"] == params["b"] != params["c"]  # the key is a function of these: one key for a and b
    assert "precision" not in params["a"] and params["c"]["per_channel"] is False
    assert params["a"]["activations"] == "uint16" and params["a"]["weights"] == "uint8"


def masked_attention(path: Path, seq: int = 16, dim: int = 8) -> None:
    """Hugging Face's additive mask: scores + (1 - mask) * finfo(float32).min, then Softmax, then ·V."""
    from onnx import numpy_helper

    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "fmin"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "axes")]
    nodes = [helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Sub", ["one", "maskf"], ["inv"], name="inv"),
             helper.make_node("Mul", ["inv", "fmin"], ["bias"], name="bias"),
             helper.make_node("Unsqueeze", ["bias", "axes"], ["bias4"], name="unsq"),
             helper.make_node("MatMul", ["q", "k"], ["scores"], name="qk"),
             helper.make_node("Add", ["scores", "bias4"], ["masked"], name="add_mask"),
             helper.make_node("Softmax", ["masked"], ["probs"], axis=-1, name="softmax"),
             helper.make_node("MatMul", ["probs", "v"], ["out"], name="pv")]
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 1, seq, dim]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 1, dim, seq]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 1, seq, dim]),
              helper.make_tensor_value_info("mask", TensorProto.INT64, [1, seq])]
    graph = helper.make_graph(nodes, "masked", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, seq, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def test_attention_mask_made_finite_quantizes(tmp_path: Path, cli: CLI) -> None:
    masked_attention(tmp_path / "attn.onnx")
    recipe = """\
        schema_version: 1
        recipe: mask
        targets: [SM8650]
        stages:
          export: {kind: export, onnx: attn.onnx%s}
          quantize: {kind: quantize, model: export, precision: w8a16,
                     calibration: {synthetic: {count: 8, ranges: {mask: [0, 1]}}}}
          validate: {kind: validate, context: context, reference: export, quantized: quantize,
                     data: {synthetic: {count: 4, seed: 5, ranges: {mask: [0, 1]}}}}
          compile: {kind: compile, model: quantize}
          context: {kind: context-binary, compiled: compile}
        """
    results = {}
    for label, extra in (("finite", ""), ("huge", ", mask_value: -10000")):
        write(tmp_path, "r.yaml", recipe % extra)
        code, _, err = cli("run", "r.yaml")
        assert code == 0, err
        rewrites = json.loads((tmp_path / "artifacts/mask/export/rewrites.json").read_text())
        assert {"rewrite": "finite-mask", "nodes": ["fmin"],
                "value": -100.0 if label == "finite" else -10000} in [{k: v for k, v in r.items() if k != "check"}
                                                                          for r in rewrites]
        assert all(r["check"]["sqnr_db_against_source"] for r in rewrites)  # each checked at build time
        calibration = json.loads((tmp_path / "artifacts/mask/quantize/calibration.json").read_text())
        results[label] = (json.loads((tmp_path / "artifacts/mask/validate/SM8650/metrics.json").read_text())
                          ["sqnr_db"]["out"], calibration["huge_ranges"])
    print(f"masked attention w8a16: mask -100 {results['finite'][0]}, mask -1e4 {results['huge'][0]}")
    assert results["finite"][1] == [] and results["huge"][1]  # quantize names the tensors a huge mask dominates
    assert results["finite"][0]["htp"] > 20 and results["finite"][0]["htp"] > results["huge"][0]["htp"] + 6


def layernorm_matmul(path: Path, dim: int = 64) -> None:
    """LayerNorm → MatMul → LayerNorm, the two LayerNorms sharing gamma (ones, as initialized) and beta (zeros), as
    torch exports a freshly initialized transformer."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((dim, dim)) * 0.1).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(dim, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(dim, np.float32), "beta")]
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["l1"], axis=-1, name="ln1"),
             helper.make_node("MatMul", ["l1", "w"], ["mm"], name="mm"),
             helper.make_node("LayerNormalization", ["mm", "gamma", "beta"], ["y"], axis=-1, name="ln2")]
    graph = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def test_w4a16_keeps_4_bits_to_matmul_weights(tmp_path: Path, cli: CLI) -> None:
    """QNN refuses a LayerNorm with 4-bit weights in some configurations (here: an int4 gamma of ones under w8a16,
    op validation error 3110; all-int4 BERT at w4a16 too) and accepts it in others, so w4a16 gives 4 bits to the
    MatMul weight only and uint8 to the other constants (LayerNorm's gamma and beta)."""
    layernorm_matmul(tmp_path / "m.onnx")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: r
        targets: [SM8650]
        stages:
          export: {kind: export, onnx: m.onnx}
          quantize: {kind: quantize, model: export, precision: w4a16, calibration: {synthetic: {count: 4}}}
          compile: {kind: compile, model: quantize}
          forced: {kind: quantize, model: export, precision: w8a16, calibration: {synthetic: {count: 4}},
                   overrides: {gamma: {type: int4}}}
          forced_compile: {kind: compile, model: forced}
        """)
    code, _, err = cli("run", "r.yaml")
    rules = json.loads((tmp_path / "artifacts/r/quantize/rules.json").read_text())
    assert sorted({r["rule"]: r["tensors"] for r in rules}["int4-only-conv-matmul-weights"]) == ["beta", "gamma"]
    encodings = json.loads((tmp_path / "artifacts/r/quantize/encodings.json").read_text())["param_encodings"]
    assert encodings["w"][0]["bitwidth"] == 4 and encodings["gamma"][0]["bitwidth"] == 8
    assert (tmp_path / "artifacts/r/compile/SM8650/model_ctx_qnn.bin").is_file()
    # an int4 gamma asked for by the recipe is kept (the recipe wins) and QNN's refusal names the nodes and why
    assert code == 1
    assert "✗ forced_compile[SM8650]" in err and "ln1 (LayerNormalization): QNN's op validation refused it" in err
