"""What the shared cache needs of fsspec and the storage behind it: a URL shown without its secrets, the
protocols of a filesystem, a conditional create on a folder, and the errors a flaky server raises."""

from __future__ import annotations

import contextlib
import urllib.parse
from pathlib import Path
from typing import Any


def redact(url: str) -> str:
    """The URL without user:password@ (and without a query, where some schemes put tokens)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def protocols(fs: Any) -> tuple[str, ...]:
    proto = getattr(fs, "protocol", ())
    return (proto,) if isinstance(proto, str) else tuple(proto)


def link_create(path: Path, body: bytes) -> bool:
    """Create `path` with `body` only if it does not exist, atomically: written whole under a temporary name,
    then hard-linked into place (link(2) fails when the name exists). fsspec's local "create" mode writes a
    temporary file and renames it over the name, so two racing writers both "won" (found by a test)."""
    import os
    import uuid

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(body)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def storage_errors() -> tuple[type[Exception], ...]:
    """What a flaky network or storage server raises through fsspec: OS and timeout errors (s3fs maps most S3
    answers to them), and botocore's and aiohttp's own when they come through unmapped."""
    import asyncio

    found: list[type[Exception]] = [OSError, TimeoutError, asyncio.TimeoutError]
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError, ClientError

        found += [BotoCoreError, ClientError]
    with contextlib.suppress(ImportError):
        from aiohttp import ClientError as HttpError

        found.append(HttpError)
    return tuple(found)
