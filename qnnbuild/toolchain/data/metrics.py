"""How far a quantized model's outputs are from the fp32 reference, in the figures engineers quote.

SQNR (dB) = 10·log10(Σ ref² / Σ (ref − got)²) over all samples; cosine similarity over all samples;
maximum absolute error; for classifier outputs ([1, C], C ≥ 2) top-1 agreement (same argmax) and top-5
agreement (the reference's top-1 class is among the quantized model's five best).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    signal = float(np.sum(np.square(ref, dtype=np.float64)))
    noise = float(np.sum(np.square(ref.astype(np.float64) - got.astype(np.float64))))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine(ref: np.ndarray, got: np.ndarray) -> float:
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 if denom == 0.0 else float(np.dot(a, b) / denom)


def is_classifier(shape: tuple[int, ...] | list[int]) -> bool:
    return len(shape) == 2 and shape[0] == 1 and shape[1] >= 2


def compare(refs: list[np.ndarray], gots: list[np.ndarray]) -> dict[str, Any]:
    """Figures for one output over all samples (one array per sample in each list)."""
    ref, got = np.stack(refs), np.stack(gots)
    figures: dict[str, Any] = {"samples": len(refs), "sqnr_db": round(sqnr_db(ref, got), 3),
                               "cosine": round(cosine(ref, got), 6),
                               "max_abs_error": float(np.max(np.abs(ref - got))) if ref.size else 0.0}
    if is_classifier(refs[0].shape):
        top1 = [int(np.argmax(r)) == int(np.argmax(g)) for r, g in zip(refs, gots, strict=True)]
        top5 = [int(np.argmax(r)) in np.argsort(g.ravel())[-5:] for r, g in zip(refs, gots, strict=True)]
        figures["top1_agreement"] = sum(top1) / len(top1)
        figures["top5_agreement"] = sum(top5) / len(top5)
    return figures


def pooled_cosine(refs: list[np.ndarray], gots: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """Mean over samples of the cosine between mask-weighted mean-pooled embeddings, as sentence encoders pool:
    token states [1, seq, dim] are averaged over the tokens the attention mask keeps; an output that is
    already one vector per sample ([1, dim]) is compared as it is."""
    found = []
    for ref, got, mask in zip(refs, gots, masks, strict=True):
        a, b = ref, got
        if ref.ndim == 3 and ref.shape[1] == mask.shape[-1]:
            weight = mask.reshape(1, -1, 1).astype(np.float64)
            keep = max(float(weight.sum()), 1.0)
            a, b = (ref * weight).sum(axis=1) / keep, (got * weight).sum(axis=1) / keep
        found.append(cosine(a, b))
    return float(np.mean(found)) if found else 1.0
