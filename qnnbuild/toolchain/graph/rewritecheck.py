"""Every rewrite export applies is checked at build time against the model before it, on seeded inputs at the
recipe's shapes, and the figure goes beside it in rewrites.json.

A rewrite that moves or renames values (an index table, a removed guard, a constant made an initializer, weights
dequantized as ONNX defines it) must give the same outputs bit for bit; one that computes differently (a
finite mask, fused normalizations, onnxruntime's Gelu fusion, Div for Reciprocal) must keep every output's
SQNR against the source model (all rewrites so far) at or above `FLOOR_DB`. Otherwise the stage fails naming
the rewrite: a rewrite that changes what a model computes is a bug, never a build.

The models run on onnxruntime's CPU as written (`qnn.cpu_session(as_written=True)`: optimizations and weight
prepacking off), so the check sees the rewrite's difference and nothing of onnxruntime's own. Integer inputs
(token ids, masks, positions) are drawn from {0, 1}, valid for any vocabulary; floats from a normal law. A model
whose weights exceed `LIMIT` is not checked (a check holds serialized copies of it), and rewrites.json says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qnnbuild.errors import StageFailed

FLOOR_DB = 60.0
LIMIT = 256 << 20  # bytes of weights
EXACT = frozenset({"constant-to-initializer", "clip-computed-bounds", "infinite-bound", "dequantized-weights",
                   "softmax-nan-guard", "constant-indices"})
SEED = 0


def _feeds(model: Any) -> dict[str, Any] | None:
    from onnx import helper

    rng = np.random.default_rng(SEED)
    known = {i.name for i in model.graph.initializer}
    feeds = {}
    for value in (v for v in model.graph.input if v.name not in known):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
        if not all(dims) and dims:
            return None
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 2, dims).astype(dtype)
    return feeds


def _run(model: Any, feeds: dict[str, Any]) -> list[Any]:
    from qnnbuild.toolchain.runtime.qnn import cpu_session, ort

    session = cpu_session(model.SerializeToString(), as_written=True)
    quiet = ort().RunOptions()
    quiet.log_severity_level = 4  # a model that cannot run here is said once, in rewrites.json
    return [np.asarray(o) for o in session.run(None, feeds, quiet)]


def _max_abs(a: Any, b: Any) -> float:
    if a.shape != b.shape:
        return float("inf")
    if bool in (a.dtype, b.dtype):
        return float(np.count_nonzero(a != b))
    x, y = a.astype(np.float64), b.astype(np.float64)
    same = (np.isnan(x) & np.isnan(y)) | (x == y)  # equal NaNs and equal infinities are no error
    return float(np.abs(np.where(same, 0.0, x - y)).max(initial=0.0))


def _sqnr_db(reference: Any, other: Any) -> float:
    if reference.shape != other.shape:
        return float("-inf")
    x, y = reference.astype(np.float64), other.astype(np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    noise = float(np.sum((x[finite] - y[finite]) ** 2))
    signal = float(np.sum(x[finite] ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(signal / noise)) if signal > 0 else float("-inf")


class RewriteCheck:
    """Called with the model after each rewrite and that rewrite's rewrites.json entry, which it completes."""

    def __init__(self, model: Any) -> None:
        from qnnbuild.toolchain.graph import onnxfile

        weights = onnxfile.weight_bytes(model)
        external = any(i.data_location == 1 for i in model.graph.initializer)  # TensorProto.EXTERNAL
        self.feeds = None if weights > LIMIT or external else _feeds(model)
        self.skipped = (f"not checked: weights of {weights / 2**20:.0f} MB (a check runs copies of the model "
                        f"up to {LIMIT >> 20} MB)" if weights > LIMIT or external else
                        "not checked: an input without a fixed shape" if self.feeds is None else "")
        self.source = self.before = self._reference(model)

    def _reference(self, model: Any) -> list[Any]:
        """The model's outputs on the seeded inputs; a model that does not run on them (a branch of an `If`
        that needs other data) is not checked, and says why."""
        if self.feeds is None:
            return []
        try:
            return _run(model, self.feeds)
        except Exception as exc:  # onnxruntime raises its own error types
            self.feeds = None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.skipped = f"not checked: the model does not run on seeded inputs ({first[:200]})"
            return []

    def rebase(self, model: Any) -> None:
        """The model changed by something other than a rewrite (onnxruntime's constant folding): the next
        rewrite is compared with it."""
        self.before = self._reference(model)

    def __call__(self, model: Any, step: dict[str, Any]) -> None:
        if self.feeds is None:
            step["check"] = self.skipped
            return
        after = _run(model, self.feeds)
        exact = step["rewrite"] in EXACT
        error = max(_max_abs(b, a) for b, a in zip(self.before, after, strict=True))
        sqnr = min(_sqnr_db(s, a) for s, a in zip(self.source, after, strict=True))
        step["check"] = {"exact": exact, "max_abs_error": error,
                         "sqnr_db_against_source": round(sqnr, 2) if np.isfinite(sqnr) else str(sqnr)}
        if (exact and error > 0) or (not exact and sqnr < FLOOR_DB):
            figure = f"max |error| {error:.3g}" if exact else f"SQNR {sqnr:.1f} dB < {FLOOR_DB:g} dB"
            raise StageFailed(f"the {step['rewrite']} rewrite changed what the model computes ({figure} on seeded "
                              f"inputs; nodes {', '.join(step['nodes'][:5])}): a qnnbuild bug, please report it")
        self.before = after


def no_check(model: Any, step: dict[str, Any]) -> None:
    """For callers that check nothing (unit tests of one rewrite)."""
