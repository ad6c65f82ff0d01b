"""Stage keys: what determines a stage's output, and why a key changed.

key = sha256(canonical JSON of the key document). The document holds the kind, the implementation version,
the parameters with defaults filled in, the target, the digests (not paths, not mtimes) of every input, and
the versions of the tools the stage calls. Keeping the document (not just its digest) in the lock file lets
`status` say which of these changed. Names of stages are not in it: equal work is shared.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from qnnbuild import __version__
from qnnbuild.common.hashing import sha256_json

_versions: dict[str, str] = {}


def tool_version(dist: str) -> str:
    if dist not in _versions:
        from importlib.metadata import PackageNotFoundError, version

        try:
            _versions[dist] = version(dist)
        except PackageNotFoundError:
            _versions[dist] = "missing"
    return _versions[dist]


def tool_versions(dists: tuple[str, ...]) -> dict[str, str]:
    return {d: tool_version(d) for d in dists}


def _path_stamp() -> list[object]:
    """Installing, removing or upgrading a distribution adds, removes or renames its `.dist-info` folder, which
    changes the mtime of the site folder holding it: a stat per folder says whether versions may differ."""
    stamp: list[object] = []
    for entry in sys.path:
        if Path(entry).name not in ("site-packages", "dist-packages"):
            continue  # the working folder changes with every build; distributions live in the site folders
        try:
            st = Path(entry or ".").stat()
        except OSError:
            continue
        stamp.append([entry, st.st_mtime_ns, st.st_ino])
    return stamp


class VersionCache:
    """Distribution versions remembered across runs (importlib.metadata costs ~30 ms a run), trusted while no
    sys.path folder changed."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.stamp = _path_stamp()
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError):
            raw = {}
        if isinstance(raw, dict) and raw.get("stamp") == self.stamp and isinstance(raw.get("versions"), dict):
            for dist, value in raw["versions"].items():
                _versions.setdefault(dist, str(value))
        self.known = dict(_versions)

    def save(self) -> None:
        if _versions != self.known:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f"{self.file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"stamp": self.stamp, "versions": _versions}))
            tmp.replace(self.file)
            self.known = dict(_versions)


def environment() -> dict[str, Any]:
    """What the lock file records about where a build ran."""
    return {"qnnbuild": __version__, "python": platform.python_version(), "machine": platform.machine(),
            "system": platform.system()}


def key_document(kind: str, version: int, params: dict[str, Any], target: dict[str, Any] | None,
                 inputs: dict[str, str], files: dict[str, str], tools: dict[str, str], code: str) -> dict[str, Any]:
    """`code`: the digest of the stage's module and the qnnbuild modules it imports (engine.codekeys)."""
    return {"kind": kind, "version": version, "code": code, "params": params, "target": target, "inputs": inputs,
            "files": files, "tools": tools}


def key_of(document: dict[str, Any]) -> str:
    return sha256_json(document)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:12] if isinstance(value, str) and len(value) == 64 else text


def explain(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human reasons a key changed, most specific first: `parameter activations: 'uint8' → 'uint16'`."""
    words = {"params": "parameter", "inputs": "input", "files": "input file", "discovered": "input file",
             "tools": "tool", "target": "target"}
    reasons = []
    if old.get("kind") != new.get("kind"):
        reasons.append(f"kind {old.get('kind')} → {new.get('kind')}")
    if old.get("version") != new.get("version"):
        reasons.append(f"implementation version {old.get('version')} → {new.get('version')}")
    if old.get("code") != new.get("code"):
        reasons.append("qnnbuild's code for this stage changed")
    for section, word in words.items():
        before, after = _flat(old.get(section) or {}), _flat(new.get(section) or {})
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                if section in ("inputs", "files", "discovered"):
                    reasons.append(f"{word} {name} changed")
                else:
                    reasons.append(f"{word} {name}: {_short(before.get(name, '(unset)'))} → "
                                   f"{_short(after.get(name, '(unset)'))}")
    return reasons or ["key changed"]
