"""What every stage worker would import anyway, imported once by the fork server the workers are forked from
(engine/workers/process.py): onnx, numpy, onnxruntime and its quantizer (2.7 s of a 7.3 s MobileNetV2 quantize was this
import). No QNN library is loaded and no session opened here: QNN state leaks within a process, so each stage
still gets a process of its own, where QNN is first loaded."""

from __future__ import annotations

import importlib.util
from unittest import mock

import numpy  # noqa: F401
import onnx  # noqa: F401
import onnxruntime
import onnxruntime.quantization

_find_spec = importlib.util.find_spec
# onnxruntime.tools, which the QNN quantization config imports, imports torch (1.5 s of this module's 2.1 s) for
# infer_input_info, a torch export helper nothing here calls, whenever torch is installed: imported while torch
# looks absent, the server and its stages skip it (a stage that needs torch, a torch export, imports it itself)
with mock.patch.object(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else _find_spec(name, *a)):
    import onnxruntime.tools  # noqa: F401
from onnxruntime.quantization.execution_providers import qnn  # noqa: E402, F401
