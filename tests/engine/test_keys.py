from __future__ import annotations

import json
from pathlib import Path

import pytest

from qnnbuild.engine import keys


def test_version_cache_is_trusted_only_while_the_site_folders_are_unchanged(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_versions", {})
    file = tmp_path / "versions.json"
    cache = keys.VersionCache(file)
    real = keys.tool_version("pyyaml")
    cache.save()
    assert json.loads(file.read_text())["versions"] == {"pyyaml": real}

    raw = json.loads(file.read_text())
    file.write_text(json.dumps({**raw, "versions": {"pyyaml": "0.0-cached"}}))
    monkeypatch.setattr(keys, "_versions", {})
    keys.VersionCache(file)
    assert keys.tool_version("pyyaml") == "0.0-cached"  # same stamp: no importlib.metadata

    file.write_text(json.dumps({"stamp": [["/elsewhere/site-packages", 1, 1]], "versions": {"pyyaml": "0.0-cached"}}))
    monkeypatch.setattr(keys, "_versions", {})
    keys.VersionCache(file)
    assert keys.tool_version("pyyaml") == real  # a site folder changed: looked up again
