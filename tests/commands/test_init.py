"""`qnnbuild init MODEL` on each source type writes a commented recipe that `qnnbuild run` builds as written."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import CLI, make_conv_model


def _init_and_build(cli: CLI, model: str, *extra: str) -> str:
    code, out, err = cli("init", model, *extra)
    assert code == 0, err
    recipe = out.split("wrote ")[1].split()[0].rstrip(";")
    code, _, err = cli("run", recipe)
    assert code == 0, err
    return Path(recipe).read_text()


def test_onnx_with_a_dynamic_batch_and_photos_beside_it(tmp_path: Path, cli: CLI,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    make_conv_model(tmp_path / "m.onnx", dynamic_batch=True)
    (tmp_path / "images").mkdir()
    for i, colour in enumerate(((200, 30, 30), (30, 200, 30), (30, 30, 200))):
        Image.new("RGB", (20, 20), colour).save(tmp_path / "images" / f"p{i}.png")
    text = _init_and_build(cli, "m.onnx", "--target", "SM8650", "SM8750", "--precision", "w8a8")
    assert "input: [1, 3, 16, 16]  # dynamic in the model: axis 0 = 1 is a default" in text
    assert "calibration: {images: {dir: images, count: 64, layout: NCHW}}" in text
    assert "targets: [SM8650, SM8750]" in text and "precision: w8a8" in text
    assert (tmp_path / "artifacts/m/validate/SM8750/metrics.json").is_file()
    code, _, err = cli("init", "m.onnx")
    assert code == 2 and "m.yaml exists; qnnbuild init never overwrites" in err


def test_init_refuses_what_it_cannot_read(tmp_path: Path, cli: CLI) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = cli("init", str(tmp_path / "notes.txt"))
    assert code == 2 and "not a model qnnbuild builds from" in err and "Traceback" not in err
    code, _, err = cli("init", str(tmp_path / "missing.onnx"))
    assert code == 2 and "no such file or folder" in err
    (tmp_path / "truncated.onnx").write_bytes(b"\x08\x07\x12\xff\xff")  # a download cut short
    code, _, err = cli("init", str(tmp_path / "truncated.onnx"))
    assert code == 2 and "truncated.onnx: cannot be read as a model (DecodeError" in err and "Traceback" not in err


def test_a_file_name_the_schema_would_refuse_still_gives_a_recipe_that_builds(tmp_path: Path, cli: CLI,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """m.fp32 v2.onnx: the recipe's name drops what names cannot hold, and the path is quoted in the YAML."""
    monkeypatch.chdir(tmp_path)
    make_conv_model(tmp_path / "m.fp32 v2.onnx")
    code, out, err = cli("init", "m.fp32 v2.onnx")
    assert code == 0 and out.endswith("qnnbuild run 'm.fp32 v2.yaml'\n"), (out, err)
    text = (tmp_path / "m.fp32 v2.yaml").read_text()
    assert "recipe: m_fp32_v2\n" in text and 'onnx: "m.fp32 v2.onnx"\n' in text
    code, _, err = cli("run", "m.fp32 v2.yaml", "--only", "export")
    assert code == 0, err


@pytest.mark.slow
def test_tensorflow_sources(tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tf2onnx")
    from tests.stages.test_tf_sources import keras_cnn

    monkeypatch.chdir(tmp_path)
    keras_cnn(tmp_path)
    for model in ("cnn.keras", "cnn_saved", "cnn.tflite"):
        name = model.replace(".", "_")
        text = _init_and_build(cli, model, "-o", f"{name}.yaml")
        assert f"recipe: {name}" in text and "synthetic inputs: no folder of photos" in text


@pytest.mark.slow
def test_hugging_face_folders_get_text(tmp_path: Path, cli: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    from tests.hfmodels import bert_folder, stdlib_sentences, trained_llama

    monkeypatch.chdir(tmp_path)
    bert_folder(tmp_path / "bert", stdlib_sentences(200))
    text = _init_and_build(cli, "bert")
    assert "task: feature-extraction" in text and "input_ids: [1, 128]" in text
    assert "calibration: {text: {file: bert_text.txt, count: 64}}" in text
    assert len((tmp_path / "bert_text.txt").read_text().splitlines()) == 200
    trained_llama(tmp_path / "llama", stdlib_sentences(300, skip=200), steps=30)
    text = _init_and_build(cli, "llama")
    assert "task: causal-lm" in text and "llm: {context_length: 256, prefill: 32}" in text
    assert (tmp_path / "artifacts/llama/context/SM8650/genai_config.json").is_file()
