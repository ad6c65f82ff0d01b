from pathlib import Path

from tests.conftest import run_process


def test_doctor_reports_versions_and_backends(tmp_path: Path) -> None:
    proc = run_process(["doctor"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "backend htp      loads" in lines
    assert any(line.startswith("qnn_sdk          2.") for line in lines)
    assert any(line.startswith("backend gpu      unavailable") for line in lines)
