"""Builds on a real Dask cluster (a scheduler and two worker processes) with SeaweedFS as the shared cache."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_RECIPE, make_conv_model, paused, run_process, write_torch_factory
from tests.servers import DaskCluster, SeaweedFS


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    server = SeaweedFS(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


def project(folder: Path) -> Path:
    folder.mkdir(parents=True)
    make_conv_model(folder / "model.onnx")
    (folder / "tiny.yaml").write_text(TINY_RECIPE)
    return folder


def digests(out: dict) -> dict[str, str]:
    return {s["id"]: s["key"] for s in out["stages"]}


def entry_bytes(folder: Path, out: dict) -> dict[str, bytes]:
    found = {}
    for stage in out["stages"]:
        for rel in stage["outputs"]:
            found[rel] = (folder / rel).read_bytes()
    return found


def test_cluster_build_equals_a_local_build_and_survives_a_lost_worker(tmp_path: Path, seaweed: SeaweedFS) -> None:
    url = seaweed.bucket(f"dask-{uuid.uuid4().hex[:8]}") + "/c"
    # whichever worker first finishes compile[SM8650] dies before publishing it; the other one retries it
    kill = {"QNNBUILD_KILL_AT": "cluster:ran@compile[SM8650]", "QNNBUILD_KILL_ONCE": str(tmp_path / "killed")}
    cluster = DaskCluster(tmp_path / "dask", {**seaweed.env(), **kill}).start(workers=2)
    try:
        remote = project(tmp_path / "remote")
        proc = run_process(["run", "tiny.yaml", "--json", "--scheduler", cluster.address, "--cache", url], remote,
                           seaweed.env())
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        workers = {s["id"]: s.get("worker") for s in out["stages"]}
        assert workers.pop("export") is not None  # the ONNX file travels as a declared input
        assert all(w and w.startswith("tcp://127.0.0.1:") for w in workers.values()), workers
        phases = {s["id"]: s["phases"] for s in out["stages"]}  # where a worker's time went, on every line
        # nothing kept on the client reads these entries: each is restored at the end of the run, not on the way
        assert all(set(p) == {"inputs", "stage", "upload"} for p in phases.values()), phases
        assert all(p["stage"] < s["seconds"] for s, p in zip(out["stages"], phases.values(), strict=True))
        assert "(inputs " in proc.stderr and ", restore " not in proc.stderr
        assert re.search(r"restored 5 worker-built entries from the shared cache \([\d.,]+ MB", proc.stderr)
        assert (tmp_path / "killed").exists() and cluster.alive_workers() == 1  # one worker was lost mid-stage
    finally:
        cluster.stop()
    local = project(tmp_path / "local")
    proc = run_process(["run", "tiny.yaml", "--json"], local)
    assert proc.returncode == 0, proc.stderr
    mine = json.loads(proc.stdout)
    assert digests(mine) == digests(out)
    assert entry_bytes(local, mine) == entry_bytes(remote, out)


def test_scheduler_without_a_cache_is_a_usage_error(tmp_path: Path) -> None:
    folder = project(tmp_path / "p")
    env = {k: "" for k in ("QNNBUILD_CACHE",)}
    proc = run_process(["run", "tiny.yaml", "--scheduler", "local:1"], folder, env)
    assert proc.returncode == 2 and "--scheduler needs a shared cache" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_process(["run", "tiny.yaml", "--scheduler", "local:0", "--cache", (tmp_path / "c").as_uri()], folder)
    assert proc.returncode == 2 and "local:N" in proc.stderr


def test_local_cluster_and_a_two_recipe_zoo(tmp_path: Path) -> None:
    folder = project(tmp_path / "zoo")
    (folder / "b.yaml").write_text(TINY_RECIPE.replace("recipe: tiny", "recipe: b").replace(
        "targets: [SM8650]", "targets: [SM8650, SM8550]"))
    proc = run_process(["run", "tiny.yaml", "b.yaml", "--json", "--scheduler", "local:2", "--cache",
                        (tmp_path / "cache").as_uri()], folder)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    entries = [s for r in out["recipes"] for s in r["stages"]]
    ran = [s["key"] for s in entries if s["status"] == "ran"]
    # every key ran exactly once, whichever recipe got to a shared one first: 5 keys of tiny, and b's own
    # convert (judged for both targets), SM8550's compile and both its contexts (named after b, so keyed by it)
    assert len(ran) == len(set(ran)) == len({s["key"] for s in entries}) == 9, ran


def test_an_instance_goes_to_the_worker_that_holds_its_input(tmp_path: Path) -> None:
    """A chain on two workers: each instance is placed where its largest input was built (a part's compile
    where its split ran), so no worker fetches what the other just built; compile's join of parts stays on the
    client (tested with the parts in tests/stages/test_llm.py)."""
    folder = project(tmp_path / "chain")
    (folder / "chain.yaml").write_text(TINY_RECIPE.replace("recipe: tiny", "recipe: chain").replace(
        "  convert:  {kind: convert, model: quantize}\n", "").replace(", after: [convert]", ""))
    proc = run_process(["run", "chain.yaml", "--json", "--scheduler", "local:2", "--cache",
                        (tmp_path / "cache").as_uri()], folder)
    assert proc.returncode == 0, proc.stderr
    workers = [s.get("worker") for s in json.loads(proc.stdout)["stages"]]
    assert len(workers) == 4 and all(workers) and len(set(workers)) == 1, workers


def test_a_corrupt_shared_entry_is_rebuilt_by_the_worker(tmp_path: Path) -> None:
    """The client refuses a damaged entry and sends the instance to a worker; the worker must check the entry
    as the client does and replace it, not answer "already in the cache" (which failed the build for good)."""
    cache = tmp_path / "cache"
    first = project(tmp_path / "first")
    args = ["run", "tiny.yaml", "--json", "--scheduler", "local:1", "--cache", cache.as_uri()]
    proc = run_process(args, first)
    assert proc.returncode == 0, proc.stderr
    key = {s["id"]: s["key"] for s in json.loads(proc.stdout)["stages"]}["compile[SM8650]"]
    binary = next((cache / key / "files").glob("*.bin"))
    binary.write_bytes(b"corrupt" + binary.read_bytes()[7:])
    second = project(tmp_path / "second")
    proc = run_process(args, second)
    assert proc.returncode == 0, proc.stderr
    stages = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}
    assert stages["compile[SM8650]"]["status"] == "ran" and stages["compile[SM8650]"].get("worker")
    assert stages["export"]["status"] == "cached"
    assert "does not match its manifest" in proc.stderr
    assert not next((cache / key / "files").glob("*.bin")).read_bytes().startswith(b"corrupt")  # replaced


def test_a_long_lived_worker_gives_back_what_the_shared_cache_lost(tmp_path: Path) -> None:
    """One worker process serves three clients. After the shared entry of compile is removed (`cache gc`, a
    failed push) and then corrupted, a client sent there is answered from the worker's own store, which uploads
    its copy (replacing the corrupt one): before, the worker said "already in the cache" and the client failed
    until the worker restarted."""
    import shutil

    cache = tmp_path / "cache"
    cluster = DaskCluster(tmp_path / "dask", {}).start(workers=1)
    try:
        args = ["run", "tiny.yaml", "--json", "--scheduler", cluster.address, "--cache", cache.as_uri()]
        proc = run_process(args, project(tmp_path / "first"))
        assert proc.returncode == 0, proc.stderr
        key = {s["id"]: s["key"] for s in json.loads(proc.stdout)["stages"]}["compile[SM8650]"]
        shutil.rmtree(cache / key)  # gone from the shared cache, still in the worker's store
        proc = run_process(args, project(tmp_path / "second"))
        assert proc.returncode == 0, proc.stderr
        assert (cache / key / "manifest.json").is_file()
        binary = next((cache / key / "files").glob("*.bin"))
        binary.write_bytes(b"corrupt" + binary.read_bytes()[7:])
        proc = run_process(args, project(tmp_path / "third"))
        assert proc.returncode == 0, proc.stderr
        assert "does not match its manifest" in proc.stderr
        assert not next((cache / key / "files").glob("*.bin")).read_bytes().startswith(b"corrupt")  # replaced
    finally:
        cluster.stop()


VALIDATE = "  validate: {kind: validate, context: context, reference: export, quantized: quantize, " \
           "data: {npy: {dir: data}}}\n"


def validation_project(folder: Path) -> Path:
    project(folder)
    (folder / "tiny.yaml").write_text(TINY_RECIPE + VALIDATE)
    rng = np.random.default_rng(3)
    (folder / "data").mkdir()
    for i in range(12):
        np.save(folder / "data" / f"s{i:02d}.npy", rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32))
    return folder


def test_validation_shards_over_two_dask_workers_give_the_local_metrics(tmp_path: Path, seaweed: SeaweedFS) -> None:
    """validate on a 2-worker cluster runs its 12 samples as 2 shard tasks, one per worker, with its inputs
    through the shared cache; a shard whose process dies runs again on the other worker; metrics.json is byte
    for byte the one a local single-process run writes; the stage's progress is relayed to the client."""
    local = validation_project(tmp_path / "local")
    proc = run_process(["run", "tiny.yaml", "-j", "1"], local)
    assert proc.returncode == 0, proc.stderr
    metrics = "artifacts/tiny/validate/SM8650/metrics.json"
    url = seaweed.bucket(f"shards-{uuid.uuid4().hex[:8]}") + "/c"
    kill = {"QNNBUILD_KILL_AT": "shard@6", "QNNBUILD_KILL_ONCE": str(tmp_path / "killed")}
    cluster = DaskCluster(tmp_path / "dask", {**seaweed.env(), **kill}).start(workers=2)
    try:
        remote = validation_project(tmp_path / "remote")
        proc = run_process(["run", "tiny.yaml", "--json", "--scheduler", cluster.address, "--cache", url], remote,
                           {**seaweed.env(), "QNNBUILD_PULSE_S": "0.2"})
        assert proc.returncode == 0, proc.stderr
    finally:
        cluster.stop()
    # the worker's progress reached this console, relayed through Dask
    assert re.search(r"… validate\[SM8650\] +\d+/12 samples", proc.stderr), proc.stderr
    stages = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}
    assert stages["validate[SM8650]"]["status"] == "ran" and stages["validate[SM8650]"]["worker"]
    assert (remote / metrics).read_bytes() == (local / metrics).read_bytes()
    out = remote / "artifacts/tiny/validate/SM8650/.qnnbuild"
    log = (out / "stage.log").read_text()
    assert "12 samples in 2 shard(s) as Dask tasks" in log, log
    assert (tmp_path / "killed").is_file() and "shard 1 lost" in log, log
    # first one shard per worker; the lost shard then ran on the other one
    assert len(set(re.findall(r"(?:ran|lost) on (tcp://[\d.:]+)", log))) == 2, log
    lost = re.search(r"shard 1 lost on (tcp://[\d.:]+)", log)
    rerun = re.search(r"shard 1 \(samples 6-11\) ran on (tcp://[\d.:]+)", log)
    assert lost and rerun and lost.group(1) != rerun.group(1), log
    assert json.loads((out / "timings.json").read_text())["workers"] == 2


def test_a_worker_with_another_toolchain_refuses_the_job(tmp_path: Path) -> None:
    """A worker whose onnxruntime-qnn is another version than the client's (a distribution's metadata ahead of
    site-packages on its path, as another virtualenv would have it). Where the client knows what the stage
    loads, the worker refuses the job before running it, naming itself and the version, and publishes nothing;
    where the client does not know yet (a first build), the worker builds under the key of what it ran, and the
    client refuses that entry as one it could never find again."""
    import os

    fake = tmp_path / "site" / "onnxruntime_qnn-0.0.1.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-qnn\nVersion: 0.0.1\n")
    path = os.pathsep.join(p for p in (str(fake.parent), os.environ.get("PYTHONPATH", "")) if p)
    cache = tmp_path / "cache"
    folder = project(tmp_path / "p")
    cluster = DaskCluster(tmp_path / "dask", {"PYTHONPATH": path}).start(workers=1)
    try:
        on_cluster = ["run", "tiny.yaml", "--json", "--scheduler", cluster.address, "--cache", cache.as_uri()]
        proc = run_process(on_cluster, folder)
        assert proc.returncode == 1, proc.stderr
        export = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}["export"]
        assert export["status"] == "failed", export
        assert "built export with other distributions than this machine's (onnxruntime-qnn 0.0.1 there" in \
            export["message"], export["message"]

        proc = run_process(["run", "tiny.yaml", "--json", "--cache", cache.as_uri()], folder)  # here: all known
        assert proc.returncode == 0, proc.stderr
        key = {s["id"]: s["key"] for s in json.loads(proc.stdout)["stages"]}["compile[SM8650]"]
        shared = (cache / key / "manifest.json").read_bytes()
        proc = run_process([*on_cluster, "--force", "compile"], folder)
    finally:
        cluster.stop()
    assert proc.returncode == 1, proc.stderr
    refused = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}["compile[SM8650]"]
    assert refused["status"] == "failed", refused
    assert "refused compile[SM8650]" in refused["message"] and "onnxruntime-qnn 0.0.1 here, " in refused["message"]
    assert re.search(r"on tcp://127\.0\.0\.1:\d+", refused["message"]), refused["message"]
    assert (cache / key / "manifest.json").read_bytes() == shared  # nothing replaced under the client's key
    assert not list((tmp_path / "dask").glob(f"worker*/qnnbuild/.store/{key}"))  # nor built there


TORCH_RECIPE = """\
schema_version: 1
recipe: factory
targets: [SM8650]
stages:
  export: {kind: export, torch: "factory:build", inputs: {x: [1, 3, 8, 8]}}
"""


def torch_project(folder: Path, width: int) -> Path:
    """A torch factory whose helper module reads `width.txt`: files no recipe list names."""
    folder.mkdir(parents=True)
    write_torch_factory(folder, width)
    (folder / "factory.yaml").write_text(TORCH_RECIPE)
    return folder


def test_discovered_files_travel_to_the_worker(tmp_path: Path) -> None:
    """A stage that reads undeclared project files still goes to a worker: the files its last build read
    travel through the shared cache, and the worker rebuilds the recipe's folder from them alone. Before a
    first build nothing is known: the worker fails to import the factory and the client builds it."""
    pytest.importorskip("torch")
    folder = torch_project(tmp_path / "p", 4)
    args = ["run", "factory.yaml", "--json", "--scheduler", "local:1", "--cache", (tmp_path / "cache").as_uri()]
    proc = run_process(args, folder)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)["stages"][0]
    assert first["status"] == "ran" and "worker" not in first and "building it here" in proc.stderr
    (folder / "width.txt").write_text("6\n")  # a file only the last build's reads name
    proc = run_process(args, folder)
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)["stages"][0]
    assert second["status"] == "ran" and second.get("worker", "").startswith("tcp://"), proc.stderr
    local = torch_project(tmp_path / "local", 6)
    proc = run_process(["run", "factory.yaml", "--json"], local)
    mine = json.loads(proc.stdout)
    assert digests(mine) == digests({"stages": [second]})
    assert entry_bytes(local, mine) == entry_bytes(folder, {"stages": [second]})
    (folder / "width.txt").write_text("4\n")  # back: the first build's key, cached
    proc = run_process(args, folder)
    assert json.loads(proc.stdout)["stages"][0] == {**first, "status": "cached", "from": "local",
                                                      "seconds": json.loads(proc.stdout)["stages"][0]["seconds"]}


def test_an_onnx_file_with_external_data_builds_on_a_worker(tmp_path: Path) -> None:
    """The file names its external data, so even a first build sends it along; the worker's export equals a
    local one, and rewriting a weight in the data file rebuilds (on the worker, with the new weights)."""
    import onnx

    folder = tmp_path / "p"
    folder.mkdir()
    model = onnx.load(str(make_conv_model(tmp_path / "built.onnx")))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    (folder / "r.yaml").write_text("schema_version: 1\nrecipe: r\ntargets: [SM8650]\n"
                                   "stages:\n  export: {kind: export, onnx: model.onnx}\n")
    args = ["run", "r.yaml", "--json", "--scheduler", "local:1", "--cache", (tmp_path / "cache").as_uri()]
    proc = run_process(args, folder)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)["stages"][0]
    assert first.get("worker", "").startswith("tcp://") and "building it here" not in proc.stderr, proc.stderr
    data = bytearray((folder / "model.onnx.data").read_bytes())
    data[:4] = np.float32(5.0).tobytes()
    (folder / "model.onnx.data").write_bytes(bytes(data))
    proc = run_process(args, folder)
    second = json.loads(proc.stdout)["stages"][0]
    assert second["status"] == "ran" and second.get("worker") and second["key"] != first["key"], proc.stderr
    exported = onnx.load(str(folder / next(o for o in second["outputs"] if o.endswith("model.onnx"))))
    assert 5.0 in onnx.numpy_helper.to_array(exported.graph.initializer[0]).ravel()[:1]


def test_a_cache_lost_mid_run_costs_a_warning_and_the_client_builds_what_it_needs(tmp_path: Path) -> None:
    """A worker's entry that no stage kept on the client reads stays in the shared cache until the run ends.
    When the cache goes away meanwhile, the stages that then run on the client build those inputs here again:
    warnings, no failure, the bytes of a local build."""
    folder = project(tmp_path / "p")
    cache = tmp_path / "cache"
    proc, flag, _ = paused(folder, "cluster:left@quantize", ["run", "tiny.yaml", "--json", "--scheduler", "local:1",
                                                            "--cache", cache.as_uri()],
                           stdout=subprocess.PIPE, timeout_s=180, env={"PYTHONWARNINGS": "ignore"})
    cache.rename(tmp_path / "gone")  # export and quantize, built on the worker, now exist only there
    cache.write_text("not a folder")  # every read and write of the cache fails from here on
    flag.unlink()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "building locally" in stderr and "quantize was built on a worker" in stderr, stderr
    assert "Traceback" not in stderr
    out = json.loads(stdout)
    local = project(tmp_path / "local")
    mine = run_process(["run", "tiny.yaml", "--json"], local)
    assert mine.returncode == 0, mine.stderr
    assert entry_bytes(local, json.loads(mine.stdout)) == entry_bytes(folder, out)
