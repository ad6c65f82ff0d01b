"""A session's traffic with the shared cache: entries restored before a stage would run, entries uploaded after
it ran, and the ledger of uploads an earlier run could not finish (`artifacts/.qnnbuild/unpushed.json`).

A cache error never fails a build: CacheDown means "build here" (or "upload next time").
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from qnnbuild.common.atomic import write_json
from qnnbuild.engine.keys.document import key_of
from qnnbuild.stages import KINDS

if TYPE_CHECKING:
    from qnnbuild.engine.build.session import Session
    from qnnbuild.engine.recipe.plan import Instance
    from qnnbuild.engine.store.remote import RemoteCache


class SharedSync:
    def __init__(self, session: Session, remote: RemoteCache) -> None:
        self.session = session
        self.remote = remote

    def restore(self, inst: Instance, key: str, document: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The entry for this instance from the shared cache, published locally; None to build it here."""
        from qnnbuild.engine.store.remote import CacheDown

        session, remote = self.session, self.remote
        candidates = [(key, document)]
        if KINDS[inst.kind].discovers(inst.params):
            declared = {k: v for k, v in document.items() if k != "discovered"}
            try:
                variants = remote.discovered(key_of(declared))
            except CacheDown:
                return None
            candidates += [session.with_discovered(declared, files) for files in variants]
        for candidate, doc in dict(candidates).items():
            try:
                if remote.fetch(candidate, session.store) is not None:
                    return candidate, doc
            except CacheDown:
                return None
        return None

    def upload(self, inst: Instance, key: str, document: dict[str, Any]) -> None:
        """After a run: upload the entry (files, then the manifest as commit marker); never fails the build.

        The key is recorded as pending first and cleared once committed, so an upload cut short (cache down,
        writer killed) is retried by the next run instead of being forgotten behind a local cache hit."""
        from qnnbuild.engine.store.remote import CacheDown

        remote, store = self.remote, self.session.store
        if not remote.writes:
            return
        self.pending(add=[key])
        try:
            remote.push(key, store, replace=key in remote.refused or inst.id in self.session.forced,
                        instance=inst.id)
            if "discovered" in document:
                declared = key_of({k: v for k, v in document.items() if k != "discovered"})
                remote.remember_discovered(declared, store.discovered(declared))
        except CacheDown:
            return
        except OSError as exc:  # reading our own entry failed: say so, never fail the build
            remote.once(f"could not upload {inst.id} to the shared cache: {exc}")
            return
        self.pending(remove=[key])

    def push_pending(self) -> int:
        """Upload the entries an earlier run could not; a no-op with nothing pending makes no network call."""
        from qnnbuild.engine.store.remote import CacheDown

        if not self.remote.writes:
            return 0
        pushed = []
        for key in self.pending():
            if self.session.store.has(key):
                try:
                    self.remote.push(key, self.session.store)
                except CacheDown:
                    break
                except OSError as exc:
                    self.remote.once(f"could not upload {key[:16]} to the shared cache: {exc}")
                    break
            pushed.append(key)
        if pushed:
            self.pending(remove=pushed)
        return len(pushed)

    def pending(self, add: list[str] | None = None, remove: list[str] | None = None) -> list[str]:
        """Keys built here whose upload to this cache has not been committed yet."""
        url = self.remote.shown
        path = self.session.artifacts / ".qnnbuild" / "unpushed.json"
        with self.session.guard:
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
