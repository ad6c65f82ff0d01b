"""The one way qnnbuild replaces a file: written whole under a unique name beside it, flushed to disk, then
renamed over it. A reader (another run, the console, a shard's parent) sees the old bytes or the new, never a
half; a writer killed mid-way leaves a stray temporary (`.NAME.*.tmp`), never a torn file. The unique name lets
two writers race without writing into each other's temporary."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that becomes `path` when the block ends without an error (and is removed when it does not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with tmp.open("wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as fh:
        fh.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: object, *, sort_keys: bool = True, indent: int | None = 1) -> None:
    """`sort_keys=False` where a mapping's order is data (a plan's `inputs:` bind a model's arguments)."""
    write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")
