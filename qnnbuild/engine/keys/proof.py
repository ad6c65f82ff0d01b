"""What a Dask worker checks before it builds under a client's key: that it would write the same key document's
toolchain. The client's document names the versions of the distributions the stage calls and the digest of the
stage's code as the client sees them; a worker with other versions (another virtualenv, an older image, a
checkout at another commit) would otherwise publish its own output under the client's key, and every machine
would then read that mislabelled entry.

Read fresh from this machine's files (versions.installed), never from a version remembered in this process: a
long-lived worker may have been upgraded underneath.
"""

from __future__ import annotations

from typing import Any

from qnnbuild.engine.keys.code import closure_digest
from qnnbuild.engine.keys.versions import installed
from qnnbuild.stages import KINDS


def disagreements(kind: str, params: dict[str, Any], document: dict[str, Any]) -> list[str]:
    """How this machine's toolchain for `kind` differs from the key document's: `onnxruntime-qnn 1.23.0 here,
    1.24.1 in the key`, or qnnbuild's code for the stage; empty when it would write the same document."""
    stage = KINDS[kind]
    wanted = {dist: document.get("tools", {}).get(dist) for dist in stage.tools_for(params)}
    wanted.update(document.get("libraries", {}))
    found = [f"{dist} {installed(dist)} here, {want} in the key" for dist, want in wanted.items()
             if installed(dist) != want]
    if document.get("code") != closure_digest(stage.run.__module__):
        found.append(f"qnnbuild's code for {kind} differs (another version or checkout of qnnbuild)")
    return found
