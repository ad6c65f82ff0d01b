"""An instance's key and its stored output's digest: what `status`, the no-op check, doit's up-to-date check
and a run all agree on. The target is resolved here, once, for the key document and the stage alike.

It reads the store through `Entries`, a few look-ups, so keys stay below the store in the engine's floors.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from qnnbuild.common.hashing import StatCache
from qnnbuild.engine.keys.code import CodeDigests
from qnnbuild.engine.keys.document import DIST, key_document, key_of, with_found
from qnnbuild.engine.keys.versions import tool_version, tool_versions
from qnnbuild.engine.recipe.plan import Instance, Plan
from qnnbuild.stages import KINDS
from qnnbuild.toolchain.runtime.targets import TARGETS


class Entries(Protocol):
    """What keys need of the store: its entries' manifests, and the discovered-input lists of declared keys."""

    def discovered(self, declared_key: str) -> list[list[str]]: ...
    def has(self, key: str) -> bool: ...
    def manifest(self, key: str) -> dict[str, Any] | None: ...
    def entry(self, key: str) -> Path: ...
    def quarantine(self, key: str) -> None: ...


class InstanceKeys:
    """Keys of one plan's instances. `guard` serializes the shared caches (doit runs actions in threads);
    `readonly` (status, report, release) never moves a damaged entry aside."""

    def __init__(self, plan: Plan, stat: StatCache, code: CodeDigests, guard: threading.Lock, store: Entries, *,
                 readonly: bool = False) -> None:
        self.plan, self.stat, self.code, self.guard, self.store = plan, stat, code, guard, store
        self.readonly = readonly

    def key_for(self, inst: Instance, upstream: dict[str, str]) -> tuple[str, dict[str, Any]]:
        """The instance's key: its declared inputs, plus what an earlier run of the same declared key reported
        (the files it read, digested through the stat cache, and the distributions it loaded, at the versions
        installed now), with no import. Before the first run of a declared key, the declared key alone: the run
        then publishes under the key of what it did (Session._rekey)."""
        declared = self.declared_document(inst, upstream)
        variants = self.store.discovered(key_of(declared))
        candidates = [self.with_discovered(declared, files) for files in variants]
        for key, document in candidates:
            if self.store.has(key):
                return key, document
        return candidates[0] if candidates else (key_of(declared), declared)

    def declared_document(self, inst: Instance, upstream: dict[str, str]) -> dict[str, Any]:
        kind = KINDS[inst.kind]
        with self.guard:
            files = {name: self.stat.digest(Path(path)) for name, path in sorted(inst.files.items())}
        target: Any = self.targets() if kind.all_targets else self.target_of(inst)
        with self.guard:
            code = self.code.digest(kind.run.__module__)
        document = key_document(inst.kind, kind.version, kind.key_params(inst.params), target, upstream, files,
                                tool_versions(kind.tools_for(inst.params)), code)
        return {**document, "recipe": self.plan.recipe} if kind.named else document

    def with_discovered(self, declared: dict[str, Any], found: list[str]) -> tuple[str, dict[str, Any]]:
        """`found`: files relative to the recipe's folder (keys stay equal across checkouts of one layout) and
        `dist:NAME` for each distribution the run loaded."""
        digests, libraries = {}, {}
        for rel in found:
            if rel.startswith(DIST):
                libraries[rel.removeprefix(DIST)] = tool_version(rel.removeprefix(DIST))
                continue
            try:
                with self.guard:
                    digests[rel] = self.stat.digest(self.root / rel)
            except OSError:
                digests[rel] = "missing"
        document = with_found(declared, digests, libraries)
        return key_of(document), document

    @property
    def root(self) -> Path:
        """The recipe's folder: discovered inputs are named relative to it."""
        return Path(self.plan.recipe_file).parent

    def output_digest(self, key: str) -> str | None:
        """The entry's output digest, or None when it is missing or its files no longer match the manifest.

        Checked through the stat cache, so an untouched entry costs a stat per file; a modified or truncated
        one is moved aside (by a run, which holds the store's lock) and rebuilt instead of being used.
        """
        manifest = self.store.manifest(key)
        if manifest is None:
            return None
        entry = self.store.entry(key)
        try:
            with self.guard:
                intact = all(self.stat.digest(entry / rel) == info["sha256"] for rel, info in manifest["files"].items())
        except OSError:
            intact = False
        if not intact:
            if not self.readonly:
                self.store.quarantine(key)
            return None
        return str(manifest["digest"])

    def target_of(self, inst: Instance) -> dict[str, Any] | None:
        """The instance's target as the key and the stage both see it (resolved in one place)."""
        return TARGETS[inst.target].as_dict() if inst.target else None

    def targets(self) -> list[dict[str, Any]]:
        """Every target of the plan, for a kind that builds for all of them at once."""
        return [TARGETS[t].as_dict() for t in self.plan.targets]

