"""The report's look: its stylesheet, the image self-check, and its figures (matplotlib, embedded as PNG data
so the page needs nothing from outside)."""

from __future__ import annotations

import base64
import io
from typing import Any

from qnnbuild.engine.recipe.plan import Plan

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d232a}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d8dee4}
table{border-collapse:collapse;width:100%;margin:.5rem 0}th,td{padding:.3rem .6rem;border-bottom:1px solid #eaeef2;
text-align:left;vertical-align:top}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,monospace;background:#f6f8fa;padding:.1rem .3rem;border-radius:3px}
.fresh{color:#1a7f37;font-weight:600}.stale{color:#bc4c00;font-weight:600}.fail{color:#cf222e;font-weight:600}
img{max-width:100%;border:1px solid #eaeef2;border-radius:4px}.muted{color:#57606a}
"""


# Marks the page once every image has decoded: a browser (or a test driving one) can tell a broken image.
SELF_CHECK = ("<script>addEventListener('load',()=>{const i=[...document.images];"
              "document.body.dataset.images=i.length+' '+i.filter(x=>x.complete&&x.naturalWidth>0).length})</script>")


def png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dag_figure(plan: Plan, state: dict[str, str]) -> str:
    plt = pyplot()
    pos: dict[str, tuple[float, float]] = {}
    for x, gen in enumerate(plan.generations):
        for y, inst_id in enumerate(gen):
            pos[inst_id] = (x * 2.6, -(y - (len(gen) - 1) / 2) * 0.9)
    width = max(6.0, 2.2 * len(plan.generations))
    height = max(2.5, 0.8 * max(len(g) for g in plan.generations))
    fig, ax = plt.subplots(figsize=(width, height))
    colors = {"fresh": "#dafbe1", "stale": "#fff1e5"}
    for inst in plan.instances:
        for dep in inst.deps:
            dashed = dep in inst.after
            ax.annotate("", xy=pos[inst.id], xytext=pos[dep], arrowprops={
                "arrowstyle": "->", "color": "#57606a", "linestyle": "--" if dashed else "-",
                "shrinkA": 38, "shrinkB": 38})
    for inst in plan.instances:
        px, py = pos[inst.id]
        label = inst.id if inst.kind == inst.stage else f"{inst.id}\n{inst.kind}"
        ax.text(px, py, label, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.4", "fc": colors.get(state.get(inst.id, ""), "#f6f8fa"),
                      "ec": "#57606a"})
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 1.3, max(xs) + 1.3)
    ax.set_ylim(min(ys) - 0.7, max(ys) + 0.7)
    ax.axis("off")
    src = png(fig)
    plt.close(fig)
    return src


def bar_figure(labels: list[str], values: list[float], xlabel: str, title: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, max(2.0, 0.28 * len(labels) + 0.8)))
    ax.barh(range(len(labels)), values, color="#0969da")
    ax.set_yticks(range(len(labels)), [lbl if len(lbl) <= 48 else "…" + lbl[-47:] for lbl in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    src = png(fig)
    plt.close(fig)
    return src
