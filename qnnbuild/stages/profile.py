"""`profile`: where the time goes, from QNN's own profiler on the HTP emulator.

Runs the context with `profiling_level=detailed`, reads QNN's per-op cycle counts, maps them back to ONNX
node names (QNN names ops `<onnx name>_token_<n>`), and times each run. Every figure is an emulator figure:
cycle counts come from the emulated HTP, wall times from this x86 host; they rank ops and compare builds,
they are not device latencies.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import StageKind, StageRun, read_json, refs_of

OP = re.compile(r"^(?P<name>.+?):OpId_\d+ \(cycles\)$")
TOKEN = re.compile(r"_token_\d+$")



def parse_profile(text: str) -> list[dict[str, Any]]:
    """QNN's profile CSV → one dict per execution: total cycles, per-op cycles, QNN execute time (µs)."""
    import csv
    import io

    runs: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for row in csv.DictReader(io.StringIO(text)):
        what, unit, value = row["Event Identifier"], row["Unit of Measurement"], row["Time"]
        if what == "Accelerator (execute) time (cycles)":
            current = {"cycles": int(value), "ops": {}}
            runs.append(current)
        elif current is not None and row["Message"] == "NODE" and unit == "CYCLES":
            m = OP.match(what)
            if m:
                current["ops"][m.group("name")] = current["ops"].get(m.group("name"), 0) + int(value)
        elif current is not None and what == "QNN (execute) time" and unit == "US":
            current["execute_us"] = int(value)
    return runs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run(ctx: StageRun) -> None:
    import csv
    import statistics

    import numpy as np
    import onnx

    from qnnbuild.toolchain.runtime import qnn

    target = ctx.require_target()
    context_dir = ctx.inputs["context"]
    spec = json.loads((context_dir / "io_spec.json").read_text())
    onnx_names = {n.name for n in onnx.load(str(ctx.inputs["model"] / "model.qdq.onnx")).graph.node} \
        if "model" in ctx.inputs else set()
    runs, warmup = ctx.params["runs"], ctx.params["warmup"]
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "profile.csv"
        session = qnn.deliverable_session(context_dir, {"profiling_level": "detailed",
                                                        "profiling_file_path": str(csv_path)})
        rng = np.random.default_rng(0)
        feed = {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"]) for i in spec["inputs"]}
        wall = []
        for i in range(warmup + runs):
            started = time.perf_counter()
            session.run(None, feed)
            if i >= warmup:
                wall.append((time.perf_counter() - started) * 1000)
            ctx.progress(i + 1, warmup + runs, "runs")
        del session  # QNN writes the profile when the session ends
        profiled = parse_profile(csv_path.read_text())[warmup:]
    if not profiled:
        raise StageFailed("QNN wrote no profile events")
    op_names = list(dict.fromkeys(name for r in profiled for name in r["ops"]))
    ops = []
    for name in op_names:
        cycles = [r["ops"].get(name, 0) for r in profiled]
        onnx_node = TOKEN.sub("", name)  # QNN names ops after their ONNX node: `<node>_token_<n>`
        ops.append({"op": name, "onnx_node": onnx_node if onnx_node in onnx_names else None,
                    "cycles_mean": round(statistics.fmean(cycles), 1), "cycles_min": min(cycles)})
    total = statistics.fmean(r["cycles"] for r in profiled)
    for op in ops:
        op["share"] = round(op["cycles_mean"] / total, 4) if total else 0.0
    ops.sort(key=lambda o: -o["cycles_mean"])
    latency = {"mean": statistics.fmean(wall), "p50": percentile(wall, 0.5), "p95": percentile(wall, 0.95),
               "p99": percentile(wall, 0.99), "min": min(wall), "max": max(wall)}
    report = {"target": target["name"], "runs": runs, "warmup": warmup,
              "note": "HTP emulator figures: cycles from the emulated HTP, milliseconds of this x86 host",
              "total_cycles_mean": round(total, 1), "emulator_latency_ms": {k: round(v, 3) for k, v in latency.items()},
              "qnn_execute_us_mean": round(statistics.fmean(r.get("execute_us", 0) for r in profiled), 1),
              "ops": ops, "slowest": [o["op"] for o in ops[: ctx.params["top"]]]}
    (ctx.out / "profile.json").write_text(json.dumps(report, indent=1) + "\n")
    with (ctx.out / "profile.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["op", "onnx_node", "cycles_mean", "cycles_min", "share"])
        writer.writerows([o["op"], o["onnx_node"] or "", o["cycles_mean"], o["cycles_min"], o["share"]] for o in ops)
    ctx.say(f"{target['name']} (emulator): {total:,.0f} cycles/inference; latency mean {latency['mean']:.2f} ms, "
            f"p50 {latency['p50']:.2f}, p95 {latency['p95']:.2f}, p99 {latency['p99']:.2f} over {runs} runs; "
            f"slowest: {', '.join(report['slowest'])}")


def summarize(folder: Path) -> dict[str, Any]:
    profile = read_json(folder, "profile.json")
    if not profile:
        return {}
    return {"cycles per inference": profile["total_cycles_mean"], "slowest ops": ", ".join(profile["slowest"][:3])}


KIND = StageKind(
    name="profile",
    version=1,
    summary="HTP emulator profile: per-op cycles mapped to ONNX nodes, slowest ops, latency statistics",
    params={
        "context": {"type": "string", "description": "the context-binary stage"},
        "model": {"type": "string", "description": "the quantize stage, to name ops by their ONNX nodes"},
        "runs": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 20},
        "warmup": {"type": "integer", "minimum": 0, "maximum": 100, "default": 2},
        "top": {"type": "integer", "minimum": 1, "default": 5, "description": "how many slowest ops to name"},
    },
    required=("context",),
    refs=refs_of("context", "model"),
    tools=("onnxruntime", "onnxruntime-qnn"),
    reproducible=False,
    summarize=summarize,
    run=run,
)
