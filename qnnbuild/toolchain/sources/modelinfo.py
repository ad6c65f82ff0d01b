"""What a model file says about its inputs, read without building it: the source kind (onnx, tflite, keras,
saved_model, hf), each input's name, shape (None where dynamic) and dtype, and for a Hugging Face folder the
task its architecture implies. `qnnbuild init` writes a first recipe from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qnnbuild.errors import UsageError

HF_TASKS = (("ForCausalLM", "causal-lm"), ("ForSequenceClassification", "sequence-classification"),
            ("ForMaskedLM", "masked-lm"), ("ForImageClassification", "image-classification"))


@dataclass
class Input:
    name: str
    shape: list[int | None]
    dtype: str  # numpy's name: float32, int64, ...


@dataclass
class ModelInfo:
    source: str  # the export parameter: onnx | tflite | keras | saved_model | hf
    inputs: list[Input]
    task: str = ""  # hf only
    config: dict[str, Any] = field(default_factory=dict)  # hf only: config.json


def read(path: Path) -> ModelInfo:
    """The model at `path`; refuses what qnnbuild cannot build from, naming what it accepts, and a file its
    reader cannot parse (a truncated download, another format under the name), naming the file."""
    try:
        return _read(path)
    except UsageError:
        raise
    except Exception as exc:  # each reader raises its own (protobuf's DecodeError, flatbuffers, h5py, json)
        raise UsageError(f"{path}: cannot be read as a model ({type(exc).__name__}: {exc})") from exc


def _read(path: Path) -> ModelInfo:
    if path.is_dir() and (path / "config.json").is_file():
        return _hf(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return ModelInfo("saved_model", _saved_model(path))
    if path.suffix == ".onnx":
        return ModelInfo("onnx", _onnx(path))
    if path.suffix == ".tflite":
        return ModelInfo("tflite", _tflite(path))
    if path.suffix in (".keras", ".h5"):
        return ModelInfo("keras", _keras(path))
    raise UsageError(f"{path}: not a model qnnbuild builds from: give an .onnx, .tflite, .keras or .h5 file, a "
                     "SavedModel folder (saved_model.pb) or a Hugging Face folder (config.json)")


def _onnx(path: Path) -> list[Input]:
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    return [Input(v.name, [d.dim_value if d.dim_value > 0 else None for d in v.type.tensor_type.shape.dim],
                  str(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)))
            for v in graph.input if v.name not in constants]


def _tflite(path: Path) -> list[Input]:
    from qnnbuild.toolchain.sources import tfconvert

    interpreter = tfconvert.tflite_interpreter(path)
    return [Input(d["name"], [int(s) if s > 0 else None for s in d["shape_signature"]], d["dtype"].__name__)
            for d in interpreter.get_input_details()]


def _keras(path: Path) -> list[Input]:
    from qnnbuild.toolchain.sources import tfconvert

    model = tfconvert.load_keras(path)
    return [Input(t.name.split(":")[0], list(t.shape), str(t.dtype.name if hasattr(t.dtype, "name") else t.dtype))
            for t in model.inputs]


def _saved_model(path: Path) -> list[Input]:
    from qnnbuild.toolchain.sources import tfconvert

    loaded = tfconvert.tensorflow().saved_model.load(str(path))
    signature = loaded.signatures["serving_default"]
    return [Input(name, [int(d) if d is not None else None for d in spec.shape], spec.dtype.name)
            for name, spec in sorted(signature.structured_input_signature[1].items())]


def _hf(path: Path) -> ModelInfo:
    config = json.loads((path / "config.json").read_text())
    architecture = next(iter(config.get("architectures") or [""]))
    task = next((t for suffix, t in HF_TASKS if architecture.endswith(suffix)), "")
    if config.get("model_type") in ("vit", "deit", "beit", "dinov2") and not task:
        task = "feature-extraction"
    task = task or "feature-extraction"
    if config.get("model_type") in ("vit", "deit", "beit", "dinov2", "convnext", "resnet") or \
            task == "image-classification":
        size = int(config.get("image_size", 224))
        inputs = [Input("pixel_values", [1, config.get("num_channels", 3), size, size], "float32")]
    elif config.get("model_type") == "whisper":
        inputs = [Input("input_features", [1, int(config.get("num_mel_bins", 80)), 3000], "float32")]
    else:
        inputs = [Input("input_ids", [1, None], "int64"), Input("attention_mask", [1, None], "int64")]
        if int(config.get("type_vocab_size", 0)) > 1:
            inputs.append(Input("token_type_ids", [1, None], "int64"))
    return ModelInfo("hf", inputs, task, config)
