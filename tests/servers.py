"""Real servers the tests start on 127.0.0.1: SeaweedFS as the S3 server, a Dask scheduler and workers.

Each is a separate process on free ports, stopped (or killed, for fault tests) by the test that needs it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCESS_KEY = "qnnbuildTestKey"
SECRET_KEY = "qnnbuild-secret-never-printed"  # noqa: S105 (a test server's key;) tests assert it appears in no output, lock, report or log


def free_port(avoid: set[int] | None = None) -> int:
    """A port free now, whose gRPC twin (+10000, SeaweedFS's convention) is free too."""
    avoid = set() if avoid is None else avoid  # not `avoid or set()`: an empty set passed in must be filled
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 < 65536 and not {port, port + 10000} & avoid and _free(port + 10000):
            avoid.update((port, port + 10000))
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


PROBE_BUCKET = "qnnbuild-ready-probe"


@dataclass
class SeaweedFS:
    folder: Path
    s3_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """What a user sets to point qnnbuild (boto/s3fs) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> SeaweedFS:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(json.dumps({"identities": [{"name": "ci", "credentials": [
            {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List"]}]}))
        if not self.ports:
            taken: set[int] = set()
            self.ports = {name: free_port(taken) for name in ("s3", "master", "volume", "filer")}
        self.s3_port = self.ports["s3"]
        args = [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
                f"-s3.port={self.ports['s3']}", f"-s3.config={config}", "-volume.max=100",
                "-master.volumeSizeLimitMB=64", "-master.volumePreallocate=false", "-master.telemetry=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port.grpc={self.ports['s3'] + 10000}"]
        for name in ("master", "volume", "filer"):
            args += [f"-{name}.port={self.ports[name]}", f"-{name}.port.grpc={self.ports[name] + 10000}"]
        log = (self.folder / "weed.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, (self.folder / "weed.log").read_text()[-2000:]
            if self._answers() and self._serves():
                return
            time.sleep(0.2)
        raise TimeoutError("SeaweedFS did not start")

    def _serves(self) -> bool:
        """An object stored and read back: the gateway answers before its filer and volume server do (a
        restarted server answered a read with 'internal error' for a moment after its gateway was up)."""
        fs = self.fs()
        try:
            if not fs.exists(PROBE_BUCKET):
                fs.mkdir(PROBE_BUCKET)
            fs.pipe_file(f"{PROBE_BUCKET}/ready", b"ok")
            served = fs.cat_file(f"{PROBE_BUCKET}/ready") == b"ok"
            fs.rm_file(f"{PROBE_BUCKET}/ready")
        except Exception:  # botocore and s3fs raise their own types while the server comes up
            return False
        return served

    def _answers(self) -> bool:
        """Any HTTP answer (403 for an anonymous request) means the S3 gateway is up."""
        try:
            urllib.request.urlopen(self.endpoint, timeout=1)  # noqa: S310
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def fs(self) -> Any:
        """An s3fs filesystem on this server with the test credentials, given explicitly (the test process's
        environment stays untouched)."""
        import fsspec

        return fsspec.filesystem("s3", key=ACCESS_KEY, secret=SECRET_KEY, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"})

    def bucket(self, name: str) -> str:
        """Create a bucket (with the test credentials) and return its s3:// URL."""
        fs = self.fs()
        deadline = time.monotonic() + 30
        while True:
            try:
                fs.mkdir(name)
                fs.pipe_file(f"{name}/.probe", b"ok")  # the first write waits for a volume to be assigned
                fs.rm_file(f"{name}/.probe")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return f"s3://{name}"

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass
class DaskCluster:
    """`dask scheduler` and `dask worker` processes (no nanny: a killed worker stays dead)."""

    folder: Path
    env: dict[str, str]
    port: int = 0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, workers: int = 2) -> DaskCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        dask = [shutil.which("dask") or str(Path(sys.executable).parent / "dask")]
        self._spawn([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
                    "scheduler")
        for i in range(workers):
            self._spawn([*dask, "worker", self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                         "--local-directory", str(self.folder / f"worker{i}"), "--host", "127.0.0.1"], f"worker{i}")
        self.wait_for(workers)
        return self

    def _spawn(self, args: list[str], name: str) -> None:
        log = (self.folder / f"{name}.log").open("ab")
        env = {**os.environ, **self.env, "PYTHONWARNINGS": "ignore"}
        self.procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True))

    def wait_for(self, workers: int, timeout: float = 60.0) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError), Client(self.address, timeout=2) as client:
                client.wait_for_workers(workers, timeout=max(1.0, deadline - time.monotonic()))
                return
            time.sleep(0.3)
        raise TimeoutError(f"the Dask cluster did not get {workers} workers; see {self.folder}")

    def alive_workers(self) -> int:
        return sum(p.poll() is None for p in self.procs[1:])

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
