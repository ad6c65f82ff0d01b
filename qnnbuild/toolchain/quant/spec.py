"""Quantization settings as one typed value, and the presets a recipe names them by.

"precision" means exactly one thing in the code: the presets (`precision: w8a16` in a recipe, Qualcomm AI Hub's
names for weight/activation bits). The automatic search for mixed precision is `auto_precision`. The quantizer,
AIMET and the LLM quantizer take a QuantSpec, never a recipe's params dict; the stage builds it once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

QTYPES = ["uint8", "uint16", "int8", "int16", "int4", "uint4"]
METHODS = ["minmax", "entropy", "percentile"]
PRESETS: dict[str, dict[str, Any]] = {
    "w8a8": {"activations": "uint8", "weights": "uint8", "per_channel": True},
    "w8a16": {"activations": "uint16", "weights": "uint8", "per_channel": True},
    "w4a16": {"activations": "uint16", "weights": "int4", "per_channel": True, "symmetric": True},
    "w16a16": {"activations": "uint16", "weights": "int16", "per_channel": True, "symmetric": True},
}


def expand(params: Mapping[str, Any]) -> dict[str, Any]:
    """`precision: w8a16` → the explicit parameters it stands for; the recipe's explicit ones win."""
    preset = PRESETS.get(params.get("precision", ""), {})
    return {**preset, **{k: v for k, v in params.items() if k != "precision"}}


@dataclass(frozen=True)
class QuantSpec:
    """How weights and activations are quantized (types from QTYPES, a calibration method from METHODS)."""

    activations: str = "uint8"
    weights: str = "uint8"
    method: str = "minmax"
    per_channel: bool = False
    symmetric: bool = False
    block_size: int | None = None  # 4-bit MatMul weights in blocks of this many (LPBQ)
    adaround_iterations: int = 1000

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> QuantSpec:
        """From a quantize stage's parameters (defaults filled in, a preset expanded or not)."""
        p = expand(params)
        return cls(activations=p.get("activations", cls.activations), weights=p.get("weights", cls.weights),
                   method=p.get("method", cls.method), per_channel=bool(p.get("per_channel", cls.per_channel)),
                   symmetric=bool(p.get("symmetric", cls.symmetric)), block_size=p.get("block_size"),
                   adaround_iterations=int(p.get("adaround_iterations", cls.adaround_iterations)))
