"""The one end-to-end test of the shipped recipe: MobileNetV2 for SM8650 and SM8750 (about 20 s here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import run_process

ROOT = Path(__file__).resolve().parent.parent


def test_mobilenet_recipe_end_to_end(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    proc = run_process(["run", "recipes/mobilenet.yaml", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    stages = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}
    assert {k: v["status"] for k, v in stages.items()} == {
        "export": "ran", "quantize": "ran", "convert": "ran", "compile[SM8650]": "ran", "compile[SM8750]": "ran",
        "context[SM8650]": "ran", "context[SM8750]": "ran", "validate[SM8650]": "ran", "validate[SM8750]": "ran",
        "layers": "ran", "profile[SM8650]": "ran", "profile[SM8750]": "ran"}
    for target in ("SM8650", "SM8750"):
        binary = tmp_path / f"artifacts/mobilenet_v2/context/{target}/mobilenet_v2_{target}.bin"
        assert binary.stat().st_size > 1_000_000
        spec = json.loads(binary.with_name("io_spec.json").read_text())
        assert spec["outputs"][0]["name"] == "logits" and spec["outputs"][0]["shape"] == [1, 1000]
        metrics = json.loads((tmp_path / f"artifacts/mobilenet_v2/validate/{target}/metrics.json").read_text())
        assert metrics["passed"] and metrics["outputs"]["logits"]["sqnr_db"] > 20
        profile = json.loads((tmp_path / f"artifacts/mobilenet_v2/profile/{target}/profile.json").read_text())
        assert profile["total_cycles_mean"] > 1e6
    report = json.loads((tmp_path / "artifacts/mobilenet_v2/convert/op_report.json").read_text())
    assert report["refused"] == []
    assert report["histogram"]["Conv2d"] + report["histogram"]["DepthWiseConv2d"] == 52  # MobileNetV2 has 52 convs

    again = run_process(["run", "recipes/mobilenet.yaml", "--json"], tmp_path)
    assert {s["status"] for s in json.loads(again.stdout)["stages"]} == {"cached"}
