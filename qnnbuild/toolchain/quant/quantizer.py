"""onnxruntime's static quantizer with its QNN configuration, fed one sample at a time, calibrating once.

Its calibrators keep every sample's intermediate tensors until the end, so memory grows with the calibration
set; we feed them in strides of at most STRIDE samples (onnxruntime's CalibStridedMinMax hook, which merges
ranges or histograms between strides) from a source that loads one sample at a time. The ranges go to
onnxruntime's calibration cache, so quantizing again with other overrides (automatic mixed precision) does
not calibrate again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.toolchain.data.calibration import Source
from qnnbuild.toolchain.quant.spec import QTYPES, QuantSpec

STRIDE = 16


def stride_for(count: int) -> int:
    """The largest stride ≤ STRIDE dividing count (onnxruntime requires it to divide the set); 1 for none."""
    return max((d for d in range(1, min(STRIDE, count) + 1) if count % d == 0), default=1)


class FeedList:
    """A calibration Source over feeds already in memory."""

    labels: list[int] | None = None
    classes: list[str] = []  # noqa: RUF012 - read-only, like Samples.classes

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self.feeds = feeds

    def __len__(self) -> int:
        return len(self.feeds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.feeds[index]


EMPTY = FeedList([])  # no samples: the ranges come from a calibration cache already written


class _Reader:
    """onnxruntime's CalibrationDataReader protocol, plus the range hooks its strided calibration uses."""

    def __init__(self, samples: Source) -> None:
        self.samples = samples
        self.start, self.end, self.next = 0, len(samples), 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end, self.next = start_index, end_index, start_index

    def get_next(self) -> dict[str, Any] | None:
        if self.next >= self.end:
            return None
        self.next += 1
        return self.samples[self.next - 1]

    def rewind(self) -> None:
        self.next = self.start


def _block_wise(qdq: Path, fp32: Path, block: int | None, say: Callable[[str], None]) -> None:
    """4-bit MatMul weights per channel (`per_channel`) or per block (`block_size`), in QNN's LPBQ form."""
    from qnnbuild.toolchain.quant import blockwise

    converted, kept = blockwise.convert_file(qdq, fp32, block)
    if block and not converted:
        raise StageFailed(f"block_size {block}: no 4-bit MatMul weight to make block-wise (block_size needs "
                          "weights: int4 and MatMul layers)")
    if converted:
        form = f"block-wise, block {block}" if block else "per channel"
        say(f"4-bit MatMul weights {form} (QNN's LPBQ form): {len(converted)}"
            + (f"; {len(kept)} per tensor, their rows not a multiple of {block}: {', '.join(kept[:5])}"
               if kept else ""))


def _run(model: Path, out: Path, config: Any, external: bool, cache: Path) -> None:
    """onnxruntime's quantize_static with the QNN configuration `config`, writing `out` (with a data file when
    `external`), in `cache`'s folder: onnx refuses to write a data file whose name exists in the *working*
    directory (not the output's folder), and a stage's folder held the prefill graph's when decode's came."""
    from onnxruntime.quantization import quantize_static

    for old in (out, out.with_name(out.name + ".data")):  # onnxruntime would append to a data file left there
        old.unlink(missing_ok=True)
    try:
        with contextlib.chdir(cache.parent):
            quantize_static(model.absolute(), str(out.absolute()), config.calibration_data_reader,
                            calibrate_method=config.calibrate_method, quant_format=config.quant_format,
                            activation_type=config.activation_type, weight_type=config.weight_type,
                            op_types_to_quantize=config.op_types_to_quantize,
                            nodes_to_quantize=config.nodes_to_quantize, nodes_to_exclude=config.nodes_to_exclude,
                            per_channel=config.per_channel, reduce_range=config.reduce_range,
                            use_external_data_format=external or config.use_external_data_format,
                            calibration_providers=config.calibration_providers,
                            extra_options=config.extra_options, calibration_cache_path=cache.absolute())
    except (ValueError, RuntimeError, KeyError) as exc:
        raise StageFailed(f"onnxruntime.quantization failed: {exc}") from None


def make(model: Path, out: Path, samples: Source, spec: QuantSpec, cache: Path,
         say: Callable[[str], None] = lambda _: None) -> Callable[[dict[str, Any]], Path]:
    """quantize_with(overrides) → the QDQ model path; ranges are calibrated on the first call and read from
    onnxruntime's calibration cache after that (automatic precision quantizes once per step). With
    `block_size`, 4-bit MatMul weights then become block-wise (toolchain/quant/blockwise.py)."""
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    from qnnbuild.toolchain.graph import onnxfile

    qtypes = {name: getattr(QuantType, "Q" + name[0].upper() + name[1:].replace("int", "Int")) for name in QTYPES}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    # onnxruntime's quantize_static writes `<model>-inferred.onnx` beside its input and deletes it: given a
    # published store entry, two quantize stages of one export running together deleted each other's file. It
    # reads a private link (or copy) beside the calibration cache instead.
    private = cache.parent / "quantizer-input.onnx"
    onnxfile.place(model, private)  # with its weights file, if it has one
    model_path = private.absolute()
    external = onnxfile.is_external(model)  # the output keeps its input's form

    def quantize_with(overrides: dict[str, Any]) -> Path:
        """overrides: tensor → {type, symmetric} (the recipe's syntax) or a list of per-channel dicts that
        also fix scale and zero_point (an encodings file)."""
        ort_overrides = {name: [{"quant_type": qtypes[e["type"]], **{k: v for k, v in e.items() if k != "type"}}
                                for e in (o if isinstance(o, list) else [o])]
                         for name, o in overrides.items()}
        config = get_qnn_qdq_config(
            str(model_path), _Reader(samples), calibrate_method=methods[spec.method],
            activation_type=qtypes[spec.activations], weight_type=qtypes[spec.weights],
            per_channel=spec.per_channel, init_overrides=ort_overrides or None,
            weight_symmetric=spec.symmetric, stride=stride_for(len(samples)))
        _run(model_path, out, config, external, cache)
        if spec.weights == "int4" and (spec.block_size or spec.per_channel):
            _block_wise(out, private, spec.block_size, say)
        return out

    return quantize_with


