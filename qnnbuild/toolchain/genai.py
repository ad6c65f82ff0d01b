"""onnxruntime-genai's `genai_config.json` for an LLM deliverable: a `decoder-pipeline` of the prefill graph (run on
the prompt) and the decode graph (run per generated token), both QNN EPContext models on the HTP backend, with
the KV cache shared between past inputs and present outputs (`past_present_share_buffer`) at the fixed context
length — the layout toolchain/llmexport.py builds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROVIDER = [{"qnn": {"backend_type": "htp", "offload_graph_io_quantization": "0"}}]


def _stage(graph: dict[str, Any], prompt: bool) -> dict[str, Any]:
    return {"filename": graph["epcontext_model"], "inputs": [v["name"] for v in graph["inputs"]],
            "outputs": [v["name"] for v in graph["outputs"]], "session_options": {"provider_options": PROVIDER},
            "run_on_prompt": prompt, "run_on_token_gen": not prompt}


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
        "pipeline": [{"prefill": _stage(spec, True), "decode": _stage(spec["decode"], False)}],
    }
    eos = llm["eos_token_id"]
    return {
        "model": {"type": "decoder-pipeline", "context_length": llm["context_length"], "vocab_size": llm["vocab"],
                  "bos_token_id": llm["bos_token_id"], "eos_token_id": eos,
                  "pad_token_id": llm["pad_token_id"] if llm["pad_token_id"] is not None else eos,
                  "decoder": decoder},
        "search": {"max_length": llm["context_length"], "past_present_share_buffer": True, "do_sample": False,
                   "num_beams": 1, "num_return_sequences": 1, "top_k": 1, "min_length": 0},
    }


def write_config(path: Path, spec: dict[str, Any]) -> None:
    path.write_text(json.dumps(config(spec), indent=1) + "\n")  # pipeline order matters: keys unsorted
