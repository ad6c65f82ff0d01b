"""The quantize stage for an LLM: its prefill and decode graphs quantized together, calibrated by running them
on text the way an application does (toolchain/llm/quant.py holds the pieces: calibration feeds, the shared KV
cache and bias encodings, the check that both graphs' weights match)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.common import memory
from qnnbuild.errors import StageFailed
from qnnbuild.toolchain.data import textdata
from qnnbuild.toolchain.llm import layout
from qnnbuild.toolchain.llm import quant as llmquant
from qnnbuild.toolchain.quant.ranges import write_cache
from qnnbuild.toolchain.quant.spec import QuantSpec

DECODE_STEPS = 8  # greedy decode steps after each calibration line: the decode graph sees real caches


def quantize_llm(folder: Path, out: Path, params: dict[str, Any], files: dict[str, Path],
                 recipe_overrides: Callable[[Any, Path], dict[str, Any]], say: Callable[[str], None]) -> None:
    """The quantize stage for an LLM: `folder` holds the export (model.onnx = prefill, decode/, llm.json);
    writes both QDQ graphs, rules.json (per graph), calibration.json (with the KV cache encodings) and llm.json."""
    import json
    import tempfile

    import onnx

    from qnnbuild.toolchain.quant import qnnrules, quantizer

    info = layout.info(folder)
    if "text" not in params["calibration"]:
        raise StageFailed("an LLM is calibrated on text: calibration: {text: {file, count}}")
    tokenizer = files.get("calibration.text.tokenizer", layout.tokenizer(folder))
    lines = textdata.token_lines(files["calibration.text.file"], tokenizer, params["calibration"]["text"],
                        info["bos_token_id"])
    if params.get("method", "minmax") != "minmax":
        raise StageFailed(f"method: {params['method']}: an LLM's ranges are min-max, recorded as its graphs read the "
                          "calibration text (the other methods keep every sample's activations)")
    ranges, runs = llmquant.calibration_ranges(folder, lines, DECODE_STEPS)
    memory.trim()  # the fp32 sessions that recorded the ranges are gone
    say(f"calibrating on {len(lines)} lines of text: {runs['prefill']} prefill and {runs['decode']} decode runs")
    kv = llmquant.kv_overrides(ranges, info["layers"], 8)
    overrides, listed, biased = {}, [], set()
    for graph, sub in (("prefill", folder), ("decode", folder / "decode")):
        model = onnx.load(str(sub / "model.onnx"))
        biased |= llmquant.biased_inputs(model)
        base = {**kv, **recipe_overrides(model, sub)}
        overrides[graph], rules = qnnrules.apply(model, params["activations"], base, params["weights"])
        listed.append({"graph": graph, "rules": rules})
        del model
        memory.trim()
    def make(model: Path, dest: Path, cache: Path) -> Callable[[dict[str, Any]], Path]:
        return quantizer.make(model, dest, quantizer.EMPTY, QuantSpec.of(params), cache,
                              say if dest.parent == out else lambda _: None)

    with tempfile.TemporaryDirectory(prefix="qnnbuild-calibration-") as tmp:
        caches = {graph: Path(tmp) / graph / "ranges.json" for graph in ranges}
        for graph, cache in caches.items():
            cache.parent.mkdir()
            write_cache(ranges[graph], cache)
        llmquant.quantize_pair(folder, out, caches, overrides, make)
        joint = llmquant.shared_activations(layout.graphs(out, "model.qdq.onnx"), biased, overrides)
        if joint:  # biases follow their inputs' scales: quantize again with those shared by both graphs
            say(f"{len(joint)} biased layer inputs share one encoding in both graphs (the union of their ranges)")
            llmquant.quantize_pair(folder, out, caches, {g: {**joint, **o} for g, o in overrides.items()}, make)
    shared = llmquant.check_shared(out / "model.qdq.onnx", out / "decode" / "model.qdq.onnx")
    for sub, dest in ((folder, out), (folder / "decode", out / "decode")):
        llmquant.write_encodings(dest, sub)
    say(f"both graphs quantized; {shared} weight encodings identical in both; KV cache at 8 bits")
    layout.carry_info(folder, out)
    (out / "rules.json").write_text(json.dumps(listed, indent=1) + "\n")
    stats = {"source": "text", "lines": len(lines), "runs": runs,
             "kv_cache": {n: {"scale": float(e[0]["scale"]), "zero_point": int(e[0]["zero_point"])}
                          for n, e in kv.items() if n.startswith("past_")}}
    (out / "calibration.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
