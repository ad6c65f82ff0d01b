"""Samples loaded one at a time from a synthetic, .npy/.npz or image source (what `calibration.samples_for`
returns for anything but text), with their labels where the source has them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qnnbuild.errors import StageFailed

if TYPE_CHECKING:
    import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
INTEGER_RANGE = (0, 255)  # synthetic integer inputs: bytes, unless `ranges` says otherwise

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
