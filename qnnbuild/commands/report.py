"""`qnnbuild report RECIPE`: one self-contained HTML page about the last build.

The DAG, each stage's state, time and key, the op report, the accuracy table, plots of per-layer error and
of the cycle profile (matplotlib, embedded as PNG data), and the tool versions. Everything is read from the
artifacts folder; nothing is rebuilt. No external resources, so it opens anywhere, offline.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path
from typing import Any

from qnnbuild.commands.report_figures import CSS, SELF_CHECK, bar_figure, dag_figure, png, pyplot
from qnnbuild.engine.build.session import Session
from qnnbuild.engine.keys.status import Verdict
from qnnbuild.engine.recipe.plan import Instance, Plan
from qnnbuild.stages import KINDS
from qnnbuild.stages.validate.llm import REFERENCE_GAP_WARN


def _read(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{cell}</td>"
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(alt: str, src: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{src}">'


def _stages(plan: Plan, session: Session, verdicts: dict[str, Verdict]) -> list[str]:
    e = html.escape
    state = {k: "fresh" if v.fresh else "stale" for k, v in verdicts.items()}
    rows = []
    for inst in plan.instances:
        v = verdicts[inst.id]
        manifest = session.store.manifest(v.key) if v.key and v.fresh else None
        mark = state[inst.id]
        rows.append([f"<code>{e(inst.id)}</code>", e(inst.kind), f"<span class={mark}>{mark}</span>",
                     e("; ".join(v.reasons)), f"{manifest['seconds']:.2f} s" if manifest else "–",
                     f"<code>{e(v.key[:16])}</code>" if v.key else "–"])
    return ["<h2>Stage graph</h2>", _img("stage graph", dag_figure(plan, state)), "<h2>Stages</h2>",
            _table(["instance", "kind", "state", "why", "build time", "key"], rows, {4})]


def _op_report(inst: Instance, folder: Path) -> list[str]:
    report = _read(folder, "op_report.json")
    if not report:
        return []
    hist = ", ".join(f"{html.escape(k)} ×{n}" for k, n in report["histogram"].items())
    row = [report["ops"], hist, len(report["transposes"]), len(report["float_ops"]), len(report["refused"])]
    return [f"<h2>QNN op report ({html.escape(inst.id)})</h2>",
            _table(["QNN ops", "by type", "transposes", "float ops", "refused"], [row], {0, 2, 3, 4})]


def _accuracy(found: list[tuple[Instance, Path]]) -> list[str]:
    e = html.escape
    rows, labelled = [], []
    for inst, folder in found:
        metrics = _read(folder, "metrics.json")
        for name, fig in (metrics or {}).get("outputs", {}).items():
            top = f"{fig['top1_agreement']:.0%} / {fig['top5_agreement']:.0%}" if "top1_agreement" in fig else "–"
            verdict = "<span class=fresh>pass</span>" if metrics["passed"] else "<span class=fail>fail</span>"
            qdq = metrics.get("sqnr_db", {}).get(name, {}).get("qdq_cpu")
            rows.append([e(str(inst.target)), f"<code>{e(name)}</code>", f"{fig['sqnr_db']:.2f} dB",
                         f"{qdq:.2f} dB" if qdq is not None else "–", f"{fig['cosine']:.5f}",
                         f"{fig['max_abs_error']:.4g}", top, fig["samples"], verdict])
        for kind in ("top1_accuracy", "top5_accuracy"):
            acc = (metrics or {}).get(kind)
            if acc:
                labelled.append([e(str(inst.target)), kind.split("_")[0].replace("top", "top-"),
                                 *(f"{acc[m]:.2f} %" if m in acc else "–" for m in ("fp32", "qdq_cpu", "htp")),
                                 f"{acc['fp32'] - acc['htp']:.2f} points"])
    if not rows:
        return []
    headers = ["target", "output", "SQNR (HTP)", "SQNR (QDQ, CPU)", "cosine", "max abs error", "top-1 / top-5 agree",
               "samples", "thresholds"]
    out = ["<h2>Accuracy (HTP emulator and QDQ on CPU vs fp32 on CPU)</h2>",
           _table(headers, rows, {2, 3, 4, 5, 7})]
    if labelled:
        out += ["<h2>Accuracy on labelled data</h2>", _table(
            ["target", "metric", "fp32 (CPU)", "QDQ (CPU)", "HTP (emulator)", "drop fp32 → HTP"], labelled,
            {2, 3, 4, 5})]
    return out


def _llm(validates: list[tuple[Instance, Path]], contexts: list[tuple[Instance, Path]]) -> list[str]:
    """An LLM's figures: perplexity, token agreement and first divergence per target, decode speed, the
    weight-shared variant."""
    e = html.escape
    rows = []
    for inst, folder in validates:
        metrics = _read(folder, "metrics.json") or {}
        if "perplexity" not in metrics:
            continue
        ppl, agree, apart = metrics["perplexity"], metrics["token_agreement"], metrics["first_divergence"]
        speed = (_read(folder / ".qnnbuild", "timings.json") or {}).get("decode_tokens_per_second", {})
        verdict = "<span class=fresh>pass</span>" if metrics["passed"] else "<span class=fail>fail</span>"
        rows.append([e(str(inst.target)), " / ".join(f"{ppl[m]:.3f}" if m in ppl else "–" for m in
                                                      ("fp32", "qdq_cpu", "htp")),
                     f"{ppl['htp'] / ppl['fp32']:.3f}", f"{agree['htp']:.1%}",
                     f"{agree['qdq_cpu']:.1%}" if "qdq_cpu" in agree else "–",
                     f"{apart['htp']:g} of {metrics['generate']['tokens']}",
                     f"{speed['htp']:.1f}" if "htp" in speed else "–", metrics["samples"], verdict])
    shared = []
    for inst, folder in contexts:
        found = (_read(folder, "io_spec.json") or {}).get("weight_shared")
        if found:
            names = [p["context_binary"] for p in found.get("parts", [found])]  # one binary per part with parts: K
            binaries = ", ".join(f"<code>{e(n)}</code>" for n in names)
            noun = "binaries" if len(names) > 1 else "binary"
            shared.append(f"<p>{e(str(inst.target))}: weight-shared {noun} {binaries}, "
                          f"{found['bytes'] / 1e3:,.0f} kB, {found['size_ratio']:.2f} × the prefill graph's own "
                          f"binary — <strong>not run here</strong> ({e(found['why'])})</p>")
    if not rows and not shared:
        return []
    out = ["<h2>LLM (prefill and decode graphs)</h2>"]
    for inst, folder in validates:
        gap = (_read(folder, "metrics.json") or {}).get("reference_gap")
        if gap is not None and gap > REFERENCE_GAP_WARN:
            out.append(f"<p class=stale>{e(str(inst.target))}: QDQ-CPU and HTP perplexities are {gap:.1%} apart: "
                       "the CPU reference does not predict the device, so the QDQ-CPU column cannot tell "
                       "quantization loss from compile loss</p>")
    if rows:
        headers = ["target", "perplexity fp32 / QDQ-CPU / HTP", "HTP / fp32", "token agreement (HTP)", "(QDQ-CPU)",
                   "greedy tokens equal before the first difference (HTP)", "decode tokens/s (HTP emulator)",
                   "texts", "thresholds"]
        out.append(_table(headers, rows, {2, 3, 4, 5, 6, 7}))
    return out + shared


def _layers(inst: Instance, folder: Path) -> list[str]:
    layers = _read(folder, "layers.json")
    if not layers or not layers["activations"]:
        return []
    worst = layers["activations"][:20]
    plot = bar_figure([r["tensor"] for r in worst], [r["lost_db"] for r in worst], "SQNR lost by the layer (dB)",
                      "Layers that lose the most accuracy")
    return [f"<h2>Per-layer quantization error ({html.escape(inst.id)})</h2>", _img("per-layer error", plot),
            "<p>Suggested 16-bit overrides for the quantize stage: <code>"
            f"{html.escape(json.dumps(layers['suggested_overrides']))}</code></p>"]


def _profile(inst: Instance, folder: Path) -> list[str]:
    profile = _read(folder, "profile.json")
    if not profile:
        return []
    ops = profile["ops"][:15]
    lat = profile["emulator_latency_ms"]
    plot = bar_figure([o["op"] for o in ops], [o["cycles_mean"] for o in ops], "cycles (mean)", "Slowest ops")
    return [f"<h2>Cycle profile ({html.escape(inst.id)}, HTP emulator)</h2>",
            f"<p>{profile['total_cycles_mean']:,.0f} cycles per inference; emulator latency mean {lat['mean']:.2f} ms,"
            f" p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms, p99 {lat['p99']:.2f} ms over {profile['runs']} runs."
            f" <span class=muted>{html.escape(profile['note'])}.</span></p>", _img("cycle profile", plot)]


def _quantize_of(inst: Instance, by_id: dict[str, Instance]) -> str | None:
    """The quantize stage an instance's model comes from (following its inputs upstream)."""
    todo = [inst]
    while todo:
        current = todo.pop()
        if current.kind == "quantize":
            return current.stage
        todo += [by_id[i] for i in current.inputs.values() if by_id[i].kind != "export"]
    return None


def _variants(plan: Plan, found: dict[str, list[tuple[Instance, Path]]]) -> list[str]:
    """Quantize variants of one recipe side by side per target: accuracy against cycles, one look."""
    by_id = plan.by_id()
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for kind in ("validate", "profile"):
        for inst, folder in found.get(kind, []):
            variant = _quantize_of(inst, by_id)
            summary = KINDS[kind].summarize(folder)  # the same figures `qnnbuild diff` compares
            if variant is None or not summary:
                continue
            row = rows.setdefault((str(inst.target), variant), {})
            sqnrs = [v for k, v in summary.items() if k.startswith("SQNR ")]
            if kind == "validate":
                if sqnrs:  # an LLM's validate has perplexities instead (shown with its stage)
                    row["sqnr"] = min(sqnrs)
                row["top1"] = summary.get("top-1 accuracy (%)")
            else:
                row["cycles"] = summary["cycles per inference"]
    if len({v for _, v in rows}) < 2:
        return []
    e = html.escape
    table = [[e(t), f"<code>{e(v)}</code>", f"{r['sqnr']:.2f} dB" if "sqnr" in r else "–",
              f"{r['top1']:.2f} %" if r.get("top1") is not None else "–",
              f"{r['cycles']:,.0f}" if "cycles" in r else "–"] for (t, v), r in sorted(rows.items())]
    out = ["<h2>Quantization variants (HTP emulator)</h2>",
           _table(["target", "quantize stage", "SQNR (worst output)", "top-1", "cycles / inference"], table,
                  {2, 3, 4})]
    points = [(v, r["cycles"], r["sqnr"]) for (_, v), r in rows.items() if "cycles" in r and "sqnr" in r]
    if len(points) >= 2:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, cycles, sqnr in points:
            ax.scatter([cycles], [sqnr])
            ax.annotate(label, (cycles, sqnr), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("cycles per inference")
        ax.set_ylabel("SQNR vs fp32 (dB)")
        ax.set_title("Accuracy against cost")
        out.append(_img("accuracy against cycles", png(fig)))
        plt.close(fig)
    return out


def build(plan: Plan, artifacts: Path) -> str:
    """The report's HTML."""
    session = Session(plan, artifacts, readonly=True)
    verdicts = {v.id: v for v in session.assess()}
    e = html.escape
    parts = [f"<h1>qnnbuild report: {e(plan.recipe)}</h1>",
             f"<p class=muted>recipe <code>{e(plan.recipe_file)}</code> · artifacts <code>{e(str(artifacts))}</code>"
             "</p>", *_stages(plan, session, verdicts)]
    by_kind: dict[str, list[tuple[Instance, Path]]] = {}
    for inst in plan.instances:
        by_kind.setdefault(inst.kind, []).append((inst, session.view(inst)))
    for inst, folder in by_kind.get("convert", []):
        parts += _op_report(inst, folder)
    parts += _accuracy(by_kind.get("validate", []))
    parts += _llm(by_kind.get("validate", []), by_kind.get("context-binary", []))
    parts += _variants(plan, by_kind)
    for inst, folder in by_kind.get("layer-error", []):
        parts += _layers(inst, folder)
    for inst, folder in by_kind.get("profile", []):
        parts += _profile(inst, folder)
    lock = session.store.read_lock(plan.recipe)
    tools = {**lock.get("tools", {}), **lock.get("platform", {})}
    if tools:
        parts += ["<h2>Tools</h2>", _table(["tool", "version"], [[e(k), e(str(v))] for k, v in sorted(tools.items())])]
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>qnnbuild: {e(plan.recipe)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}{SELF_CHECK}</body></html>\n")


def cmd_report(args: argparse.Namespace) -> int:
    from qnnbuild.engine.recipe.plancache import load_plan

    artifacts = Path(args.artifacts)
    plan = load_plan(args.recipe, artifacts)
    out = Path(args.output) if args.output else artifacts / plan.recipe / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build(plan, artifacts))
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB)")
    return 0
