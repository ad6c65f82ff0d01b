"""TensorFlow sources for export — Keras (.keras/.h5), SavedModel, TFLite — converted to ONNX by tf2onnx, and
the conversion measured against the original (Keras/TF, or the LiteRT interpreter) before anything else.

tensorflow is imported only here, only by an export with a TF source (its import alone is ~4 s).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed

KINDS = ("keras", "saved_model", "tflite")
STATEFUL = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}
FIDELITY_SAMPLES = 4


@dataclass
class Converted:
    """The ONNX written by tf2onnx, and the original model as a function of a feed (NHWC as the source)."""

    inputs: list[tuple[str, list[int], Any]]  # name, fixed shape, numpy dtype (the source's)
    original: Callable[[dict[str, Any]], list[Any]]
    converter: str


def _tf() -> tuple[Any, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        raise StageFailed("a TensorFlow source needs the tensorflow extra: "
                          "pip install 'qnnbuild[tensorflow]'") from None
    return tf, tf2onnx


def tensorflow() -> Any:
    """tensorflow, or a StageFailed naming the extra to install."""
    return _tf()[0]


def load_keras(path: Path) -> Any:
    return _load_keras(_tf()[0], path)


def tflite_interpreter(path: Path) -> Any:
    _tf()
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path))


def _fixed(name: str, shape: list[int | None], given: dict[str, list[int]]) -> list[int]:
    if name in given:
        return list(given[name])
    if any(d is None for d in shape[1:]):
        raise StageFailed(f"input {name} has dynamic dimensions {shape}: give them in inputs: {{{name}: [...]}}")
    return [1 if d is None else int(d) for d in shape]  # a dynamic batch becomes 1


def convert(kind: str, path: Path, given: dict[str, list[int]], nchw: bool, opset: int, out: Path) -> Converted:
    tf, tf2onnx = _tf()
    converter = f"tf2onnx {tf2onnx.__version__}"
    with contextlib.redirect_stdout(io.StringIO()):
        if kind == "tflite":
            return _tflite(tf2onnx, path, given, nchw, opset, out, converter)
        if kind == "keras":
            return _keras(tf, tf2onnx, path, given, nchw, opset, out, converter)
        loaded = tf.saved_model.load(str(path))
        fn = loaded.signatures["serving_default"]
        spec_dict = fn.structured_input_signature[1]
        specs = [(name, _fixed(name, list(spec.shape), given), spec.dtype) for name, spec in sorted(spec_dict.items())]

        @tf.function(input_signature=[tf.TensorSpec(s, d, name=n) for n, s, d in specs])  # type: ignore[untyped-decorator]
        def wrapped(*args: Any) -> Any:
            return fn(**{name: arg for (name, _, _), arg in zip(specs, args, strict=True)})

        tf2onnx.convert.from_function(wrapped, input_signature=wrapped.input_signature, opset=opset,
                                      output_path=str(out), inputs_as_nchw=[n for n, _, _ in specs] if nchw else None)

        def run_saved(feed: dict[str, Any]) -> list[Any]:
            return [x.numpy() for x in tf.nest.flatten(fn(**feed))]

        return Converted([(n, s, d.as_numpy_dtype) for n, s, d in specs], run_saved, converter)


def _load_keras(tf: Any, path: Path) -> Any:
    try:
        return tf.keras.models.load_model(str(path), compile=False)
    except (TypeError, ValueError) as exc:
        cause = " ".join(str(exc).split(".")[0].split())
        raise StageFailed(f"{path.name}: Keras cannot load it here ({cause}); a subclassed model needs its Python "
                          "class: export it as a SavedModel (model.export(DIR)) and give saved_model: DIR") from None


def _keras(tf: Any, tf2onnx: Any, path: Path, given: dict[str, list[int]], nchw: bool, opset: int, out: Path,
           converter: str) -> Converted:
    """A functional model goes through tf2onnx's from_keras (its output names stay); any other (Sequential,
    whose Keras 3 graph from_keras cannot walk: KeyError 'keras_tensor_N') through a tf.function of the model."""
    model = _load_keras(tf, path)
    tensors = getattr(model, "inputs", None) or []
    specs = [(t.name.split(":")[0], _fixed(t.name.split(":")[0], list(t.shape), given), tf.as_dtype(t.dtype))
             for t in tensors]
    signature = [tf.TensorSpec(shape, dtype, name=name) for name, shape, dtype in specs]
    if not signature:
        raise StageFailed(f"{path.name}: the model declares no inputs; build it on a keras.Input or export it as a "
                          "SavedModel with a serving signature")
    nchw_names = [s.name for s in signature] if nchw else None

    def call(*args: Any) -> Any:
        return model(args[0] if len(args) == 1 else list(args), training=False)

    if type(model).__name__ == "Functional":
        tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=str(out),
                                   inputs_as_nchw=nchw_names)
    else:
        function = tf.function(call, input_signature=signature)
        tf2onnx.convert.from_function(function, input_signature=signature, opset=opset, output_path=str(out),
                                      inputs_as_nchw=nchw_names)
        converter += f" (through a tf.function: {type(model).__name__} model)"

    def run_keras(feed: dict[str, Any]) -> list[Any]:
        return [x.numpy() for x in tf.nest.flatten(call(*[feed[name] for name, _, _ in specs]))]

    return Converted([(n, s, d.as_numpy_dtype) for n, s, d in specs], run_keras, converter)


def _tflite(tf2onnx: Any, path: Path, given: dict[str, list[int]], nchw: bool, opset: int, out: Path,
            converter: str) -> Converted:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    ops = {d["op_name"] for d in interpreter._get_ops_details()}  # LiteRT's only op listing
    stateful = sorted(ops & STATEFUL)
    if stateful:
        raise StageFailed(f"{path.name}: stateful ops {', '.join(stateful)} cannot be converted to a QNN graph")
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    integer = [d["name"] for d in [*inputs, *outputs] if not np.issubdtype(d["dtype"], np.floating)]
    if integer:  # a quantized model with float I/O is dequantized on conversion; integer I/O is not a float model
        raise StageFailed(f"{path.name}: integer inputs/outputs ({', '.join(integer)}): a fully quantized .tflite is "
                          "not supported; give the float model (or one with float I/O)")
    specs = [(d["name"], _fixed(d["name"], [int(x) for x in d["shape"]], given), d["dtype"]) for d in inputs]
    try:  # from_tflite has no dequantize switch; the CLI's --dequantize goes through _convert_common
        tf2onnx.convert._convert_common(None, tflite_path=str(path), name=path.stem, continue_on_error=True,
                                        opset=opset, output_path=str(out), dequantize=True,
                                        inputs_as_nchw=[n for n, _, _ in specs] if nchw else None,
                                        outputs_as_nchw=None, shape_override=None, input_names=None,
                                        output_names=None, tensors_to_rename=None, initialized_tables=None,
                                        extra_opset=None, target=None)
    except Exception as exc:
        raise StageFailed(f"{path.name}: tf2onnx cannot convert it: {' '.join(str(exc).split())[:300]}") from None
    unmapped(out, path.name)
    for detail, (_, shape, _) in zip(inputs, specs, strict=True):
        interpreter.resize_tensor_input(detail["index"], shape)
    try:
        interpreter.allocate_tensors()
    except RuntimeError as exc:
        raise StageFailed(f"{path.name}: the LiteRT interpreter cannot run it: {exc}") from None

    def run_tflite(feed: dict[str, Any]) -> list[Any]:
        for detail in inputs:
            interpreter.set_tensor(detail["index"], feed[detail["name"]])
        interpreter.invoke()
        return [interpreter.get_tensor(d["index"]).copy() for d in outputs]

    return Converted([(n, s, d) for n, s, d in specs], run_tflite, converter)


def unmapped(onnx_path: Path, source: str) -> None:
    """tf2onnx leaves ops it cannot map (custom ops such as MediaPipe's Convolution2DTransposeBias) as foreign
    nodes; name them here rather than let onnxruntime fail later on a `TFL_*` node."""
    import onnx

    model = onnx.load(str(onnx_path))
    foreign = sorted({n.op_type for n in model.graph.node
                      if n.domain not in ("", "ai.onnx", "com.microsoft") or n.op_type.startswith("TFL_")})
    if foreign:
        raise StageFailed(f"{source}: op(s) tf2onnx cannot map to ONNX: {', '.join(foreign)}")


def fidelity(converted: Converted, onnx_path: Path, nchw: bool) -> dict[str, Any]:
    """The original and the converted model on the same seeded inputs: SQNR (dB) and max abs error per output."""
    import numpy as np
    import onnx

    from qnnbuild.toolchain.data import metrics
    from qnnbuild.toolchain.graph import onnxgraph
    from qnnbuild.toolchain.runtime import qnn

    model = onnx.load(str(onnx_path))  # fixed shapes first: tf2onnx keeps a dynamic batch dynamic
    fixed = {n: ([s[0], s[3], s[1], s[2]] if nchw and len(s) == 4 else s) for n, s, _ in converted.inputs}
    onnxgraph.fix_input_shapes(model, dict(zip([i.name for i in onnxgraph.graph_inputs(model)], fixed.values(),
                                               strict=True)))
    session = qnn.cpu_session(model.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    refs: list[list[Any]] = [[] for _ in names]
    gots: list[list[Any]] = [[] for _ in names]
    for i in range(FIDELITY_SAMPLES):
        rng = np.random.default_rng([7, i])
        feed = {n: rng.uniform(-1, 1, s).astype(d) for n, s, d in converted.inputs}
        # tf2onnx keeps the inputs' order; an NCHW input takes the same data transposed
        onnx_feed = {i.name: (v.transpose(0, 3, 1, 2) if nchw and v.ndim == 4 else v)
                     for i, v in zip(session.get_inputs(), feed.values(), strict=True)}
        for slot, (a, b) in enumerate(zip(converted.original(feed), session.run(names, onnx_feed), strict=True)):
            refs[slot].append(np.asarray(a, np.float64).reshape(np.shape(b)))
            gots[slot].append(np.asarray(b, np.float64))
    sqnr = {n: round(float(metrics.sqnr_db(np.stack(r), np.stack(g))), 2) for n, r, g in zip(names, refs, gots,
                                                                                         strict=True)}
    err = {n: float(np.max(np.abs(np.stack(r) - np.stack(g)))) for n, r, g in zip(names, refs, gots, strict=True)}
    shapes = {i.name: list(v.shape) for i, v in zip(session.get_inputs(), onnx_feed.values(), strict=True)}
    return {"fidelity_sqnr_db": sqnr, "max_abs_error": err, "shapes": shapes}
