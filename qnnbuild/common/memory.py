"""Handing freed memory back to the system between the heavy steps of a stage.

glibc keeps freed heap pages for reuse; after a model's protobuf (hundreds of MB for an LLM) is dropped, the
process still holds them, and the next copy is allocated beside them. A stage's peak RSS is then the sum of
what it once held rather than what it holds (measured on SmolLM2-135M's export: benchmarks/llm_memory.py).
"""

from __future__ import annotations

import ctypes
import functools
import gc
from typing import Any


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim() -> None:
    """Collect garbage, then return the heap's free pages to the system (a no-op without glibc)."""
    gc.collect()
    release = _malloc_trim()
    if release is not None:
        release(0)
