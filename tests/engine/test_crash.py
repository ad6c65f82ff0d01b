"""SIGKILL at any moment, then a rebuild: it resumes, never takes a partial output as done, and ends
byte-identical to a clean build."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_RECIPE, make_conv_model, paused, run_process, write
from tests.stages.test_compile import digests


def project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_conv_model(folder / "model.onnx")
    write(folder, "tiny.yaml", TINY_RECIPE)
    return folder


@pytest.fixture(scope="module")
def clean_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = project(tmp_path_factory.mktemp("clean"))
    assert run_process(["run", "tiny.yaml"], folder).returncode == 0
    return digests(folder)


def rebuild_matches(folder: Path, clean: dict[str, str]) -> str:
    proc = run_process(["run", "tiny.yaml"], folder)
    assert proc.returncode == 0, proc.stderr
    assert digests(folder) == clean
    assert run_process(["verify"], folder).returncode == 0
    assert not any((folder / "artifacts/.store/.tmp").iterdir())
    return proc.stderr


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited: it only waits to be reaped
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    return True


def test_kill_during_compile(tmp_path: Path, clean_build: dict[str, str]) -> None:
    folder = project(tmp_path / "p")
    proc, _, worker = paused(folder, "stage:running@compile[SM8650]", ["run", "tiny.yaml"])
    assert worker != proc.pid  # the compile runs in its own process ...
    os.kill(proc.pid, signal.SIGKILL)  # ... and only qnnbuild is killed: its worker must die with it
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while not _gone(worker):
        assert time.monotonic() < deadline, "the stage worker outlived qnnbuild"
        time.sleep(0.05)
    assert not (folder / "artifacts/tiny/compile").exists()
    log = rebuild_matches(folder, clean_build)
    assert "✓ quantize                       cached" in log and "✓ compile[SM8650]                ran" in log


def test_a_killed_lock_holder_does_not_block_the_next_run(tmp_path: Path, clean_build: dict[str, str]) -> None:
    folder = project(tmp_path / "p")
    proc, _, _ = paused(folder, "publish:renamed@export", ["run", "tiny.yaml"])  # holds the store's lock
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log = rebuild_matches(folder, clean_build)  # the OS dropped the lock with its holder: no wait, no stale lock
    assert "waiting for another qnnbuild run" not in log


def test_gc_waits_for_a_run_and_keeps_what_it_built(tmp_path: Path, clean_build: dict[str, str]) -> None:
    """gc computes the live set after the run it waited for wrote its lock: nothing that run built goes."""
    folder = project(tmp_path / "p")
    proc, flag, _ = paused(folder, "publish:renamed@export", ["run", "tiny.yaml"])
    gc = subprocess.Popen([sys.executable, "-m", "qnnbuild", "gc"], cwd=folder, text=True,
                          stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    assert gc.stderr is not None
    assert "waiting for another qnnbuild run" in gc.stderr.readline()
    flag.unlink()
    assert proc.wait(timeout=300) == 0
    out, _ = gc.communicate(timeout=60)
    assert gc.returncode == 0 and out.startswith("dropped 0 store entries"), out
    assert run_process(["verify"], folder).returncode == 0
    rebuild = run_process(["run", "tiny.yaml", "--json"], folder)
    import json

    assert {s["status"] for s in json.loads(rebuild.stdout)["stages"]} == {"cached"}
    assert digests(folder) == clean_build


@pytest.mark.parametrize("point", ["publish:manifest@compile[SM8650]", "publish:renamed@compile[SM8650]",
                                   "view:switched@compile[SM8650]", "publish:renamed@export"])
def test_kill_during_publish(tmp_path: Path, clean_build: dict[str, str], point: str) -> None:
    folder = project(tmp_path / "p")
    env = {**os.environ, "QNNBUILD_KILL_AT": point}
    killed = subprocess.run([sys.executable, "-m", "qnnbuild", "run", "tiny.yaml"], cwd=folder, env=env,
                            capture_output=True, text=True, check=False)
    assert killed.returncode == -signal.SIGKILL
    rebuild_matches(folder, clean_build)


def test_two_concurrent_runs_both_succeed(tmp_path: Path, clean_build: dict[str, str]) -> None:
    folder = project(tmp_path / "p")
    procs = [subprocess.Popen([sys.executable, "-m", "qnnbuild", "run", "tiny.yaml", "--json"], cwd=folder,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    import json

    statuses = [{s["id"]: s["status"] for s in json.loads(out)["stages"]} for out, _ in results]
    # the work was done once: each instance ran in exactly one of the two runs
    for inst in statuses[0]:
        assert sorted([statuses[0][inst], statuses[1][inst]]) == ["cached", "ran"], statuses
    assert digests(folder) == clean_build
    assert run_process(["verify"], folder).returncode == 0


def test_a_command_stages_program_dies_with_a_killed_run(tmp_path: Path) -> None:
    """SIGKILL to qnnbuild while a command stage's program runs: the program ends too (it dies with the stage
    process, which dies with qnnbuild), rather than running on in the background."""
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "wait.py").write_text("import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\n"
                                    "time.sleep(120)\n")
    write(folder, "c.yaml", f"""\
        schema_version: 1
        recipe: c
        stages:
          slow: {{kind: command, argv: ['{sys.executable}', '{folder / "wait.py"}', '{folder / "pid"}'],
                 outputs: [never]}}
        """)
    proc = subprocess.Popen([sys.executable, "-m", "qnnbuild", "run", "c.yaml"], cwd=folder, text=True,
                            stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not ((folder / "pid").is_file() and (folder / "pid").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "the program never started"
        time.sleep(0.05)
    program = int((folder / "pid").read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while not _gone(program):
        assert time.monotonic() < deadline, "the command stage's program outlived qnnbuild"
        time.sleep(0.05)


def test_the_no_op_check_moves_no_damaged_entry_without_the_lock(tmp_path: Path, clean_build: dict[str, str]) -> None:
    """A damaged entry found by the no-op check, while another run holds the store's lock: it stays where it is
    until this run holds the lock (moving it then races the holder's publish of that key); then it is moved
    aside and rebuilt."""
    from qnnbuild.engine.store.local import Store

    folder = project(tmp_path / "p")
    assert run_process(["run", "tiny.yaml"], folder).returncode == 0
    store = folder / "artifacts/.store"
    binary = next(p for p in store.glob("*/*.bin"))
    binary.chmod(0o644)
    binary.write_bytes(b"damaged" + binary.read_bytes()[7:])
    with Store(folder / "artifacts").exclusive():
        proc = subprocess.Popen([sys.executable, "-m", "qnnbuild", "run", "tiny.yaml"], cwd=folder, text=True,
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert proc.stderr is not None
        seen = ""
        while "waiting for another qnnbuild run" not in seen:  # the no-op check is over: it found the damage
            line = proc.stderr.readline()
            assert line, seen
            seen += line
        assert binary.is_file() and not (store / ".damaged").exists()
    rest = proc.stderr.read()
    assert proc.wait() == 0, seen + rest
    assert any((store / ".damaged").iterdir()) and "ran" in rest
    assert digests(folder) == clean_build
