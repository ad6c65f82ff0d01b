import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_process


def test_doctor_reports_what_it_tried(tmp_path: Path) -> None:
    proc = run_process(["doctor"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "backend htp      works  (ran a MatMul (emulated on this x86 host))" in lines
    assert any(line.startswith("backend ir       works  (wrote a DLC (") for line in lines)
    assert any(line.startswith("qnn_sdk          2.") for line in lines)
    # no OpenCL GPU and no libQnnCpu.so here: the reason is what QNN answered when asked, not a constant
    gpu = next(line for line in lines if line.startswith("backend gpu"))
    assert gpu.startswith("backend gpu      unavailable  (") and "ONNXRuntimeError" in gpu


def test_a_backend_that_fails_is_reported_with_its_error(tmp_path: Path) -> None:
    """The probe's answer follows the attempt: break the IR backend's library path and IR is unavailable."""
    code = ("import json, qnnbuild.commands.doctor as d, qnnbuild.toolchain.runtime.qnn as q, pathlib;"
            f"q.library_dir = lambda: pathlib.Path({str(tmp_path)!r});"
            "print(json.dumps(d.probe()['backends']['ir']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    ok, detail = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ok is False and detail
