"""A session's traffic with the shared cache: entries restored before a stage would run, entries uploaded after
it ran, and the ledger of uploads an earlier run could not finish (`artifacts/.qnnbuild/unpushed.json`).

A cache error never fails a build: CacheDown means "build here" (or "upload next time").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qnnbuild.common.atomic import write_json
from qnnbuild.engine.keys.document import declared_of, key_of
from qnnbuild.engine.store.local import Store

if TYPE_CHECKING:
    from qnnbuild.engine.store.remote import RemoteCache

# files an earlier run of a declared key reported reading → that variant's (key, key document)
Variant = Callable[[list[str]], tuple[str, dict[str, Any]]]


class SharedSync:
    """One artifacts folder's traffic with one shared cache. `guard` is the run's lock around shared files."""

    def __init__(self, remote: RemoteCache, store: Store, guard: threading.Lock) -> None:
        self.remote = remote
        self.store = store
        self.guard = guard
        self.ledger = store.artifacts / ".qnnbuild" / "unpushed.json"

    def restore(self, key: str, document: dict[str, Any],
                variant: Variant | None = None) -> tuple[str, dict[str, Any]] | None:
        """The entry for this key from the shared cache, published locally; None to build it here. With `variant`,
        the variants other machines recorded for its declared key (what their runs read and loaded) count too."""
        from qnnbuild.engine.store.remote import CacheDown

        remote = self.remote
        declared = key_of(declared_of(document))
        candidates: dict[str, tuple[dict[str, Any], list[str] | None]] = {key: (document, None)}
        if variant is not None:
            try:
                variants = remote.discovered(declared)
            except CacheDown:
                return None
            for seen in variants:
                candidate, doc = variant(seen)
                candidates.setdefault(candidate, (doc, seen))
        for candidate, (doc, found) in candidates.items():
            try:
                if remote.fetch(candidate, self.store) is not None:
                    if found is not None:  # what that run read and loaded: this store finds the key next time
                        self.store.remember_discovered(declared, found)
                    return candidate, doc
            except CacheDown:
                return None
        return None

    def upload(self, instance: str, key: str, *, forced: bool = False) -> None:
        """After a run: upload the entry (files, then the manifest as commit marker); never fails the build.

        The key is recorded as pending first and cleared once committed, so an upload cut short (cache down,
        writer killed) is retried by the next run instead of being forgotten behind a local cache hit."""
        from qnnbuild.engine.store.remote import CacheDown

        remote = self.remote
        if not remote.writes:
            return
        self.pending(add=[key])
        try:
            remote.push(key, self.store, replace=key in remote.refused or forced, instance=instance)
        except CacheDown:
            return
        except OSError as exc:  # reading our own entry failed: say so, never fail the build
            remote.once(f"could not upload {instance} to the shared cache: {exc}")
            return
        self.pending(remove=[key])

    def push_pending(self) -> tuple[int, int]:
        """Upload the entries an earlier run could not; a no-op with nothing pending makes no network call.
        Returns (uploaded, dropped): a pending key whose local entry is gone (`cache gc`, `clean`) leaves the
        ledger without being counted as uploaded."""
        from qnnbuild.engine.store.remote import CacheDown

        if not self.remote.writes:
            return 0, 0
        pushed, gone = [], []
        for key in self.pending():
            if not self.store.has(key):
                gone.append(key)
                continue
            try:
                self.remote.push(key, self.store)
            except CacheDown:
                break
            except OSError as exc:
                self.remote.once(f"could not upload {key[:16]} to the shared cache: {exc}")
                break
            pushed.append(key)
        if pushed or gone:
            self.pending(remove=pushed + gone)
        return len(pushed), len(gone)

    def pending(self, add: list[str] | None = None, remove: list[str] | None = None) -> list[str]:
        """Keys built here whose upload to this cache has not been committed yet."""
        url, path = self.remote.shown, self.ledger
        with self.guard:
            try:
                table = json.loads(path.read_text())
            except (OSError, ValueError):
                table = {}
            keys = [k for k in table.get(url, []) if k not in (remove or [])]
            keys += [k for k in (add or []) if k not in keys]
            if add or remove:
                table[url] = keys
                write_json(path, {u: v for u, v in table.items() if v})
            return keys
