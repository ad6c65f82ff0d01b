"""The shared cache: the local store's entries under the same keys, on any fsspec URL (s3://, file://, ...).

    <url>/<key>/files/<relpath>      the entry's output files, uploaded first
    <url>/<key>/meta/<name>          stage.log and timings.json: not outputs, but checked like them against
                                     the digests the manifest's "meta" holds
    <url>/<key>/signatures/<manifest sha256>.<signer>
                                     the writer's ed25519 signature of the key and manifest (signing.py), when
                                     it has a signing key; readers that list trusted keys need one
    <url>/<key>/manifest.json        the local manifest, uploaded last with a conditional create: the commit
                                     marker, so an entry without it does not exist for a reader
    <url>/deps/<declared key>.json   the discovered-input lists of a declared key (see Session.key_for)
    <url>/blobs/<digest>             a declared input file (a folder as a tar) shipped to Dask workers (blobs.py)

A reader trusts nothing it downloads: the manifest must describe the key it is stored under, every file must
match the manifest's sha256, and only then is the download published locally by the store's atomic rename. A
cache that fails costs bounded retries with backoff and one warning, then is left alone for the rest of the
run (a circuit breaker): the build goes on locally. Credentials come from fsspec's own sources (for S3 the
standard AWS variables and files); URLs are shown without any userinfo.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from qnnbuild.common.faults import checkpoint
from qnnbuild.common.hashing import sha256_file, sha256_json
from qnnbuild.engine.keys.document import declared_of, key_of
from qnnbuild.engine.store.files import META, output_files, remove_tree
from qnnbuild.engine.store.fsio import link_create, protocols, redact, storage_errors
from qnnbuild.engine.store.local import MAX_VARIANTS, META_FILES, Store
from qnnbuild.engine.store.signing import Signing
from qnnbuild.errors import UsageError

T = TypeVar("T")
ATTEMPTS = 3
BACKOFF_S = 0.2  # then 0.4: a cache that is down costs well under a second per run, once
MODES = ("readwrite", "read")


class CacheDown(Exception):
    """The cache failed after its retries; the breaker is open for the rest of the run."""


@dataclass
class RemoteCache:
    url: str
    mode: str = "readwrite"
    required: bool = False
    warn: Callable[[str], None] = print
    _fs: Any = None
    _root: str = ""
    failure: str | None = None
    warned: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)  # keys whose entry was bad: a writer replaces them
    signing: Signing = field(default_factory=Signing.from_env)  # this machine's key and the keys it trusts
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--cache-mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.url and "://" not in self.url:  # a folder: absolute, so a worker started elsewhere finds the same one
            self.url = str(Path(self.url).expanduser().absolute())

    def connect(self) -> None:
        """Open the filesystem. Not done at construction: a no-op run must not pay for importing fsspec and
        s3fs (~0.3 s) when it will not touch the cache. Raises UsageError for a URL fsspec cannot open."""
        if self._fs is not None:
            return
        try:
            import fsspec
        except ImportError:
            raise UsageError("--cache needs the remote extra: pip install 'qnnbuild[remote]'") from None
        options: dict[str, Any] = {}
        if self.url.startswith(("s3://", "s3a://")):
            # our retries, not botocore's 5 with 15 s timeouts: a cache that is down must cost seconds, once
            options = {"config_kwargs": {"connect_timeout": 3, "read_timeout": 30, "retries": {"max_attempts": 1}}}
        elif self.url.startswith(("file://", "/")):
            options = {"auto_mkdir": True}
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **options)
        except ImportError as exc:
            raise UsageError(f"--cache {self.shown}: {exc} (pip install 'qnnbuild[remote]')") from None
        except ValueError as exc:
            raise UsageError(f"--cache {self.shown}: {exc}") from None
        if hasattr(fs, "retries"):
            fs.retries = 1  # s3fs's own retry loop sleeps up to 30 s before giving up
        self._fs, self._root = fs, root.rstrip("/")

    @property
    def fs(self) -> Any:
        self.connect()
        return self._fs

    @property
    def root(self) -> str:
        self.connect()
        return self._root

    @property
    def shown(self) -> str:
        return redact(self.url)

    @property
    def writes(self) -> bool:
        return self.mode == "readwrite"

    # --- fault handling ------------------------------------------------------------------------------------
    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(...) with bounded retries; a missing object is an answer (raised as is) only when reading."""
        if self.failure is not None:
            raise CacheDown(self.failure)
        answers: tuple[type[Exception], ...] = () if what.startswith("upload") else (FileNotFoundError,)
        for attempt in range(ATTEMPTS):
            try:
                return fn(*args, **kwargs)
            except answers:
                raise
            except storage_errors() as exc:  # a programming error (TypeError, KeyError, ...) is not "cache down"
                if attempt == ATTEMPTS - 1:
                    self._trip(what, exc)
                time.sleep(BACKOFF_S * 2 ** attempt)
        raise AssertionError("unreachable")

    def _trip(self, what: str, exc: Exception) -> None:
        with self._guard:
            if self.failure is None:
                detail = " ".join(str(exc).split())[:200] or type(exc).__name__
                self.failure = f"shared cache {self.shown} failed ({what}: {detail}); building locally"
                self.warn(self.failure)
        raise CacheDown(self.failure)

    def once(self, message: str) -> None:
        with self._guard:
            if message not in self.warned:
                self.warned.add(message)
                self.warn(message)

    # --- paths ---------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # --- reading -------------------------------------------------------------------------------------------
    def manifest(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.call("read manifest", self.fs.cat_file, self.path(key, "manifest.json"))
            raw = json.loads(body)
        except FileNotFoundError:
            return None
        except ValueError:
            self.once(f"shared cache entry {key[:16]}: manifest.json is not JSON; refused")
            self.refused.add(key)
            return None
        if not isinstance(raw, dict) or raw.get("key") != key or sha256_json(raw.get("document")) != key:
            self.once(f"shared cache entry {key[:16]}: its manifest does not describe this key; refused")
            self.refused.add(key)
            return None
        unsigned = self.signing.check(key, body, lambda name: self._signature(key, name))
        if unsigned is not None:
            self.once(f"shared cache entry {key[:16]}: {unsigned}; refused, building locally")
            self.refused.add(key)
            return None
        return raw

    def _signature(self, key: str, name: str) -> bytes | None:
        try:
            return bytes(self.call("read signature", self.fs.cat_file, self.path(key, "signatures", name)))
        except FileNotFoundError:
            return None

    def fetch(self, key: str, store: Store, replace: bool = False) -> dict[str, Any] | None:
        """Download the entry for `key`, check every file against its manifest, publish it into `store` (over
        a local entry of that key with `replace`: a forced run on a worker brings its own log and timings).

        Returns the local manifest, or None when the cache has no (valid) entry; raises CacheDown."""
        manifest = self.manifest(key)
        if manifest is None:
            return None
        work = store.new_workdir(key)
        meta = {name: digest for name, digest in (manifest.get("meta") or {}).items() if name in META_FILES}
        wanted = [(("files", rel), work / rel, f"file {rel}", info["sha256"])
                  for rel, info in sorted(manifest["files"].items())]
        # the log and timings too (a manifest from before they were digested brings none): no byte unchecked
        wanted += [(("meta", name), work / META / name, name, digest) for name, digest in sorted(meta.items())]
        try:
            if not all(self._download_checked(key, *item) for item in wanted):
                return None
            checked = {dest.relative_to(work).as_posix(): digest for _, dest, _, digest in wanted}
            return store.publish(work, key, manifest["document"], float(manifest.get("seconds", 0.0)),
                                 replace=replace, checked=checked)
        finally:
            if work.exists():
                remove_tree(work)

    def _download_checked(self, key: str, where: tuple[str, str], dest: Path, shown: str, digest: str) -> bool:
        """One file of an entry, downloaded and checked against its manifest digest; False (the entry refused,
        once said) when it is missing or differs."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.call("download", self.fs.get_file, self.path(key, *where), str(dest))
        except FileNotFoundError:
            problem = "is missing"
        else:
            if sha256_file(dest) == digest:
                return True
            problem = "does not match its manifest (sha256)"
        self.once(f"shared cache entry {key[:16]}: {shown} {problem}; refused, building locally")
        self.refused.add(key)
        return False

    def discovered(self, declared_key: str) -> list[list[str]]:
        try:
            raw = json.loads(self.call("read deps", self.fs.cat_file, self.path("deps", f"{declared_key}.json")))
        except (FileNotFoundError, ValueError):
            return []
        return [list(v) for v in raw if isinstance(v, list)] if isinstance(raw, list) else []

    # --- writing -------------------------------------------------------------------------------------------
    def push(self, key: str, store: Store, *, replace: bool = False, instance: str = "") -> bool:
        """Upload a local entry: files, its signature, then the manifest by conditional create. False when it was
        there, or when this machine must not upload (its key is not trusted: see signing.py)."""
        if not self._may_upload():
            return False
        self._share_variant(key, store)
        entry = store.entry(key)
        manifest_path = self.path(key, "manifest.json")
        if not replace and self.call("look up", self.fs.exists, manifest_path):
            return False
        for path in output_files(entry):
            rel = path.relative_to(entry).as_posix()
            self.call("upload", self.fs.put_file, str(path), self.path(key, "files", rel))
        body = (entry / META / "manifest.json").read_bytes()
        for name in sorted(json.loads(body).get("meta") or {}):
            if name in META_FILES:
                self.call("upload", self.fs.put_file, str(entry / META / name), self.path(key, "meta", name))
        signed = self.signing.sign(key, body)
        if signed is not None:  # before the manifest: a committed entry's signature is already there
            self.call("upload signature", self.fs.pipe_file, self.path(key, "signatures", signed[0]), signed[1])
        checkpoint("remote:files-uploaded", instance)
        if replace:
            self.call("upload manifest", self.fs.pipe_file, manifest_path, body)
            return True
        return self.call("upload manifest", self._create, manifest_path, body)

    def _create(self, path: str, body: bytes) -> bool:
        """Conditional create (S3 If-None-Match: *; a hard link on a folder); False when the object was there."""
        if "file" in protocols(self.fs):
            return link_create(Path(path), body)
        try:
            self.fs.pipe_file(path, body, mode="create")
        except FileExistsError:
            return False
        except OSError:
            if self.fs.exists(path):  # S3 answers 412 Precondition Failed, which s3fs raises as EINVAL
                return False
            raise
        return True

    def _share_variant(self, key: str, store: Store) -> None:
        """What the run behind `key` read and loaded, among its declared key's variants here: other machines
        compute the full key from it (Session.key_for) and would never find the entry without it. Merged with
        the variants other machines recorded, this machine's first."""
        document = (store.manifest(key) or {}).get("document") or {}
        declared = declared_of(document)
        if not document or declared == document:
            return
        shared = key_of(declared)
        mine, theirs = store.discovered(shared), self.discovered(shared)
        merged = [*mine, *(v for v in theirs if v not in mine)][:MAX_VARIANTS]
        if merged != theirs:
            self.remember_discovered(shared, merged)

    def _may_upload(self) -> bool:
        """False (said once) when readers that trust what this machine trusts would refuse its entries."""
        refusal = self.signing.refuses_upload()
        if refusal is not None:
            self.once(f"not uploading to the shared cache {self.shown}: {refusal}")
        return refusal is None

    def remember_discovered(self, declared_key: str, variants: list[list[str]]) -> None:
        if not self._may_upload():
            return
        self.call("upload deps", self.fs.pipe_file, self.path("deps", f"{declared_key}.json"),
                   json.dumps(variants).encode())

    # --- maintenance ---------------------------------------------------------------------------------------
    def entries(self) -> list[tuple[str, float]]:
        """(key, age in days of its manifest) for every committed entry."""
        now = time.time()
        found = []
        for info in self.call("list", self.fs.ls, self.root, detail=True):
            name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
            if len(name) != 64:
                continue
            try:
                stamp = self.call("stat", self.fs.modified, self.path(name, "manifest.json")).timestamp()
            except FileNotFoundError:
                stamp = now  # an upload in progress (or abandoned): gc leaves it to a later run
            found.append((name, (now - stamp) / 86400))
        return found

    def delete(self, key: str) -> None:
        """Manifest first: the entry stops existing for readers before its files go."""
        with contextlib.suppress(FileNotFoundError):
            self.call("delete", self.fs.rm_file, self.path(key, "manifest.json"))
        self.call("delete", self.fs.rm, self.path(key), recursive=True)
