"""Text as data: a tokenizer trained here on the standard library's docstrings (real English), a tiny
token-embedding model, calibrated on some lines and validated on others."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import CLI, write

pytest.importorskip("tokenizers")
SEQ = 16


def stdlib_lines(count: int) -> list[str]:
    import email
    import json as json_module
    import pathlib
    import textwrap

    text = " ".join((m.__doc__ or "") for m in (email, json_module, pathlib, textwrap, np))
    words = text.split()
    return [" ".join(words[i:i + 12]) for i in range(0, 12 * count, 12)]


def tokenizer_file(path: Path, lines: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))  # noqa: S106 - a token, not a password
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines, trainers.WordLevelTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]"]))
    tok.save(str(path))


def encoder(path: Path, vocab: int = 200, dim: int = 8) -> None:
    """Embedding lookup, masked mean over the sequence: what a sentence encoder's pooling does."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "table"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"], name="gather"),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"], name="unsq"),
             helper.make_node("Mul", ["emb", "mask3"], ["masked"], name="mul"),
             helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0, name="sum"),
             helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1, name="count"),
             helper.make_node("Div", ["summed", "count"], ["embedding"], name="mean")]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "axis2"))
    graph = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, SEQ]),
                                             helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                                           [1, SEQ])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def test_text_calibrates_and_validates(tmp_path: Path, cli: CLI) -> None:
    lines = stdlib_lines(24)
    (tmp_path / "sentences.txt").write_text("\n".join(lines) + "\n")
    tokenizer_file(tmp_path / "tokenizer.json", lines)
    encoder(tmp_path / "enc.onnx")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: text
        targets: [SM8650]
        stages:
          export: {kind: export, onnx: enc.onnx}
          quantize: {kind: quantize, model: export, precision: w8a16,
                     calibration: {text: {file: sentences.txt, tokenizer: tokenizer.json, count: 16}}}
          compile: {kind: compile, model: quantize}
          context: {kind: context-binary, compiled: compile}
          validate: {kind: validate, context: context, reference: export, quantized: quantize, min_cosine: 0.99,
                     min_embedding_cosine: 0.99,
                     data: {text: {file: sentences.txt, tokenizer: tokenizer.json, skip: 16}}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    calibration = json.loads((tmp_path / "artifacts/text/quantize/calibration.json").read_text())
    assert calibration["source"] == "text" and calibration["samples"] == 16
    metrics = json.loads((tmp_path / "artifacts/text/validate/SM8650/metrics.json").read_text())
    assert metrics["samples"] == 8 and metrics["source"] == "text"
    assert metrics["outputs"]["embedding"]["cosine"] > 0.99
    assert set(metrics["embedding_cosine"]["embedding"]) == {"qdq_cpu", "htp"}
    assert metrics["embedding_cosine"]["embedding"]["htp"] > 0.99
    # the text is an input: editing a validation line reruns validate only
    (tmp_path / "sentences.txt").write_text("\n".join([*lines[:-1], " ".join(lines[-1].split()[::-1])]) + "\n")
    code, out, err = cli("run", "r.yaml", "--json")
    assert code == 0, err
    ran = {s["id"] for s in json.loads(out)["stages"] if s["status"] == "ran"}
    assert ran in ({"quantize", "validate[SM8650]"}, {"validate[SM8650]"}), ran


def test_text_for_a_model_without_token_inputs_is_refused(tmp_path: Path, cli: CLI) -> None:
    from tests.conftest import make_conv_model

    make_conv_model(tmp_path / "m.onnx")
    (tmp_path / "s.txt").write_text("hello world\n")
    tokenizer_file(tmp_path / "tokenizer.json", ["hello world"])
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: t
        stages:
          export: {kind: export, onnx: m.onnx}
          quantize: {kind: quantize, model: export, calibration: {text: {file: s.txt, tokenizer: tokenizer.json}}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "text data feeds input_ids, attention_mask, token_type_ids; the model takes input" in err


@pytest.mark.parametrize("padding_section", [True, False])
def test_text_pads_with_the_tokenizers_own_pad_id(tmp_path: Path, padding_section: bool) -> None:
    """A RoBERTa-style vocabulary (<s> 0, <pad> 1): padding uses <pad>, from tokenizer.json's padding section or
    from the vocabulary, not tokenizers' default id 0 (which is <s> there)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from qnnbuild.toolchain.data.textdata import TextSamples

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))  # noqa: S106 - a token, not a password
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if padding_section:
        tok.enable_padding(pad_id=1, pad_token="<pad>")  # noqa: S106
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "text.txt").write_text("hello world\n")
    inputs = [{"name": n, "shape": [1, 6], "dtype": "int64"} for n in ("input_ids", "attention_mask")]
    sample = TextSamples({}, inputs, tmp_path / "text.txt", tmp_path / "tokenizer.json")[0]
    assert sample["input_ids"].tolist() == [[4, 5, 1, 1, 1, 1]]
    assert sample["attention_mask"].tolist() == [[1, 1, 0, 0, 0, 0]]
