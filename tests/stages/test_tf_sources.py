"""TensorFlow sources (the tensorflow extra): a Keras CNN built here, through keras, saved_model and tflite,
each converted by tf2onnx, measured against the original, and built to a context binary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_process

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")


def keras_cnn(folder: Path) -> None:
    """Conv2D, DepthwiseConv2D, BatchNorm, ReLU6, Add, pooling and Dense, saved three ways."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    x_in = tf.keras.Input((32, 32, 3), name="image")
    x = tf.keras.layers.Conv2D(8, 3, padding="same")(x_in)
    x = tf.keras.layers.BatchNormalization()(x)
    skip = tf.keras.layers.ReLU(max_value=6.0)(x)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(skip)
    x = tf.keras.layers.ReLU(max_value=6.0)(x)
    x = tf.keras.layers.Conv2D(8, 1)(x)
    x = tf.keras.layers.Add()([x, skip])
    x = tf.keras.layers.MaxPooling2D()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(10, name="scores")(x)
    model = tf.keras.Model(x_in, out)
    bn = model.layers[2]
    bn.set_weights([np.random.default_rng(1).uniform(0.5, 1.5, 8).astype(np.float32) for _ in range(4)])
    model.save(folder / "cnn.keras")
    model.export(str(folder / "cnn_saved"), verbose=False)
    (folder / "cnn.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


RECIPE = """\
schema_version: 1
recipe: tf
targets: [SM8650]
stages:
  k_export: {kind: export, keras: cnn.keras}
  s_export: {kind: export, saved_model: cnn_saved}
  t_export: {kind: export, tflite: cnn.tflite}
  n_export: {kind: export, keras: cnn.keras, layout: nchw}
"""
for prefix in "kstn":
    RECIPE += f"""\
  {prefix}_quantize: {{kind: quantize, model: {prefix}_export}}
  {prefix}_compile: {{kind: compile, model: {prefix}_quantize}}
  {prefix}_context: {{kind: context-binary, compiled: {prefix}_compile}}
"""


@pytest.mark.slow
def test_keras_saved_model_and_tflite_to_a_context_binary(tmp_path: Path) -> None:
    keras_cnn(tmp_path)
    (tmp_path / "r.yaml").write_text(RECIPE)
    proc = run_process(["run", "r.yaml", "-j", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    art = tmp_path / "artifacts/tf"
    for prefix, kind in (("k", "keras"), ("s", "saved_model"), ("t", "tflite"), ("n", "keras")):
        conversion = json.loads((art / f"{prefix}_export/conversion.json").read_text())
        assert conversion["source"] == kind and conversion["converter"].startswith("tf2onnx 1.17")
        assert min(conversion["fidelity_sqnr_db"].values()) >= 100, (prefix, conversion)
        assert (art / f"{prefix}_context/SM8650").is_dir()
    shapes = {p: json.loads((art / f"{p}_export/io.json").read_text())["inputs"][0]["shape"] for p in "kn"}
    assert shapes == {"k": [1, 32, 32, 3], "n": [1, 3, 32, 32]}
    # tensorflow is imported by the TF exports only: a no-op of the whole recipe does not import it
    proc = run_process(["run", "r.yaml", "--json"], tmp_path, {"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 0 and {s["status"] for s in json.loads(proc.stdout)["stages"]} == {"cached"}
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert imported and not [m for m in imported if m.split(".")[0] in ("tensorflow", "tf2onnx", "keras")]


def test_tf_source_needs_one_source_and_checks_fidelity(tmp_path: Path) -> None:
    (tmp_path / "m.tflite").write_bytes(b"")
    (tmp_path / "r.yaml").write_text("schema_version: 1\nrecipe: x\nstages:\n"
                                     "  export: {kind: export, tflite: m.tflite, onnx: m.tflite}\n")
    proc = run_process(["run", "r.yaml"], tmp_path)
    assert proc.returncode == 2 and "give exactly one source" in proc.stderr and "(got onnx, tflite)" in proc.stderr


@pytest.mark.slow
def test_quantized_tflite_dequantized_and_integer_io_refused(tmp_path: Path) -> None:
    import tensorflow as tf

    keras_cnn(tmp_path)
    model = tf.keras.models.load_model(tmp_path / "cnn.keras", compile=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float inputs and outputs
    (tmp_path / "weights8.tflite").write_bytes(converter.convert())

    def representative() -> object:
        rng = np.random.default_rng(0)
        for _ in range(8):
            yield [rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)]

    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    (tmp_path / "int8.tflite").write_bytes(converter.convert())
    (tmp_path / "r.yaml").write_text("""\
schema_version: 1
recipe: q
targets: [SM8650]
stages:
  dequantized: {kind: export, tflite: weights8.tflite, min_fidelity_db: 20}
  integer: {kind: export, tflite: int8.tflite}
""")
    proc = run_process(["run", "r.yaml", "--json"], tmp_path)
    stages = {s["id"]: s["status"] for s in json.loads(proc.stdout)["stages"]}
    assert stages == {"dequantized": "ran", "integer": "failed"}, proc.stderr
    assert "int8.tflite: integer inputs/outputs" in proc.stderr
    conversion = json.loads((tmp_path / "artifacts/q/dequantized/conversion.json").read_text())
    assert min(conversion["fidelity_sqnr_db"].values()) >= 20


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from qnnbuild.errors import StageFailed
    from qnnbuild.toolchain import tfconvert

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if the extra were not installed
    with pytest.raises(StageFailed, match=r"pip install 'qnnbuild\[tensorflow\]'"):
        tfconvert.convert("keras", Path("m.keras"), {}, False, 17, Path("out.onnx"))
