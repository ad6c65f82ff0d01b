"""Sample sources for calibration and validation: synthetic, a folder of .npy/.npz, a folder of images.

A source is indexable and loads one sample at a time, so memory does not grow with the number of samples
(onnxruntime's collectors are fed in strides; see the quantize stage).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qnnbuild.errors import StageFailed
from qnnbuild.toolchain.data.textdata import SCHEMA as TEXT_SCHEMA

if TYPE_CHECKING:
    import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

RANGES_HELP = ("input name → [low, high]: uniform values in that range (integers inclusive). Default: a "
               "standard normal for float inputs, 0..255 for integer inputs (bytes, pixels, small vocabularies)")
INTEGER_RANGE = (0, 255)

LABELS_HELP = "CSV `file,label` (file relative to dir, label a class index), one row per sample file"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "additionalProperties": False,
    "properties": {
        "synthetic": {"type": "object", "additionalProperties": False,
                      "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 16},
                                     "seed": {"type": "integer", "default": 0},
                                     "ranges": {"type": "object", "description": RANGES_HELP,
                                                "additionalProperties": {"type": "array", "items": {"type": "number"},
                                                                         "minItems": 2, "maxItems": 2}}}},
        "text": TEXT_SCHEMA,
        "npy": {"type": "object", "additionalProperties": False, "required": ["dir"],
                "properties": {"dir": {"type": "string"}, "count": {"type": "integer", "minimum": 1},
                               "labels": {"type": "string", "description": LABELS_HELP}}},
        "images": {"type": "object", "additionalProperties": False, "required": ["dir"],
                   "properties": {
                       "dir": {"type": "string"},
                       "count": {"type": "integer", "minimum": 1},
                       "labels": {"type": "string", "description": LABELS_HELP + "; without it, one subfolder "
                                  "per class (ImageFolder: class index = sorted folder name)"},
                       "resize": {"type": "integer", "minimum": 1,
                                  "description": "shorter side before the center crop (default: crop size)"},
                       "mean": {"type": "array", "items": {"type": "number"}, "default": [0.485, 0.456, 0.406]},
                       "std": {"type": "array", "items": {"type": "number"}, "default": [0.229, 0.224, 0.225]},
                       "scale": {"type": "number", "default": 0.00392156862745098,
                                 "description": "pixel multiplier before mean/std (1/255)"},
                       "layout": {"enum": ["NCHW", "NHWC"], "default": "NCHW"},
                       "channels": {"enum": ["RGB", "BGR"], "default": "RGB"},
                   }},
    },
}


def files_of(calibration: dict[str, Any], prefix: str) -> dict[str, str]:
    """The folder (and labels file) a calibration spec reads, as file inputs (their content enters the key)."""
    if "text" in calibration:
        return {f"{prefix}.text.{k}": calibration["text"][k] for k in ("file", "tokenizer") if k in calibration["text"]}
    for kind in ("npy", "images"):
        if kind in calibration:
            found = {f"{prefix}.{kind}.dir": calibration[kind]["dir"]}
            if "labels" in calibration[kind]:
                found[f"{prefix}.{kind}.labels"] = calibration[kind]["labels"]
            return found
    return {}


class Source(Protocol):
    """What every data source gives: sample i as {input name: array}, and labels when it has them."""

    labels: list[int] | None
    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def samples_for(spec: dict[str, Any], files: dict[str, Path], model_folder: Path, prefix: str = "") -> Source:
    """The samples a stage's calibration/data `spec` describes, shaped for the model's inputs (its io.json);
    `prefix` picks the spec's own file inputs (see files_of) when a stage has several specs."""
    import json

    io = json.loads((model_folder / "io.json").read_text())
    mine = {name: p for name, p in files.items() if name.startswith(prefix)}
    if "text" in spec:
        from qnnbuild.toolchain.data.textdata import TextSamples

        text = next(p for n, p in mine.items() if n.endswith(".text.file"))
        carried = model_folder / "preprocessing" / "tokenizer.json"  # an hf: source's (stages.base.PREPROCESSING)
        tokenizer = next((p for n, p in mine.items() if n.endswith(".text.tokenizer")), carried)
        if not tokenizer.is_file():
            raise StageFailed("text data needs a tokenizer: give text: {tokenizer: tokenizer.json} (the model's "
                              "source is not an hf: folder, which would carry one)")
        return TextSamples(spec["text"], io["inputs"], text, tokenizer)
    folder = next((p for name, p in mine.items() if name.endswith(".dir")), None)
    labels = next((p for name, p in mine.items() if name.endswith(".labels")), None)
    return Samples(spec, io["inputs"], folder, labels)


def evenly(paths: list[Path], count: int) -> list[Path]:
    """`count` of the sorted paths, spread over all of them: in a folder sorted by class, the first N would
    all be one class."""
    if count >= len(paths):
        return paths
    step = len(paths) / count
    return [paths[int(i * step)] for i in range(count)]


def read_labels(csv_path: Path, folder: Path, paths: list[Path]) -> list[int]:
    """The class index of each path from a `file,label` CSV (an optional header row is skipped)."""
    import csv

    table: dict[str, int] = {}
    with csv_path.open(newline="") as fh:
        for line, row in enumerate(csv.reader(fh), 1):
            if not row or (line == 1 and row[-1].strip().lower() == "label"):
                continue
            if len(row) != 2 or not row[1].strip().lstrip("-").isdigit():
                raise StageFailed(f"{csv_path}:{line}: expected `file,label` with an integer label, got {row}")
            table[Path(row[0].strip()).as_posix()] = int(row[1])
    missing = [p.relative_to(folder).as_posix() for p in paths if p.relative_to(folder).as_posix() not in table]
    if missing:
        raise StageFailed(f"{csv_path}: no label for {', '.join(missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return [table[p.relative_to(folder).as_posix()] for p in paths]


def folder_labels(folder: Path, paths: list[Path]) -> tuple[list[int] | None, list[str]]:
    """ImageFolder: every image in a subfolder named for its class; class index = sorted folder name."""
    tops = [p.relative_to(folder).parts for p in paths]
    if not tops or any(len(t) < 2 for t in tops):
        return None, []
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    index = {name: i for i, name in enumerate(classes)}
    return [index[t[0]] for t in tops], classes


def with_batch(array: np.ndarray, shape: list[int]) -> np.ndarray:
    """`array` with the leading batch dimension of 1 added when only that is missing."""
    return array[None] if list(array.shape) == list(shape[1:]) and shape and shape[0] == 1 else array


class Samples:
    """Sample i of a source, as {input name: array}, loaded on demand."""

    def __init__(self, spec: dict[str, Any], inputs: list[dict[str, Any]], folder: Path | None,
                 labels: Path | None = None) -> None:
        self.inputs = inputs
        self.kind = next(iter(spec))
        self.spec = spec[self.kind]
        self.paths: list[Path] = []
        self.labels: list[int] | None = None  # the class index of each sample, when the source has labels
        self.classes: list[str] = []
        if self.kind == "synthetic":
            self.count = int(self.spec.get("count", 16))
            unknown = sorted(set(self.spec.get("ranges", {})) - {i["name"] for i in inputs})
            if unknown:
                raise StageFailed(f"synthetic ranges name inputs the model does not have: {', '.join(unknown)} "
                                  f"(inputs: {', '.join(i['name'] for i in inputs)})")
        else:
            if folder is None:
                raise StageFailed(f"{self.kind} calibration needs a folder")
            suffixes = {".npy", ".npz"} if self.kind == "npy" else IMAGE_SUFFIXES
            self.paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes)
            if not self.paths:
                raise StageFailed(f"{folder}: no {' or '.join(sorted(suffixes))} files")
            self.paths = evenly(self.paths, self.spec.get("count", len(self.paths)))
            self.count = len(self.paths)
            if labels is not None:
                self.labels = read_labels(labels, folder, self.paths)
            elif self.kind == "images":
                self.labels, self.classes = folder_labels(folder, self.paths)
            if self.kind == "images" and len(inputs) != 1:
                raise StageFailed("image calibration needs a model with exactly one input")

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        import numpy as np

        if self.kind == "synthetic":
            rng = np.random.default_rng([int(self.spec.get("seed", 0)), index])
            return {i["name"]: self._synthetic(rng, i) for i in self.inputs}
        if self.kind == "npy":
            return self._npy(self.paths[index])
        return {self.inputs[0]["name"]: self._image(self.paths[index])}

    def _synthetic(self, rng: np.random.Generator, spec: dict[str, Any]) -> np.ndarray:
        """Integer inputs are indices or codes (a normal draw cast to int is nearly all 0 and ±1, which left a
        byte model's calibration blind to the values it sees); floats are a standard normal unless ranged."""
        import numpy as np

        dtype, shape = np.dtype(spec["dtype"]), spec["shape"]
        bounds = self.spec.get("ranges", {}).get(spec["name"])
        values: np.ndarray
        if dtype == np.bool_:
            values = rng.integers(0, 2, shape)
        elif dtype.kind in "iu":
            low, high = bounds or INTEGER_RANGE
            values = rng.integers(int(low), int(high), shape, endpoint=True)
        elif bounds:
            values = rng.uniform(bounds[0], bounds[1], shape)
        else:
            values = rng.standard_normal(shape)
        return values.astype(dtype)

    def _conform(self, name: str, array: np.ndarray, spec: dict[str, Any], source: Path) -> np.ndarray:
        shape = list(spec["shape"])
        array = with_batch(array, shape)
        if list(array.shape) != shape:
            raise StageFailed(f"{source}: {name} has shape {list(array.shape)}, the model wants {shape}")
        return array.astype(spec["dtype"])

    def _npy(self, path: Path) -> dict[str, np.ndarray]:
        import numpy as np

        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                missing = [i["name"] for i in self.inputs if i["name"] not in z]
                if missing:
                    raise StageFailed(f"{path}: no array named {', '.join(missing)}")
                return {i["name"]: self._conform(i["name"], z[i["name"]], i, path) for i in self.inputs}
        if len(self.inputs) != 1:
            raise StageFailed(f"{path}: a model with several inputs needs .npz files with one array per input")
        spec = self.inputs[0]
        return {spec["name"]: self._conform(spec["name"], np.load(path, allow_pickle=False), spec, path)}

    def _image(self, path: Path) -> np.ndarray:
        import numpy as np
        from PIL import Image

        spec, shape = self.spec, self.inputs[0]["shape"]
        nchw = spec.get("layout", "NCHW") == "NCHW"
        height, width = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
        with Image.open(path) as img:
            rgb = img.convert("RGB")
        short = spec.get("resize", min(height, width))
        scale = short / min(rgb.size)
        rgb = rgb.resize((max(width, round(rgb.width * scale)), max(height, round(rgb.height * scale))),
                         Image.Resampling.BILINEAR)
        left, top = (rgb.width - width) // 2, (rgb.height - height) // 2
        pixels = np.asarray(rgb.crop((left, top, left + width, top + height)), dtype=np.float32)
        if spec.get("channels", "RGB") == "BGR":
            pixels = pixels[..., ::-1]
        mean = np.array(spec.get("mean", [0.485, 0.456, 0.406]), np.float32)
        std = np.array(spec.get("std", [0.229, 0.224, 0.225]), np.float32)
        pixels = (pixels * np.float32(spec.get("scale", 1 / 255)) - mean) / std
        if nchw:
            pixels = pixels.transpose(2, 0, 1)
        return pixels[None].astype(self.inputs[0]["dtype"])
