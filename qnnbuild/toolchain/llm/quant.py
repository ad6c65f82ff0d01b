"""Quantizing an LLM's prefill and decode graphs together (toolchain/llm/export.py made them).

Calibration runs the fp32 graphs the way an application does (llmrun.Runner): each line of text through prefill,
then greedy decode steps after it, so the decode graph is calibrated on real caches, not zeros; each graph's
ranges are recorded as it runs (toolchain/quant/ranges.py). Each graph is then quantized with its own ranges, with
one encoding per KV-cache tensor shared by both graphs and by a layer's past
input and present output (the cache a graph writes is the cache the next run reads, bit for bit, so its scale and
zero point must be one), at `kv_bits` (8: the cache is most of an LLM's memory traffic). Weights are calibrated
from the weights themselves, which both graphs share, so their encodings come out identical; `check_shared`
proves it on the written models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.common import memory
from qnnbuild.errors import StageFailed
from qnnbuild.toolchain.llm import run as llmrun
from qnnbuild.toolchain.quant.ranges import Ranges, RangeSession


def calibration_ranges(folder: Path, lines: list[list[int]], new_tokens: int) -> tuple[dict[str, Ranges],
                                                                                      dict[str, int]]:
    """graph → the MinMax ranges of its tensors while the fp32 graphs read each line and generated `new_tokens`
    after it (recorded as they run: toolchain/quant/ranges.py), and graph → its runs. One graph's session is open
    at a time, since each holds every weight: every line's prefill runs first, where the line stands is kept,
    then the decode graph carries every line on from there. The ranges are the same as in one pass (a min and
    a max do not depend on order)."""
    import numpy as np

    runner = llmrun.Runner(RangeSession(folder / "model.onnx"), None)
    paused = []
    for ids in lines:
        prompt = ids[: runner.context - new_tokens]
        runner.reset()
        head = runner.prefilled(prompt)
        logits = runner.feed(prompt[:head])[-1] if head else np.zeros(0)
        paused.append((runner.pause(), prompt[head:], logits))
    found = {"prefill": runner.prefill.ranges}
    runner.prefill = None  # its weights go before the decode graph's come
    memory.trim()
    runner.decode = RangeSession(folder / "decode" / "model.onnx")
    for state, rest, logits in paused:
        runner.resume(state)
        runner.go_on(runner.feed(rest)[-1] if rest else logits, new_tokens)
    if not runner.runs["decode"]:
        raise StageFailed("llm calibration ran no decode step: give longer text or a larger context_length")
    return {**found, "decode": runner.decode.ranges}, dict(runner.runs)


def exact_encoding(low: float, high: float, bits: int) -> list[dict[str, Any]]:
    """An onnxruntime override fixing an asymmetric unsigned `bits` (8 or 16) encoding of [low, high] (0 inside)."""
    import numpy as np

    scale = (high - low) / (2**bits - 1) or 1.0
    dtype = np.uint8 if bits == 8 else np.uint16
    return [{"type": f"uint{bits}", "scale": np.array(scale, np.float32),
             "zero_point": np.array(round(-low / scale), dtype)}]


def kv_overrides(ranges: dict[str, Ranges], layers: int, bits: int) -> dict[str, Any]:
    """One exact encoding per cache tensor (layer i's key, layer i's value), over every cache both graphs read,
    for the past input and the present output alike."""

    overrides: dict[str, Any] = {}
    for i in range(layers):
        for part in ("key", "value"):
            name = f"past_key_values.{i}.{part}"
            seen = [graph[name] for graph in ranges.values() if name in graph]
            entry = exact_encoding(min(0.0, *(low for low, _ in seen)), max(0.0, *(high for _, high in seen)), bits)
            overrides[name] = entry
            overrides[f"present.{i}.{part}"] = entry
    return overrides


MOVES = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")  # onnxruntime gives their output their input's


def biased_inputs(model: Any) -> set[str]:
    """The activations whose encodings set a bias's scale: each Gemm/Conv-with-bias input, followed back through
    data-movement ops (onnxruntime quantizes a Reshape's output with its input's encoding, so an override on the
    output alone is not applied)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found = set()
    for node in model.graph.node:
        if node.op_type in ("Gemm", "Conv", "ConvTranspose") and len(node.input) > 2 and node.input[2]:
            name = node.input[0]
            while name in producer and producer[name].op_type in MOVES:
                name = producer[name].input[0]
            found.add(name)
    return found


def shared_activations(qdq: dict[str, Path], names: set[str], taken: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One exact encoding for each of `names` (the inputs of Gemm/Conv nodes with a bias) over the union of the
    two graphs' calibrated ranges, where the recipe and QNN's rules left it free (`taken`, per graph): a bias is
    quantized with its input's scale times its weight's, so a Qwen2's attention biases came out different in the
    two graphs until their inputs shared one encoding."""
    import onnx

    from qnnbuild.toolchain.quant import encodings

    found = {}
    for graph, path in qdq.items():  # one QDQ model in memory at a time
        found[graph] = encodings.from_qdq(onnx.load(str(path)))["activation_encodings"]
        memory.trim()
    first, second = found["prefill"], found["decode"]
    shared: dict[str, Any] = {}
    for name in sorted(set(first) & set(second) & names):
        a, b = first[name][0], second[name][0]
        if a["bitwidth"] != b["bitwidth"] or "True" in (a["is_symmetric"], b["is_symmetric"]):
            continue
        if any(name in taken[g] for g in taken):
            continue
        if a["bitwidth"] in (8, 16):
            low, high = min(a["min"], b["min"], 0.0), max(a["max"], b["max"], 0.0)
            shared[name] = exact_encoding(low, high, a["bitwidth"])
    return shared


def _params_of(path: Path) -> dict[str, Any]:
    import onnx

    from qnnbuild.toolchain.quant import encodings

    found: dict[str, Any] = encodings.from_qdq(onnx.load(str(path)))["param_encodings"]
    memory.trim()
    return found


def check_shared(prefill: Path, decode: Path) -> int:
    """Both QDQ graphs' weight encodings are equal (one set, shared); returns how many were compared."""
    first, second = (_params_of(p) for p in (prefill, decode))
    differ = sorted(n for n in first if n in second and first[n] != second[n])
    if differ or set(first) != set(second):
        raise StageFailed("the prefill and decode graphs' weights were quantized differently: "
                          + ", ".join(differ[:5] or sorted(set(first) ^ set(second))[:5]))
    return len(first)


def write_encodings(out: Path, export: Path) -> None:
    """out/encodings.json (QNN's layout) of out/model.qdq.onnx, by the source model's tensor names."""
    import onnx

    from qnnbuild.toolchain.graph import onnxgraph
    from qnnbuild.toolchain.quant import encodings

    encodings.write(out / "encodings.json",
                    encodings.named(onnx.load(str(out / "model.qdq.onnx")), onnxgraph.source_names(export)))


def quantize_pair(folder: Path, out: Path, caches: dict[str, Path], overrides: dict[str, dict[str, Any]],
                  make: Callable[[Path, Path, Path], Callable[[dict[str, Any]], Path]]) -> None:
    """Quantize prefill (folder/model.onnx → out/model.qdq.onnx) and decode (folder/decode → out/decode) with
    their calibration caches, each with its overrides (the recipe's, QNN's rules and the shared KV encodings)."""
    (out / "decode").mkdir(exist_ok=True)
    for graph, source, dest in (("prefill", folder, out), ("decode", folder / "decode", out / "decode")):
        make(source / "model.onnx", dest / "model.qdq.onnx", caches[graph])(overrides[graph])
        memory.trim()  # one graph's quantizer copies gone before the next graph's
