from __future__ import annotations

import json
from pathlib import Path

import pytest

from qnnbuild.engine.keys import versions as keys


def test_version_cache_is_trusted_only_while_the_site_folders_are_unchanged(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "_versions", {})
    file = tmp_path / "versions.json"
    cache = keys.VersionCache(file)
    real = keys.tool_version("pyyaml")
    cache.save()
    assert json.loads(file.read_text())["data"] == {"pyyaml": real}

    raw = json.loads(file.read_text())
    file.write_text(json.dumps({**raw, "data": {"pyyaml": "0.0-cached"}}))
    monkeypatch.setattr(keys, "_versions", {})
    keys.VersionCache(file)
    assert keys.tool_version("pyyaml") == "0.0-cached"  # same stamp: no importlib.metadata

    file.write_text(json.dumps({"stamp": [["/elsewhere/site-packages", 1, 1]], "data": {"pyyaml": "0.0-cached"}}))
    monkeypatch.setattr(keys, "_versions", {})
    keys.VersionCache(file)
    assert keys.tool_version("pyyaml") == real  # a site folder changed: looked up again


def test_code_digest_covers_the_stage_module_and_what_it_imports(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from qnnbuild.engine.keys import code as codekeys

    rel = [p.relative_to(codekeys.PACKAGE).as_posix() for p in codekeys.closure("qnnbuild.stages.quantize")]
    assert {"stages/quantize/__init__.py", "toolchain/quant/quantizer.py", "toolchain/data/calibration.py", "stages/base.py"} <= set(rel)
    assert "stages/profile.py" not in rel and not [r for r in rel if r.startswith("engine/")]
    # an edit to a module quantize imports (a forgotten version bump) changes quantize's digest, not profile's
    fake = tmp_path / "qnnbuild"
    import shutil

    shutil.copytree(codekeys.PACKAGE, fake, ignore=shutil.ignore_patterns("__pycache__"))
    from qnnbuild.common import stamps

    monkeypatch.setattr(codekeys, "PACKAGE", fake)
    monkeypatch.setattr(stamps, "PACKAGE", fake)
    stamps.package_stamp.cache_clear()
    before = codekeys.CodeDigests(tmp_path / "a.json")
    digests = {m: before.digest(m) for m in ("qnnbuild.stages.quantize", "qnnbuild.stages.profile")}
    before.save()
    with (fake / "toolchain" / "quant" / "quantizer.py").open("a") as fh:
        fh.write("\n# changed\n")
    stamps.package_stamp.cache_clear()  # a new process would take the stamp anew
    after = codekeys.CodeDigests(tmp_path / "a.json")  # the remembered digests are dropped: a file changed
    assert after.digest("qnnbuild.stages.quantize") != digests["qnnbuild.stages.quantize"]
    assert after.digest("qnnbuild.stages.profile") == digests["qnnbuild.stages.profile"]


def test_tools_keyed_are_the_tools_that_run() -> None:
    from qnnbuild.stages import KINDS

    quantize, export = KINDS["quantize"], KINDS["export"]
    assert "aimet-onnx" not in quantize.tools_for({})
    assert {"aimet-onnx", "torch"} <= set(quantize.tools_for({"technique": "adaround"}))
    assert "torch" in export.tools_for({"torch": "m:f"}) and "torch" not in export.tools_for({"onnx": "m.onnx"})
