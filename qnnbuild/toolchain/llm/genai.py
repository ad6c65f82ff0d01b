"""onnxruntime-genai's `genai_config.json` for an LLM deliverable: a `decoder-pipeline` of the prefill graph (run on
the prompt) and the decode graph (run per generated token), both QNN EPContext models on the HTP backend, with
the KV cache shared between past inputs and present outputs (`past_present_share_buffer`) at the fixed context
length — the layout toolchain/llm/export.py builds.

genai gives its own input_ids, position_ids and attention_mask the prompt's length (the mask: the length so far)
and expects logits of that length, where the graphs have fixed shapes; two small CPU models in the pipeline
bridge them: `pad_prompt.onnx` / `pad_token.onnx` pad ids and positions to the graph's length and the mask to
the context length, `unpad.onnx` cuts the graph's logits back to the prompt's length. A prompt longer than the
prefill length is refused by genai's shape check (qnnbuild's own generate() runs it in chunks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PAD_IN = ("input_ids", "position_ids", "attention_mask")
PAD_OUT = ("step_ids", "step_positions", "cache_mask")
PROVIDER = [{"qnn": {"backend_type": "htp", "offload_graph_io_quantization": "0"}}]


def _stage(filename: str, inputs: list[str], outputs: list[str], *, npu: bool, prompt: bool,
           token: bool) -> dict[str, Any]:
    return {"filename": filename, "inputs": inputs, "outputs": outputs,
            "session_options": {"provider_options": PROVIDER if npu else []},
            "run_on_prompt": prompt, "run_on_token_gen": token}


def _graph(name: str, graph: dict[str, Any], prompt: bool) -> dict[str, Any]:
    """The pipeline stage(s) of one graph: one, or one per part in order (genai hands a part's outputs to the
    later stages that take them by name)."""
    parts = graph.get("parts", [graph])
    return {f"{name}_{k}" if len(parts) > 1 else name: _stage(
        part["epcontext_model"], [v["name"] for v in part["inputs"]], [v["name"] for v in part["outputs"]],
        npu=True, prompt=prompt, token=not prompt) for k, part in enumerate(parts, start=1)}


def pad_model(tokens: int, context: int) -> Any:
    """input_ids, position_ids [1, L] and attention_mask [1, T] → step_ids, step_positions [1, tokens] (zeros and
    the following positions after the prompt) and cache_mask [1, context] (zeros after T)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("zero1", [0]), ("tokens", [tokens]), ("context", [context]), ("range", list(range(tokens))),
               ("first", [0]), ("one", [1]), ("axis1", [1]))]
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"], start=1),
        helper.make_node("Sub", ["tokens", "ids_shape"], ["pad_n"]),
        helper.make_node("Concat", ["zero1", "zero1", "zero1", "pad_n"], ["ids_pads"], axis=0),
        helper.make_node("Pad", ["input_ids", "ids_pads"], ["step_ids"]),
        helper.make_node("Slice", ["position_ids", "first", "one", "axis1"], ["start"]),
        helper.make_node("Add", ["start", "range"], ["step_positions"]),
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"], start=1),
        helper.make_node("Sub", ["context", "mask_shape"], ["mask_n"]),
        helper.make_node("Concat", ["zero1", "zero1", "zero1", "mask_n"], ["mask_pads"], axis=0),
        helper.make_node("Pad", ["attention_mask", "mask_pads"], ["cache_mask"]),
    ]
    int64 = TensorProto.INT64
    graph = helper.make_graph(
        nodes, "pad", [helper.make_tensor_value_info(n, int64, [1, d]) for n, d in
                       (("input_ids", "L"), ("position_ids", "L"), ("attention_mask", "T"))],
        [helper.make_tensor_value_info("step_ids", int64, [1, tokens]),
         helper.make_tensor_value_info("step_positions", int64, [1, tokens]),
         helper.make_tensor_value_info("cache_mask", int64, [1, context])], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def unpad_model(vocab: int) -> Any:
    """step_logits [1, n, vocab] and input_ids [1, L] → logits [1, L, vocab]: the prompt's own rows."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("zero1", [0]), ("axis1", [1]))]
    nodes = [helper.make_node("Shape", ["input_ids"], ["length"], start=1),
             helper.make_node("Slice", ["step_logits", "zero1", "length", "axis1"], ["logits"])]
    graph = helper.make_graph(
        nodes, "unpad", [helper.make_tensor_value_info("step_logits", TensorProto.FLOAT, [1, "n", vocab]),
                         helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "L"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "L", vocab])], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def config(spec: dict[str, Any]) -> dict[str, Any]:
    """The config for a deliverable's io_spec (its prefill graph at the top, `decode` and `llm` beside it)."""
    llm = spec["llm"]
    decoder = {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": PROVIDER},
        "head_size": llm["head_dim"], "hidden_size": llm["hidden_size"],
        "num_attention_heads": llm["num_attention_heads"], "num_hidden_layers": llm["layers"],
        "num_key_value_heads": llm["kv_heads"],
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
        "pipeline": [{
            "pad_prompt": _stage("pad_prompt.onnx", list(PAD_IN), list(PAD_OUT), npu=False, prompt=True, token=False),
            "pad_token": _stage("pad_token.onnx", list(PAD_IN), list(PAD_OUT), npu=False, prompt=False, token=True),
            **_graph("prefill", spec, True), **_graph("decode", spec["decode"], False),
            "unpad": _stage("unpad.onnx", ["step_logits", "input_ids"], ["logits"], npu=False, prompt=True,
                            token=True)}],
    }
    eos = llm.get("eos_token_ids") or llm["eos_token_id"]  # the chat template's turn end too
    return {
        "model": {"type": "decoder-pipeline", "context_length": llm["context_length"], "vocab_size": llm["vocab"],
                  "bos_token_id": llm["bos_token_id"], "eos_token_id": eos,
                  "pad_token_id": llm["pad_token_id"] if llm["pad_token_id"] is not None else _first(eos),
                  "decoder": decoder},
        "search": {"max_length": llm["context_length"], "past_present_share_buffer": True, "do_sample": False,
                   "num_beams": 1, "num_return_sequences": 1, "top_k": 1, "min_length": 0},
    }


def _first(ids: int | list[int]) -> int:
    return ids if isinstance(ids, int) else ids[0]


def write(folder: Path, spec: dict[str, Any]) -> list[str]:
    """genai_config.json and the pipeline's CPU models into `folder`; returns the file names."""
    import onnx

    llm = spec["llm"]
    onnx.save(pad_model(llm["prefill"], llm["context_length"]), str(folder / "pad_prompt.onnx"))
    onnx.save(pad_model(1, llm["context_length"]), str(folder / "pad_token.onnx"))
    onnx.save(unpad_model(llm["vocab"]), str(folder / "unpad.onnx"))
    (folder / "genai_config.json").write_text(json.dumps(config(spec), indent=1) + "\n")  # pipeline order matters
    return ["genai_config.json", "pad_prompt.onnx", "pad_token.onnx", "unpad.onnx"]
