"""SIGKILL at any moment, then a rebuild: it resumes, never takes a partial output as done, and ends
byte-identical to a clean build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_RECIPE, make_conv_model, run_process, write
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


def test_kill_during_compile(tmp_path: Path, clean_build: dict[str, str]) -> None:
    folder = project(tmp_path / "p")
    proc = subprocess.Popen([sys.executable, "-m", "qnnbuild", "run", "tiny.yaml"], cwd=folder, text=True,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "compile[SM8650]" in line and "running" in line:
            os.kill(proc.pid, signal.SIGKILL)  # only qnnbuild: its worker must die with it
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (folder / "artifacts/tiny/compile").exists()
    log = rebuild_matches(folder, clean_build)
    assert "✓ quantize                       cached" in log and "✓ compile[SM8650]                ran" in log


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
