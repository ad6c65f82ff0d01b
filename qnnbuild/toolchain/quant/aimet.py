"""Qualcomm's AIMET for ONNX (`aimet-onnx`, the optional extra `qnnbuild[aimet]`): cross-layer equalization,
AdaRound and sequential MSE, each ending in an ordinary QDQ model that the compile stage takes.

- CLE rescales consecutive convolutions so that one outlier channel no longer sets a whole tensor's scale.
  It runs on the fp32 model, and onnxruntime's own quantizer then quantizes the equalized model: the same
  figures as AIMET's simulation path, in a fraction of the time. AIMET silently replaces ReLU6 by ReLU, which
  changes what a ReLU6 network computes; the equalized model is therefore checked against the original.
- AdaRound (learned weight rounding) and SeqMSE (weight ranges by sequential MSE) need AIMET's quantization
  simulation: calibrate, optimize, then `to_onnx_qdq`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

from qnnbuild.errors import StageFailed
from qnnbuild.toolchain.quant.spec import QuantSpec

MIN_FIDELITY_DB = 60.0  # float rescaling keeps > 100 dB; a changed activation function falls far below
BITS = {"uint8": "int8", "int8": "int8", "uint16": "int16", "int16": "int16", "int4": "int4", "uint4": "int4"}


def _aimet() -> Any:
    try:
        logging.getLogger("Quant").setLevel(logging.WARNING)
        logging.getLogger("Utils").setLevel(logging.WARNING)
        import aimet_onnx
    except ImportError:
        raise StageFailed("technique: needs AIMET, the aimet extra: pip install 'qnnbuild[aimet]'") from None
    return aimet_onnx


def equalize(model: Any, samples: Any) -> tuple[Any, float]:
    """The model after AIMET's cross-layer equalization, and its output SQNR against the original (dB)."""
    import onnx
    from onnx import helper

    _aimet()
    from aimet_onnx.cross_layer_equalization import equalize_model

    equalized = onnx.ModelProto()
    equalized.CopyFrom(model)
    for node in equalized.graph.node:  # AIMET treats a Conv without an explicit group as unsupported
        if node.op_type == "Conv" and not any(a.name == "group" for a in node.attribute):
            node.attribute.append(helper.make_attribute("group", 1))
    with contextlib.redirect_stdout(io.StringIO()):
        equalize_model(equalized)
    return equalized, _fidelity(model, equalized, samples)


def _fidelity(original: Any, changed: Any, samples: Any) -> float:
    import numpy as np

    from qnnbuild.toolchain.data import metrics
    from qnnbuild.toolchain.runtime import qnn

    a, b = qnn.cpu_session(original.SerializeToString()), qnn.cpu_session(changed.SerializeToString())
    worst = float("inf")
    for i in range(min(4, len(samples))):
        for x, y in zip(a.run(None, samples[i]), b.run(None, samples[i]), strict=True):
            worst = min(worst, metrics.sqnr_db(np.asarray(x), np.asarray(y)))
    return worst


def check_equalized(fidelity_db: float, model: Any) -> None:
    if fidelity_db >= MIN_FIDELITY_DB:
        return
    relu6 = sum(n.op_type == "Clip" for n in model.graph.node)
    why = f" (AIMET replaces ReLU6 with ReLU; the model has {relu6} Clip node(s))" if relu6 else ""
    raise StageFailed(f"cross-layer equalization changed what the model computes: its outputs are "
                      f"{fidelity_db:.1f} dB from the original's, below {MIN_FIDELITY_DB:.0f} dB{why}")


Progress = Callable[..., None]  # StageRun.progress(done, total, unit, phase)
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers AdaRound and SeqMSE optimize


def simulate(model: Any, samples: Any, spec: QuantSpec, techniques: list[str],
             progress: Progress = lambda *a, **k: None) -> Any:
    """AIMET's quantization simulation with AdaRound and/or SeqMSE applied → a QDQ ModelProto. Reports layers
    optimized of the weighted layers (counted from AIMET's own log records), then samples calibrated."""
    aimet_onnx = _aimet()
    inputs = [samples[i] for i in range(len(samples))]
    sim = aimet_onnx.QuantizationSimModel(model, param_type=BITS[spec.weights],
                                          activation_type=BITS[spec.activations],
                                          providers=["CPUExecutionProvider"])
    inits = {i.name for i in model.graph.initializer}
    layers = sum(n.op_type in WEIGHTED and any(i in inits for i in n.input[1:2]) for n in model.graph.node)
    with contextlib.redirect_stdout(io.StringIO()):
        if "seqmse" in techniques:
            with _counted("SeqMse", "Computed optimal parameter encodings for ops: ", layers, "seqmse", progress):
                aimet_onnx.apply_seq_mse(sim, inputs)
        if "adaround" in techniques:
            with _counted("Quant", "Started Optimizing weight rounding of module: ", layers, "adaround", progress):
                aimet_onnx.apply_adaround(sim, inputs, num_iterations=spec.adaround_iterations)
        with aimet_onnx.compute_encodings(sim):
            for done, x in enumerate(inputs, 1):
                sim.session.run(None, x)
                progress(done, len(inputs), "samples", "AIMET calibration")
        return sim.to_onnx_qdq()


@contextlib.contextmanager
def _counted(area: str, prefix: str, total: int, phase: str, progress: Progress) -> Iterator[None]:
    """Layers done of `total`, counted from AIMET's `area` logger: a record starting with `prefix` names the
    layers (comma-separated) it just optimized."""
    logger, done = logging.getLogger(area), [0]

    class Counter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith(prefix):
                done[0] += len(message[len(prefix):].split(","))
                progress(min(done[0], total), total, "layers", phase)

    counter, level, propagate = Counter(), logger.level, logger.propagate
    logger.addHandler(counter)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the counter hears INFO; the log file does not get it
    progress(0, total, "layers", phase)
    try:
        yield
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
        logger.propagate = propagate
