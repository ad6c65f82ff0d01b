"""ONNX files whose weights may live beside them (ONNX external data), written and carried as one.

A protobuf message cannot pass 2 GB, so a model of more than ~500 M float parameters cannot be one .onnx file;
and writing a model as one message holds a second, serialized copy of every weight in memory. So qnnbuild keeps
a large graph's weights in `<file>.data` beside it, which onnx writes tensor by tensor. Which graphs: an LLM's
(export decides, and every later stage keeps the form its input came in), and any graph whose weights pass
LARGE. Whoever copies such a file copies its data file with it: the .onnx names it, relative to its folder.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

LARGE = 1 << 30  # bytes of weights: above this a graph is written with external data whatever its kind
SMALLEST = 1024  # tensors under this many bytes stay inside the .onnx (shapes, scales, zero points)


def weight_bytes(model: Any) -> int:
    """The bytes of the model's initializers as stored (external or not)."""
    total = 0
    for init in model.graph.initializer:
        length = next((int(e.value) for e in init.external_data if e.key == "length"), None)
        total += length if length is not None else len(init.raw_data) or init.ByteSize()
    return total


def data_files(path: Path) -> list[Path]:
    """The external data files `path` refers to (none for a self-contained .onnx); read without the weights."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = {e.value for i in graph.initializer for e in i.external_data if e.key == "location"}
    return [path.parent / n for n in sorted(names)]


def remove(path: Path) -> None:
    """`path` and the data files it refers to (a scratch copy read back: an LLM's weights each time)."""
    if path.is_file():
        for data in data_files(path):
            data.unlink(missing_ok=True)
        path.unlink()


def is_external(path: Path) -> bool:
    return bool(data_files(path))


def save(model: Any, path: Path, *, external: bool | None = None) -> list[Path]:
    """Write `model` to `path`, its weights to `<path>.data` when `external` (None: when they pass LARGE); returns
    the files written (`path`, then the data file if any), so a caller need not read them back to know. Any
    earlier file of that name goes first: onnx appends to an existing data file. The weights leave `model` as
    they are written (onnx moves each tensor's bytes out), so `model` is spent afterwards when external."""
    import onnx

    data = path.with_name(path.name + ".data")
    for old in (path, data):
        old.unlink(missing_ok=True)
    if external is None:
        external = weight_bytes(model) > LARGE
    if external:  # onnx looks for an existing data file in the working directory, not beside `path`
        with contextlib.chdir(path.parent):
            onnx.save_model(model, path.name, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data.name, size_threshold=SMALLEST)
        return [path, data]
    onnx.save(model, str(path))
    return [path]


def load_data(model: Any, folder: Path) -> None:
    """Read into `model` the weights it keeps in data files in `folder` (a graph loaded without them, then cut
    down to the tensors a part needs: only those are read)."""
    from onnx import external_data_helper

    external_data_helper.load_external_data_for_model(model, str(folder))


def attach(path: Path, weights: Iterable[tuple[str, Any]]) -> list[str]:
    """The graph inputs of `path` named in `weights` (name, numpy array) become its initializers, their bytes
    written to `<path>.data` one tensor at a time; returns the inputs left without one. For a graph exported
    without its parameters: torch's exporter would otherwise hold a folded copy of every weight and a serialized
    one beside the model's own (its peak on SmolLM2-135M: benchmarks/export_phases.py)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    wanted = {i.name for i in model.graph.input}
    data = path.with_name(path.name + ".data")
    with data.open("wb") as out:
        for name, given in weights:
            if name not in wanted:
                continue
            array = np.ascontiguousarray(given)
            if array.nbytes < SMALLEST:
                model.graph.initializer.append(numpy_helper.from_array(array, name))
                continue
            tensor = model.graph.initializer.add(name=name, dims=array.shape,
                                                 data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                                 data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", out.tell()), ("length", array.nbytes)):
                tensor.external_data.add(key=key, value=str(value))
            out.write(array.data)
    given = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in given]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.save(model, str(path))
    return [i.name for i in inputs]


def place(source: Path, dest: Path) -> None:
    """`source` and its data files copied to `dest` (another name allowed; the data files keep theirs, which the
    .onnx holds). Copies, never links: onnx refuses a data file with a second hard link (a "hardlink attack"),
    onnxruntime a symbolic one, and a link to a store entry's file made by one stage made another stage's
    onnx.load of that entry fail."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for src, dst in [(source, dest), *((d, dest.parent / d.name) for d in data_files(source))]:
        if dst.resolve() != src.resolve():  # not a data file already beside the new name
            shutil.copyfile(src, dst)
