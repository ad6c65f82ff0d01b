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


def keras_kinds(folder: Path) -> None:
    """A Sequential model, a functional one with two outputs, and a subclassed one (as .keras and as a
    SavedModel): the ways people build Keras models."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    tf.keras.Sequential([tf.keras.Input((16, 16, 3), name="image"), tf.keras.layers.Conv2D(4, 3, activation="relu"),
                         tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(5)]).save(folder / "seq.keras")
    x = tf.keras.Input((16, 16, 3), name="image")
    h = tf.keras.layers.Conv2D(4, 3, activation="relu")(x)
    a = tf.keras.layers.Dense(3, name="head_a")(tf.keras.layers.GlobalAveragePooling2D()(h))
    tf.keras.Model(x, [a, tf.keras.layers.Conv2D(2, 1, name="head_b")(h)]).save(folder / "two.keras")

    class Sub(tf.keras.Model):
        def __init__(self, **kw: object) -> None:
            super().__init__(**kw)
            self.conv = tf.keras.layers.Conv2D(4, 3, activation="relu")
            self.pool = tf.keras.layers.GlobalAveragePooling2D()
            self.dense = tf.keras.layers.Dense(5)

        def call(self, x: object) -> object:
            return self.dense(self.pool(self.conv(x)))

    sub = Sub()
    sub(np.zeros((1, 16, 16, 3), np.float32))
    sub.save(folder / "sub.keras")
    sub.export(str(folder / "sub_saved"), verbose=False)


@pytest.mark.slow
def test_keras_models_however_they_are_built(tmp_path: Path) -> None:
    keras_kinds(tmp_path)
    (tmp_path / "r.yaml").write_text("""\
schema_version: 1
recipe: k
stages:
  seq: {kind: export, keras: seq.keras}
  two: {kind: export, keras: two.keras}
  sub: {kind: export, keras: sub.keras}
  subs: {kind: export, saved_model: sub_saved}
  strict: {kind: export, keras: two.keras, min_fidelity_db: 400}
""")
    proc = run_process(["run", "r.yaml", "--json"], tmp_path)
    stages = {s["id"]: s for s in json.loads(proc.stdout)["stages"]}
    assert {k: s["status"] for k, s in stages.items()} == {"seq": "ran", "two": "ran", "sub": "failed",
                                                          "subs": "ran", "strict": "failed"}, proc.stderr
    for name, outputs in (("seq", 1), ("two", 2), ("subs", 1)):
        conversion = json.loads((tmp_path / f"artifacts/k/{name}/conversion.json").read_text())
        assert len(conversion["fidelity_sqnr_db"]) == outputs
        assert min(conversion["fidelity_sqnr_db"].values()) >= 100, (name, conversion)
    assert "Sequential model" in json.loads((tmp_path / "artifacts/k/seq/conversion.json").read_text())["converter"]
    # a subclassed .keras cannot load without its class: one line with the cause and the way out, no KeyError
    assert stages["sub"]["message"].startswith("sub.keras: Keras cannot load it here (Could not locate class 'Sub')")
    assert "saved_model: DIR" in stages["sub"]["message"] and "Traceback" not in proc.stderr
    # the fidelity gate names the measured figures and the requirement
    assert "the converted model is not faithful to the keras original: " in stages["strict"]["message"]
    assert "< required 400 dB" in stages["strict"]["message"]


@pytest.mark.slow
def test_stateful_tflite_is_refused_by_name(tmp_path: Path) -> None:
    import tensorflow as tf

    class Counter(tf.Module):
        def __init__(self) -> None:
            self.count = tf.Variable(0.0)

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x: object) -> object:
            self.count.assign_add(1.0)
            return x + self.count

    module = Counter()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    converter.experimental_enable_resource_variables = True
    (tmp_path / "counter.tflite").write_bytes(converter.convert())
    (tmp_path / "r.yaml").write_text("schema_version: 1\nrecipe: c\nstages:\n  export: {kind: export, tflite: counter.tflite}\n")
    proc = run_process(["run", "r.yaml", "--json"], tmp_path)
    assert proc.returncode == 1
    message = json.loads(proc.stdout)["stages"][0]["message"]
    assert message.startswith("counter.tflite: stateful ops ") and "VAR_HANDLE" in message
