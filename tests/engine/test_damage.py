"""Damage is never served: a damaged entry that cannot be moved aside fails the stage loudly; commands that
only look at a build (status, report, release) never change the store."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.conftest import CLI


def _damage(entry_file: Path) -> None:
    entry_file.chmod(stat.S_IRUSR | stat.S_IWUSR)
    entry_file.write_bytes(b"damaged")


def _entry_of(project: Path, view: str, name: str) -> Path:
    return (project / "artifacts/tiny" / view).resolve() / name


def test_a_quarantine_that_fails_fails_the_stage(tiny_project: Path, cli: CLI,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli("run", "tiny.yaml")[0] == 0
    damaged = _entry_of(tiny_project, "export", "model.onnx")
    _damage(damaged)
    real_rename = Path.rename

    def refuse(self: Path, target: object) -> Path:
        if ".damaged" in str(target):
            raise PermissionError(13, "Permission denied")
        return real_rename(self, target)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "rename", refuse)
    code, _, err = cli("run", "tiny.yaml")
    assert code == 1
    assert "is damaged and could not be moved aside (Permission denied)" in err
    assert damaged.read_bytes() == b"damaged"  # left for the user, never served as the stage's output
    monkeypatch.setattr(Path, "rename", real_rename)
    code, out, err = cli("run", "tiny.yaml", "--json")
    assert code == 0, err
    statuses = {s["id"]: s["status"] for s in json.loads(out)["stages"]}
    assert statuses["export"] == "ran"
    assert (tiny_project / "artifacts/tiny/export/model.onnx").read_bytes() != b"damaged"


@pytest.mark.parametrize("command", [["status", "tiny.yaml"], ["report", "tiny.yaml", "-o", "r.html"],
                                     ["release", "tiny.yaml", "-o", "r.tar.gz"]])
def test_read_only_commands_leave_the_store_alone(tiny_project: Path, cli: CLI, command: list[str]) -> None:
    assert cli("run", "tiny.yaml")[0] == 0
    damaged = _entry_of(tiny_project, "quantize", "model.qdq.onnx")
    _damage(damaged)
    cli(*command)
    assert damaged.read_bytes() == b"damaged"
    assert not (tiny_project / "artifacts/.store/.damaged").exists()
    code, _, err = cli("run", "tiny.yaml")  # the run (holding the lock) moves it aside and rebuilds
    assert code == 0, err
    assert any((tiny_project / "artifacts/.store/.damaged").iterdir())
