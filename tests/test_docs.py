"""The documentation site builds strictly (broken links, missing pages and bad snippets fail), and its
generated reference covers every stage kind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qnnbuild.stages import KINDS

ROOT = Path(__file__).resolve().parent.parent


def test_every_stage_kind_has_a_page_in_the_nav() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = {p for section in nav for entry in section.values() if isinstance(entry, list)
              for item in entry for p in item.values()}
    assert {f"reference/stages/{k}.md" for k in KINDS} <= listed


def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("material")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "site/reference/stages/quantize/index.html").read_text()
    assert "block_size" in page and "keep_8bit" in page  # generated from the declaration
    assert "--8&lt;--" not in (tmp_path / "site/cookbook/small-llm/index.html").read_text()  # snippet included
