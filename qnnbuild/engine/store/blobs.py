"""Declared input files shipped to Dask workers through the shared cache, by digest (`<url>/blobs/<digest>`; a
folder travels as a tar and its digest is over its files). A download is checked against its digest before it
is used."""

from __future__ import annotations

from pathlib import Path

from qnnbuild.common.hashing import StatCache, sha256_file
from qnnbuild.engine.store.files import remove_tree
from qnnbuild.engine.store.remote import CacheDown, RemoteCache


def put_blob(remote: RemoteCache, path: Path, digest: str) -> None:
    import tarfile
    import tempfile

    target = remote.path("blobs", digest)
    if remote.call("look up", remote.fs.exists, target):
        return
    if path.is_dir():
        with tempfile.TemporaryDirectory(prefix="qnnbuild-blob-") as tmp:
            archive = Path(tmp) / "folder.tar"
            # the files, not links: a folder given as a symlink (or one holding links, as a Hugging Face cache
            # snapshot does) is packed as what it reads, which is what its digest is over
            with tarfile.open(archive, "w", dereference=True) as tar:
                tar.add(path, arcname=".")
            remote.call("upload", remote.fs.put_file, str(archive), target)
    else:
        remote.call("upload", remote.fs.put_file, str(path), target)

def get_blob(remote: RemoteCache, digest: str, folder: Path, name: str) -> Path:
    """The input file (or folder) with this digest at folder/name, downloaded once and checked."""
    import tarfile
    import uuid


    dest = folder / name
    if dest.exists() and StatCache(folder / ".unused").digest(dest) == digest:
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    raw = folder / f".{uuid.uuid4().hex}.part"
    try:
        remote.call("download", remote.fs.get_file, remote.path("blobs", digest), str(raw))
    except FileNotFoundError:
        raise CacheDown(f"input file {name} ({digest[:16]}) is not in the shared cache") from None
    if sha256_file(raw) == digest:
        raw.replace(dest)
    else:  # a folder travels as a tar; its digest is over its files
        try:
            with tarfile.open(raw) as tar:
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:  # the client then builds it: never a failed stage
            if dest.is_dir():
                remove_tree(dest)
            raise CacheDown(f"input folder {name} from the shared cache cannot be unpacked ({exc})") from None
        finally:
            raw.unlink(missing_ok=True)
    if StatCache(folder / ".unused").digest(dest) != digest:
        remove_tree(dest) if dest.is_dir() else dest.unlink()
        raise CacheDown(f"input file {name} from the shared cache does not match its digest {digest[:16]}")
    return dest
