"""Real .tflite models from PyPI wheels (MediaPipe 0.10.21, basic-pitch 0.4.0), unzipped, never installed:
each converts with its fidelity measured and builds through context-binary for SM8650, or is refused at
export naming the op. Wheels are cached like the ONNX corpus (QNNBUILD_CORPUS_CACHE)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import run_process
from tests.wheels import wheel_files

pytest.importorskip("tensorflow")

WHEELS = ["mediapipe==0.10.21", "basic-pitch==0.4.0"]
# name: (file inside a wheel, inputs to fix, expected: "builds" or the words export's failure holds)
MODELS = {
    "hand_recrop": ("mediapipe/modules/holistic_landmark/hand_recrop.tflite", {}, "builds"),
    "face_detection": ("mediapipe/modules/face_detection/face_detection_short_range.tflite", {}, "builds"),
    "palm_detection": ("mediapipe/modules/palm_detection/palm_detection_lite.tflite", {}, "builds"),
    "nmp": ("basic_pitch/saved_models/icassp_2022/nmp.tflite", {}, "builds"),
    "selfie_segmentation": ("mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite", {},
                            "Convolution2DTransposeBias"),
}


def _models() -> dict[str, Path]:
    return wheel_files(WHEELS, {name: member for name, (member, _, _) in MODELS.items()})


@pytest.mark.slow
def test_real_tflite_models(tmp_path: Path) -> None:
    models = _models()
    outcomes = {}
    for name, (_, inputs, expected) in MODELS.items():
        (tmp_path / f"{name}.yaml").write_text(f"""\
schema_version: 1
recipe: {name}
targets: [SM8650]
stages:
  export:   {{kind: export, tflite: {models[name]}, inputs: {json.dumps(inputs)}}}
  quantize: {{kind: quantize, model: export, calibration: {{synthetic: {{count: 2}}}}}}
  compile:  {{kind: compile, model: quantize}}
  context:  {{kind: context-binary, compiled: compile}}
""")
        started = time.monotonic()
        proc = run_process(["run", f"{name}.yaml", "--json"], tmp_path)
        stages = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}
        if expected == "builds":
            assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
            conversion = json.loads((tmp_path / f"artifacts/{name}/export/conversion.json").read_text())
            outcomes[name] = (min(conversion["fidelity_sqnr_db"].values()), stages["export"]["seconds"],
                              round(time.monotonic() - started, 1))
        else:
            assert proc.returncode == 1, f"{name} was expected to be refused at export"
            failed = [line for line in proc.stderr.splitlines() if "✗" in line]
            assert failed and "✗ export " in failed[0] and expected in failed[0], failed
            assert "Traceback" not in proc.stderr
            outcomes[name] = ("refused", failed[0].split("failed", 1)[-1].strip()[:160])
    print(json.dumps(outcomes, indent=1))
