"""Hugging Face folders as an export source: a random-weight BERT written by transformers with a tokenizer
trained on real English, built at w8a16, its tokenizer carried into the deliverable and used by text data."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.conftest import CLI, write

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

RECIPE = """\
    schema_version: 1
    recipe: enc
    targets: [SM8650]
    stages:
      export: {kind: export, hf: bert, task: feature-extraction,
               inputs: {input_ids: [1, 16], attention_mask: [1, 16], token_type_ids: [1, 16]}}
      quantize: {kind: quantize, model: export, precision: w8a16, calibration: {text: {file: s.txt, count: 12}}}
      compile: {kind: compile, model: quantize}
      context: {kind: context-binary, compiled: compile}
      validate: {kind: validate, context: context, reference: export, quantized: quantize, min_embedding_cosine: 0.99,
                 data: {text: {file: s.txt, skip: 12, count: 6}}}
    """


@pytest.fixture
def bert(tmp_path: Path) -> Path:
    from tests.hfmodels import bert_folder, stdlib_sentences

    lines = stdlib_sentences(18)
    (tmp_path / "s.txt").write_text("\n".join(lines) + "\n")
    return bert_folder(tmp_path / "bert", stdlib_sentences(200), layers=2, hidden=32)


def test_hf_folder_builds_and_ships_its_tokenizer(tmp_path: Path, cli: CLI, bert: Path) -> None:
    write(tmp_path, "r.yaml", RECIPE)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    art = tmp_path / "artifacts/enc"
    io = json.loads((art / "export/io.json").read_text())
    assert [(i["name"], i["dtype"], i["shape"]) for i in io["inputs"]] == [
        ("input_ids", "int64", [1, 16]), ("attention_mask", "int64", [1, 16]), ("token_type_ids", "int64", [1, 16])]
    assert [o["name"] for o in io["outputs"]] == ["last_hidden_state"]
    # the HF mask ((1 - mask) * finfo.min) was made finite, and the attention MatMuls got the 16-bit rule
    assert "finite-mask" in {r["rewrite"] for r in json.loads((art / "export/rewrites.json").read_text())}
    assert "matmul-act-act-int16" in {r["rule"] for r in json.loads((art / "quantize/rules.json").read_text())}
    deliverable = art / "context/SM8650"
    assert (deliverable / "tokenizer.json").read_bytes() == (bert / "tokenizer.json").read_bytes()
    spec = json.loads((deliverable / "io_spec.json").read_text())
    assert spec["preprocessing"] == ["tokenizer.json", "tokenizer_config.json"]
    # text data took the tokenizer the source carries (no tokenizer: in the recipe)
    metrics = json.loads((art / "validate/SM8650/metrics.json").read_text())
    assert metrics["passed"] and metrics["samples"] == 6
    assert metrics["embedding_cosine"]["last_hidden_state"]["htp"] > 0.99

    code, out, err = cli("release", "r.yaml", "-o", "enc.tar.gz")
    assert code == 0, err
    with tarfile.open(tmp_path / "enc.tar.gz") as tar:
        assert "enc/SM8650/tokenizer.json" in tar.getnames()

    # the folder's content is in the key: a changed tokenizer file rebuilds from export on
    config = json.loads((bert / "tokenizer_config.json").read_text())
    (bert / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 16}))
    code, out, err = cli("run", "r.yaml", "--json")
    assert code == 0, err
    assert {s["id"]: s["status"] for s in json.loads(out)["stages"]}["export"] == "ran"


def test_vocab_txt_only_gets_a_tokenizer_json(tmp_path: Path, cli: CLI, bert: Path) -> None:
    """An older folder with only vocab.txt: the deliverable still gets the one-file tokenizer.json."""
    vocab = json.loads((bert / "tokenizer.json").read_text())["model"]["vocab"]
    (bert / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    (bert / "tokenizer.json").unlink()
    (bert / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    write(tmp_path, "r.yaml", RECIPE.split("      quantize:", maxsplit=1)[0])
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    made = tmp_path / "artifacts/enc/export/preprocessing/tokenizer.json"
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(made)).encode("the file is read").ids
    assert ids[0] == vocab["[CLS]"] and ids[-1] == vocab["[SEP]"] and len(ids) > 3


@pytest.mark.parametrize(("export", "field", "words"), [
    ("{kind: export, hf: bert, inputs: {input_ids: [1, 8]}}", "task", "needs its task"),
    ("{kind: export, hf: bert, task: feature-extraction}", "inputs", "needs the input shapes"),
    ("{kind: export, onnx: m.onnx, task: feature-extraction}", "task", "goes with an hf: folder"),
    ("{kind: export, hf: bert, task: translation, inputs: {input_ids: [1, 8]}}", "task", "feature-extraction"),
])
def test_hf_recipe_errors(tmp_path: Path, cli: CLI, export: str, field: str, words: str) -> None:
    (tmp_path / "bert").mkdir()
    (tmp_path / "m.onnx").write_bytes(b"")
    write(tmp_path, "r.yaml", f"schema_version: 1\nrecipe: e\nstages:\n  export: {export}\n")
    code, _, err = cli("run", "r.yaml")
    assert code == 2
    assert "r.yaml:4" in err and field in err and words in err, err
    assert "Traceback" not in err


def test_not_a_model_folder_fails_the_stage(tmp_path: Path, cli: CLI) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("nothing here\n")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: e
        stages:
          export: {kind: export, hf: empty, task: feature-extraction, inputs: {input_ids: [1, 8]}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "✗ export" in err and "has no config.json: not a Hugging Face model folder" in err
