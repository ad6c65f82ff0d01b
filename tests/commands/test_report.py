"""The HTML report, rendered in headless Chromium (Debian's `chromium` package, installed by the test command)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CLI, TINY_RECIPE, write
from tests.stages.test_analysis import ANALYSIS

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("Debian's chromium is missing: the test command installs it (apt-get install chromium)")
    return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_report_renders_in_a_browser(tiny_project: Path, cli: CLI, tmp_path: Path) -> None:
    write(tiny_project, "tiny.yaml", TINY_RECIPE + ANALYSIS % 20)
    assert cli("run", "tiny.yaml")[0] == 0
    code, out, _ = cli("report", "tiny.yaml", "-o", "report.html")
    assert code == 0 and out.startswith("wrote report.html")
    page = (tiny_project / "report.html").read_text()
    for heading in ("Stage graph", "Stages", "QNN op report", "Accuracy", "Per-layer quantization error",
                    "Cycle profile", "Tools"):
        assert f"<h2>{heading}" in page
    assert "onnxruntime-qnn" in page and "SM8650" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # self-contained

    url = (tiny_project / "report.html").as_uri()
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", url, profile=tmp_path / "p1")
    counts = re.search(r'data-images="(\d+) (\d+)"', dom.stdout)
    assert counts, dom.stderr[-2000:]
    total, loaded = map(int, counts.groups())
    assert total == 3 and loaded == total  # DAG, per-layer error and cycle profile, every one decoded

    shot = tmp_path / "shot.png"
    chromium("--window-size=1200,2000", f"--screenshot={shot}", url, profile=tmp_path / "p2")
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2000, 1200)
    assert (pixels < 128).mean() > 0.01  # text and plots, not a blank page
