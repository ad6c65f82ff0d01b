"""What every stage worker would import anyway, imported once by the fork server the workers are forked from
(engine/worker.py): onnx, numpy, onnxruntime and its quantizer (2.7 s of a 7.3 s MobileNetV2 quantize was this
import). No QNN library is loaded and no session opened here: QNN state leaks within a process, so each stage
still gets a process of its own, where QNN is first loaded."""

from __future__ import annotations

import numpy  # noqa: F401
import onnx  # noqa: F401
import onnxruntime
import onnxruntime.quantization  # noqa: F401
from onnxruntime.quantization.execution_providers import qnn  # noqa: F401
