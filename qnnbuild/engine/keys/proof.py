"""What a Dask worker checks before it builds under a client's key: that it would write the same key document's
toolchain. The client's document names the versions of the distributions the stage calls and the digest of the
stage's code as the client sees them; a worker with other versions (another virtualenv, an older image, a
checkout at another commit) would otherwise publish its own output under the client's key, and every machine
would then read that mislabelled entry.

Read fresh from this machine's files, never from a version remembered in this process: a long-lived worker may
have been upgraded underneath.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from qnnbuild.engine.keys.code import closure_digest
from qnnbuild.stages import KINDS


def installed(dist: str) -> str:
    """The version of `dist` installed here now ("missing" when it is not: as the key documents say)."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


def disagreements(kind: str, params: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """How this machine's toolchain for `kind` differs from the key document's: `onnxruntime-qnn 1.23.0 here,
    1.24.1 in the key`, or qnnbuild's code for the stage; empty when it would write the same document."""
    found = []
    stage = KINDS[kind]
    for dist in stage.tools_for(params):
        want, have = document.get("tools", {}).get(dist), installed(dist)
        if want != have:
            found.append(f"{dist} {have} here, {want} in the key")
    for dist, want in document.get("libraries", {}).items():
        have = installed(dist)
        if want != have:
            found.append(f"{dist} {have} here, {want} in the key")
    if document.get("code") != closure_digest(stage.run.__module__):
        found.append(f"qnnbuild's code for {kind} differs (another version or checkout of qnnbuild)")
    return found
