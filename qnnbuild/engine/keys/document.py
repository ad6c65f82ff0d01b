"""Stage keys: what determines a stage's output, and why a key changed.

key = sha256(canonical JSON of the key document). The document holds the kind, the implementation version,
the parameters with defaults filled in, the target, the digests (not paths, not mtimes) of every input, and
the versions of the tools the stage calls. Keeping the document (not just its digest) in the lock file lets
`status` say which of these changed. Names of stages are not in it: equal work is shared. The recipe's name is,
for the kinds that name their outputs after it (context-binary): a deliverable's names follow its own recipe.
"""

from __future__ import annotations

import platform
from typing import Any

from qnnbuild.common.hashing import sha256_json
from qnnbuild.common.version import VERSION


def environment() -> dict[str, Any]:
    """What the lock file records about where a build ran."""
    return {"qnnbuild": VERSION, "python": platform.python_version(), "machine": platform.machine(),
            "system": platform.system()}


def key_document(kind: str, version: int, params: dict[str, Any], target: dict[str, Any] | None,
                 inputs: dict[str, str], files: dict[str, str], tools: dict[str, str], code: str) -> dict[str, Any]:
    """`code`: the digest of the stage's module and the qnnbuild modules it imports (engine.codekeys)."""
    return {"kind": kind, "version": version, "code": code, "params": params, "target": target, "inputs": inputs,
            "files": files, "tools": tools}


def key_of(document: dict[str, Any]) -> str:
    return sha256_json(document)


FOUND = ("discovered", "libraries")  # what a run reported (files it read, distributions it loaded), not declared
DIST = "dist:"  # a distribution among the entries a run reported (the rest are files it read)


def declared_of(document: dict[str, Any]) -> dict[str, Any]:
    """The key document without what runs reported: what is known before a stage runs."""
    return {k: v for k, v in document.items() if k not in FOUND}


def with_found(declared: dict[str, Any], files: dict[str, str], libraries: dict[str, str]) -> dict[str, Any]:
    """The declared document with the digests of the files a run read and the versions of the distributions
    whose modules were loaded in its process."""
    return {**declared, **({"discovered": files} if files else {}), **({"libraries": libraries} if libraries else {})}


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
             "tools": "tool", "libraries": "library", "target": "target"}
    reasons = []
    if old.get("kind") != new.get("kind"):
        reasons.append(f"kind {old.get('kind')} → {new.get('kind')}")
    if old.get("version") != new.get("version"):
        reasons.append(f"implementation version {old.get('version')} → {new.get('version')}")
    if old.get("code") != new.get("code"):
        reasons.append("qnnbuild's code for this stage changed")
    if old.get("recipe") != new.get("recipe"):
        reasons.append(f"recipe name (in its outputs' names) {old.get('recipe')} → {new.get('recipe')}")
    for section, word in words.items():
        if section in FOUND and not (old.get(section) and new.get(section)):
            continue  # not known before the declared key's first run: its declared part says why it changed
        before, after = _flat(old.get(section) or {}), _flat(new.get(section) or {})
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                if section in ("inputs", "files", "discovered"):
                    reasons.append(f"{word} {name} changed")
                else:
                    reasons.append(f"{word} {name}: {_short(before.get(name, '(unset)'))} → "
                                   f"{_short(after.get(name, '(unset)'))}")
    return reasons or ["key changed"]
