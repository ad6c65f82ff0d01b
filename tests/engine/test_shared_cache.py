"""The shared cache against a real S3 server (SeaweedFS on 127.0.0.1), and against a shared folder."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TINY_RECIPE, make_conv_model, run_process
from tests.servers import SECRET_KEY, SeaweedFS, free_port


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


def workspace(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    make_conv_model(folder / "model.onnx")
    (folder / "tiny.yaml").write_text(TINY_RECIPE)
    return folder


def build(folder: Path, cache: str, env: dict[str, str], *extra: str) -> tuple[int, dict, str]:
    proc = run_process(["run", "tiny.yaml", "--json", "--cache", cache, *extra], folder, env)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr


def statuses(out: dict) -> dict[str, tuple[str, str | None]]:
    return {s["id"]: (s["status"], s.get("from")) for s in out["stages"]}


def outputs(folder: Path) -> dict[str, bytes]:
    """Every current output file, by its path under the recipe's views."""
    found = {}
    for dirpath, _, files in os.walk(folder / "artifacts/tiny", followlinks=True):  # the views are symlinks
        for name in files:
            path = Path(dirpath) / name
            if "logs" not in path.parts and path.suffix != ".lock":
                found[path.relative_to(folder).as_posix()] = path.read_bytes()
    return found


def assert_no_secret(*folders_and_texts: Path | str) -> None:
    for item in folders_and_texts:
        if isinstance(item, Path):
            for path in item.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    assert SECRET_KEY.encode() not in path.read_bytes(), path
        else:
            assert SECRET_KEY not in item


def test_two_workspaces_share_one_cache(tmp_path: Path, seaweed: SeaweedFS) -> None:
    url = seaweed.bucket(f"share-{uuid.uuid4().hex[:8]}") + "/team"
    first, second = workspace(tmp_path, "ci"), workspace(tmp_path, "laptop")
    code, out, err = build(first, url, seaweed.env())
    assert code == 0, err
    assert "warning" not in err
    code, out, err = build(second, url, seaweed.env(), "--cache-mode", "read")
    assert code == 0, err
    assert set(statuses(out).values()) == {("cached", "remote")}, statuses(out)
    assert "from the shared cache" in err
    assert outputs(first) == outputs(second) and outputs(second)
    code, out, _ = build(second, url, seaweed.env())  # and then a no-op, served locally
    assert set(statuses(out).values()) == {("cached", "local")}
    assert_no_secret(first, second, err)


def test_tampered_object_is_refused_rebuilt_and_replaced(tmp_path: Path, seaweed: SeaweedFS) -> None:
    url = seaweed.bucket(f"tamper-{uuid.uuid4().hex[:8]}")
    code, out, err = build(workspace(tmp_path, "ci"), url, seaweed.env())
    assert code == 0, err
    quantize = next(s for s in out["stages"] if s["id"] == "quantize")["key"]
    fs = seaweed.fs()
    target = f"{url[5:]}/{quantize}/files/model.qdq.onnx"
    fs.pipe_file(target, fs.cat_file(target) + b"\0")  # one byte appended in the bucket
    victim = workspace(tmp_path, "laptop")
    code, out, err = build(victim, url, seaweed.env())
    assert code == 0, err
    assert f"shared cache entry {quantize[:16]}: file model.qdq.onnx does not match its manifest" in err
    assert statuses(out)["quantize"] == ("ran", None)
    assert statuses(out)["export"] == ("cached", "remote")
    clean = (victim / "artifacts/tiny/quantize/model.qdq.onnx").read_bytes()
    assert fs.cat_file(target) == clean  # the read-write run replaced the bad entry
    code, out, err = build(workspace(tmp_path, "third"), url, seaweed.env())
    assert statuses(out)["quantize"] == ("cached", "remote") and "warning" not in err


def test_read_mode_writes_nothing(tmp_path: Path, seaweed: SeaweedFS) -> None:
    url = seaweed.bucket(f"read-{uuid.uuid4().hex[:8]}")
    code, _, err = build(workspace(tmp_path, "laptop"), url, seaweed.env(), "--cache-mode", "read")
    assert code == 0, err
    assert seaweed.fs().find(url[5:]) == []


def test_cache_down_costs_one_warning(tmp_path: Path) -> None:
    url = f"s3://nowhere/{uuid.uuid4().hex[:8]}"
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
    folder = workspace(tmp_path, "w")
    code, out, err = build(folder, url, env)
    assert code == 0, err
    assert err.count("warning:") == 1 and "building locally" in err
    assert {s for s, _ in statuses(out).values()} == {"ran"}
    assert json.loads((folder / "artifacts/.qnnbuild/unpushed.json").read_text())  # remembered for later
    code, _, err = build(folder, url, env, "--cache-required")
    assert code == 1 and "--cache-required" in err
    assert_no_secret(folder, err)


def test_no_op_makes_no_network_call(tmp_path: Path) -> None:
    folder = workspace(tmp_path, "w")
    code, _, err = build(folder, f"file://{tmp_path}/cache", {})
    assert code == 0, err
    # the same URL through an endpoint that refuses every connection: a no-op never asks it anything
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s"}
    code, out, err = build(folder, "s3://never/asked", env)
    assert code == 0 and "warning" not in err, err
    assert set(statuses(out).values()) == {("cached", "local")}


def test_server_stopped_mid_upload_then_the_next_run_uploads(tmp_path: Path) -> None:
    server = SeaweedFS(tmp_path / "seaweed").start()
    try:
        url = server.bucket("kill") + "/c"
        folder = workspace(tmp_path, "w")
        # the writer dies after uploading quantize's files, before its manifest: no entry for a reader
        env = {**server.env(), "QNNBUILD_KILL_AT": "remote:files-uploaded@quantize"}
        proc = run_process(["run", "tiny.yaml", "--cache", url], folder, env)
        assert proc.returncode != 0
        fs = server.fs()
        keys = {p.rsplit("/", 2)[-2] for p in fs.find("kill/c") if p.endswith("/manifest.json")}
        assert len(keys) == 1  # export only
        other = workspace(tmp_path, "reader")
        code, out, err = build(other, url, server.env(), "--cache-mode", "read")
        assert statuses(out)["export"] == ("cached", "remote") and statuses(out)["quantize"][0] == "ran", err
        server.stop(kill=True)  # the server goes away: the build goes on locally, one warning
        code, out, err = build(folder, url, server.env())
        assert code == 0 and err.count("warning:") == 1, err
        server.start()  # back (same folder, same ports): the next run, a local no-op, uploads what is pending
        code, out, err = build(folder, url, server.env())
        assert code == 0 and "uploaded" in err, err
        fresh = workspace(tmp_path, "fresh")
        code, out, err = build(fresh, url, server.env(), "--cache-mode", "read")
        assert set(statuses(out).values()) == {("cached", "remote")}, err
    finally:
        server.stop()


def test_folder_cache_and_bad_mode(tmp_path: Path) -> None:
    url = (tmp_path / "shared").as_uri()
    code, _, err = build(workspace(tmp_path, "a"), url, {})
    assert code == 0, err
    code, out, err = build(workspace(tmp_path, "b"), url, {})
    assert set(statuses(out).values()) == {("cached", "remote")}, err
    proc = run_process(["run", "tiny.yaml", "--cache", "nosuchscheme://x"], tmp_path / "a")
    assert proc.returncode == 0  # a no-op does not even open the cache
    proc = run_process(["run", "tiny.yaml", "--cache", "nosuchscheme://x"], workspace(tmp_path, "c"))
    assert proc.returncode == 2 and "nosuchscheme" in proc.stderr and "Traceback" not in proc.stderr


def test_cache_push_and_gc(tmp_path: Path, seaweed: SeaweedFS) -> None:
    url = seaweed.bucket(f"push-{uuid.uuid4().hex[:8]}")
    folder = workspace(tmp_path, "w")
    proc = run_process(["run", "tiny.yaml"], folder)  # built with no cache configured
    assert proc.returncode == 0, proc.stderr
    proc = run_process(["cache", "push", "tiny.yaml", "--cache", url], folder, seaweed.env())
    assert proc.returncode == 0, proc.stderr
    assert "5 uploaded, 0 already there" in proc.stderr
    proc = run_process(["cache", "push", "tiny.yaml"], folder, {**seaweed.env(), "QNNBUILD_CACHE": url})
    assert "0 uploaded, 5 already there" in proc.stderr
    _code, out, err = build(workspace(tmp_path, "other"), url, seaweed.env())
    assert set(statuses(out).values()) == {("cached", "remote")}, err
    proc = run_process(["cache", "gc", "--older-than", "1", "--cache", url], folder, seaweed.env())
    assert proc.returncode == 0 and "removed 0 of 5 entries" in proc.stderr, proc.stderr
    proc = run_process(["cache", "gc", "--older-than", "0", "--cache", url], folder, seaweed.env())
    assert "removed 5 of 5 entries" in proc.stderr, proc.stderr
    assert [p for p in seaweed.fs().find(url[5:]) if p.endswith("manifest.json")] == []
    proc = run_process(["cache", "gc", "--older-than", "0"], folder)
    assert proc.returncode == 2 and "--cache URL or QNNBUILD_CACHE" in proc.stderr


def _folder_entry(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    """A tiny build uploaded to a shared folder: (cache folder, its URL, instance id → key)."""
    cache = tmp_path / "cache"
    code, out, err = build(workspace(tmp_path, "ci"), cache.as_uri(), {})
    assert code == 0, err
    return cache, cache.as_uri(), {s["id"]: s["key"] for s in out["stages"]}


@pytest.mark.parametrize("damage", ["log", "manifest", "missing"])
def test_nothing_unchecked_comes_from_the_cache(tmp_path: Path, damage: str) -> None:
    cache, url, keys = _folder_entry(tmp_path)
    entry = cache / keys["quantize"]
    if damage == "log":  # not an output, but its digest is in the manifest: no byte comes unchecked
        log = entry / "meta" / "stage.log"
        log.write_text(log.read_text() + "injected\n")
        expected = "stage.log does not match its manifest"
    elif damage == "manifest":  # another entry's (valid) manifest under this key
        (entry / "manifest.json").write_bytes((cache / keys["export"] / "manifest.json").read_bytes())
        expected = "its manifest does not describe this key; refused"
    else:
        (entry / "files" / "model.qdq.onnx").unlink()
        expected = "file model.qdq.onnx is missing; refused"
    victim = workspace(tmp_path, "laptop")
    code, out, err = build(victim, url, {})
    assert code == 0, err
    assert f"shared cache entry {keys['quantize'][:16]}: {expected}" in err
    assert statuses(out)["quantize"] == ("ran", None) and statuses(out)["export"] == ("cached", "remote")
    assert "injected" not in (victim / "artifacts/tiny/quantize/.qnnbuild/stage.log").read_text()


def test_credentials_in_the_url_are_never_shown(tmp_path: Path) -> None:
    url = "http://builder:s3cr3t-Passw0rd@127.0.0.1:9/cache"  # nothing listens on port 9: the cache is down
    folder = workspace(tmp_path, "p")
    code, out, err = build(folder, url, {})
    assert code == 0, err
    assert "http://127.0.0.1:9/cache" in err and "failed" in err
    assert "s3cr3t" not in err and "s3cr3t" not in json.dumps(out)
    for path in (folder / "artifacts").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"s3cr3t" not in path.read_bytes(), path


@pytest.mark.parametrize("where", ["s3", "folder"])
def test_two_writers_racing_one_manifest(tmp_path: Path, seaweed: SeaweedFS, where: str) -> None:
    """The conditional create lets exactly one of several simultaneous writers commit an entry."""
    from concurrent.futures import ThreadPoolExecutor

    from qnnbuild.engine.store.remote import RemoteCache

    url = (seaweed.bucket(f"race-{uuid.uuid4().hex[:8]}") if where == "s3" else (tmp_path / "c").as_uri())
    env = seaweed.env() if where == "s3" else {}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        writers = [RemoteCache(url) for _ in range(6)]
        path = writers[0].path("k" * 64, "manifest.json")
        with ThreadPoolExecutor(6) as pool:
            won = list(pool.map(lambda w: w._create(path, f"{id(w)}".encode()), writers))
        assert won.count(True) == 1, won
        body = writers[0].fs.cat_file(path).decode()
        assert body == str(id(writers[won.index(True)]))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_programming_error_is_not_cache_down(tmp_path: Path) -> None:
    """Only network and storage errors open the breaker; a bug surfaces as itself."""
    from qnnbuild.engine.store.remote import RemoteCache

    cache = RemoteCache((tmp_path / "c").as_uri(), warn=lambda m: None)

    def buggy(*_: object) -> None:
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        cache.call("read manifest", buggy)
    assert cache.failure is None

    def down(*_: object) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    from qnnbuild.engine.store.remote import CacheDown

    with pytest.raises(CacheDown):
        cache.call("read manifest", down)
    assert cache.failure and "Connection refused" in cache.failure


def test_a_pending_upload_whose_entry_is_gone_is_dropped_not_reported_uploaded(tmp_path: Path) -> None:
    """The ledger of unfinished uploads holds one key still built here and one removed since (`cache gc`):
    the first is uploaded, the second leaves the ledger and is not counted as uploaded."""
    import threading

    from qnnbuild.engine.store.local import Store
    from qnnbuild.engine.store.remote import RemoteCache
    from qnnbuild.engine.store.sync import SharedSync

    store = Store(tmp_path / "artifacts")
    kept, gone = "a" * 64, "b" * 64
    work = store.new_workdir(kept)
    (work / "out.txt").write_text("built here\n")
    store.publish(work, kept, {"kind": "test"}, 0.1)
    sync = SharedSync(RemoteCache((tmp_path / "shared").as_uri(), "readwrite"), store, threading.Lock())
    sync.pending(add=[kept, gone])
    assert sync.push_pending() == (1, 1)
    assert sync.pending() == []
    assert (tmp_path / "shared" / kept / "manifest.json").is_file()
    assert not (tmp_path / "shared" / gone).exists()


def test_a_relative_folder_cache_takes_an_entry_with_subfolders(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`--cache ./shared`: an LLM's entry holds decode/ beside the prefill graph. A relative folder used to open
    without creating folders on the way, so every such upload failed with a warning (found running the parts
    benchmark by hand); it is now the absolute folder, as a worker started elsewhere must see it too."""
    from qnnbuild.engine.keys.document import key_of
    from qnnbuild.engine.store.local import Store
    from qnnbuild.engine.store.remote import RemoteCache

    monkeypatch.chdir(tmp_path)
    document = {"kind": "test"}
    store, key = Store(tmp_path / "artifacts"), key_of(document)
    work = store.new_workdir(key)
    (work / "decode").mkdir()
    (work / "decode" / "model.txt").write_text("decode graph\n")
    store.publish(work, key, document, 0.1)
    warnings: list[str] = []
    cache = RemoteCache("shared", "readwrite", warn=warnings.append)
    assert cache.url == str(tmp_path / "shared")
    assert cache.push(key, store) and not warnings
    other = Store(tmp_path / "elsewhere")
    assert cache.fetch(key, other) is not None and not warnings
    assert (other.entry(key) / "decode" / "model.txt").read_text() == "decode graph\n"
