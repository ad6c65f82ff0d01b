"""Calibration ranges recorded while a graph runs, for onnxruntime's quantizer to read from its calibration cache.

onnxruntime's MinMax calibrator loads the model once more, writes a copy with every activation as an output and
opens a session on that: beside the quantizer's own copy, three copies of an LLM's weights in one process (and
the samples themselves kept until it runs). Here the session that runs the graph anyway (an LLM's fp32 graphs
reading the calibration text, which also records the real caches the decode graph sees) is opened on the same
graph with those activations as extra outputs, from a copy of the .onnx without its weights (onnxruntime reads
them from the data file where it lies), and each run's tensors are reduced to a min and a max at once. The
ranges are MinMax's: the min and max of every float tensor a node reads or writes (a superset of those the
quantizer asks for), over every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FLOATS = (1, 10)  # TensorProto.FLOAT, FLOAT16
Ranges = dict[str, tuple[float, float]]  # tensor → (min, max)


def tensors_to_record(model: Any) -> list[str]:
    """Every float tensor a node reads or writes that is not a weight: what MinMax calibrates, for any op types
    the quantizer then picks (onnxruntime's own selection, with every op type)."""
    typed = {v.name: v for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    weights = {i.name for i in model.graph.initializer}
    found = dict.fromkeys(name for node in model.graph.node for name in [*node.input, *node.output]
                          if name in typed and name not in weights
                          and typed[name].type.tensor_type.elem_type in FLOATS)
    return list(found)


class RangeSession:
    """An onnxruntime CPU session on `path` that answers like a plain one (its own outputs) and keeps the min
    and max of every recorded tensor, graph inputs included, over all its runs."""

    def __init__(self, path: Path) -> None:
        import onnx
        from onnx import helper

        from qnnbuild.toolchain.runtime import qnn

        model = onnx.load(str(path), load_external_data=False)
        outputs = [o.name for o in model.graph.output]
        inputs = {i.name for i in model.graph.input}
        recorded = tensors_to_record(model)
        self.recorded = set(recorded)  # looked up for every tensor of every run
        extra = [n for n in recorded if n not in inputs and n not in outputs]
        model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in extra)
        self.session = qnn.cpu_session(model.SerializeToString(), external_folder=path.parent)
        del model
        self.width = len(outputs)  # the graph's own outputs come first
        self.names = [*outputs, *extra]
        self.ranges: Ranges = {}

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def run(self, _: None, feeds: dict[str, Any]) -> list[Any]:
        values = self.session.run(None, feeds)
        for name, value in [*feeds.items(), *zip(self.names, values, strict=True)]:
            if name in self.recorded:
                self._widen(name, value)
        return list(values[:self.width])

    def _widen(self, name: str, value: Any) -> None:
        if value.dtype.kind != "f" or not value.size:
            return
        low, high = float(value.min()), float(value.max())
        old = self.ranges.get(name)
        self.ranges[name] = (low, high) if old is None else (min(old[0], low), max(old[1], high))


def write_cache(ranges: Ranges, path: Path) -> None:
    """`ranges` as onnxruntime's calibration cache (MinMax), which quantize_static reads instead of
    calibrating."""
    import numpy as np
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    data = {name: TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
            for name, (low, high) in sorted(ranges.items())}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)
