"""The export stage for a causal LM (an `hf:` folder or a `gguf:` file, with `llm:`): its prefill graph is the
stage's model.onnx, its decode graph decode/model.onnx, and llm.json says how they go together
(toolchain/llm/export.py), with the ids that end a turn of its chat template."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.common import memory
from qnnbuild.toolchain.llm import chat, layout


def _step(phase: Callable[[str], None], graph: str, step: str) -> None:
    phase(f"{graph} graph: {step}")


def export_llm(params: dict[str, Any], files: dict[str, Path], out: Path, preprocessing: Path, scratch: Path,
               write: Callable[[Any, Path], None], say: Callable[[str], None],
               phase: Callable[[str], None] = lambda step: None) -> None:
    """`write(cleaned, folder)` writes one cleaned graph's files (the stage's own layout); `phase` hears where
    the export is (for the console's progress line)."""
    from qnnbuild.toolchain.graph import onnxclean, onnxfile
    from qnnbuild.toolchain.llm import export as llmexport
    from qnnbuild.toolchain.sources import ggufsource, hfexport

    phase("loading the model")
    if "gguf" in params:
        model = ggufsource.load(files["gguf"])
        ggufsource.preprocessing_files(files["gguf"], preprocessing, say)
    else:
        model = hfexport.load(files["hf"], "causal-lm")
        hfexport.preprocessing_files(files["hf"], preprocessing, say)
    phase("exporting both graphs (torch)")
    graphs, info = llmexport.export_pair(model, params["llm"], params["mask_value"], params["opset"], scratch, say)
    del model  # the graphs hold the weights now
    memory.trim()
    info["eos_token_ids"] = chat.end_ids(preprocessing, info["eos_token_id"])
    info["chat_template"] = chat.template(preprocessing) is not None
    for graph, folder in (("prefill", out), ("decode", out / "decode")):
        cleaned = onnxclean.clean(graphs[graph], scratch, {}, say, mask_value=params["mask_value"],
                                  phase=functools.partial(_step, phase, graph))
        phase(f"{graph} graph: writing")
        write(cleaned, folder)
        del cleaned
        onnxfile.remove(graphs[graph])  # a 1 B model's scratch copies would fill a disk of GBs
        memory.trim()  # one graph's copies gone before the next is cleaned
    layout.write_info(out, info)
