"""Static prefill/decode graphs of a causal LM (toolchain/llm/export.py): the exported ONNX graphs, run on
onnxruntime's CPU, give the transformers model's own logits over a padded prompt and decode steps after it, for
Llama and Qwen2 configs (grouped KV heads; Qwen2 has attention biases); both graphs build for HTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import CLI, write

pytest.importorskip("transformers")
C, N = 32, 8  # context length, prefill length


def _tiny(family: str) -> Any:
    import torch

    from qnnbuild.toolchain.sources.hfexport import import_transformers

    tf = import_transformers()
    kwargs = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
    config = tf.LlamaConfig(**kwargs) if family == "llama" else tf.Qwen2Config(**kwargs)
    torch.manual_seed(0)
    model = (tf.LlamaForCausalLM if family == "llama" else tf.Qwen2ForCausalLM)(config).eval()
    if family == "qwen2":  # biases are zero-initialized: make them count
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
    return model


def _session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_static_graphs_reproduce_the_model(tmp_path: Path, family: str) -> None:
    import torch

    from qnnbuild.toolchain.llm import export as llmexport

    model = _tiny(family)
    for name, tokens in (("prefill", N), ("decode", 1)):
        llmexport.export(model, tokens, C, -100.0, 17, tmp_path / f"{name}.onnx")
    prefill, decode = _session(tmp_path / "prefill.onnx"), _session(tmp_path / "decode.onnx")
    dims = llmexport.shape_of(model)
    prompt, generated = [5, 17, 42, 9, 100], [7, 8, 200]
    with torch.no_grad():
        reference = model(torch.tensor([prompt + generated])).logits[0].numpy()
    names = [i.name for i in prefill.get_inputs()]
    ids = np.zeros((1, N), np.int64)
    ids[0, :len(prompt)] = prompt  # padded: the pad rows are written, never attended, then overwritten
    mask = np.zeros((1, C), np.int64)
    mask[0, :len(prompt)] = 1
    cache = [np.zeros((1, dims["kv_heads"], C, dims["head_dim"]), np.float32) for _ in range(2 * dims["layers"])]
    out = prefill.run(None, dict(zip(names, [ids, np.arange(N)[None], mask, *cache], strict=True)))
    assert np.abs(out[0][0, :len(prompt)] - reference[:len(prompt)]).max() < 1e-4
    for step, token in enumerate(generated):
        position = len(prompt) + step
        mask[0, position] = 1
        out = decode.run(None, dict(zip(names, [np.array([[token]]), np.array([[position]]), mask, *out[1:]],
                                        strict=True)))
        assert np.abs(out[0][0, 0] - reference[position]).max() < 1e-4, f"decode step {step}"


def test_both_graphs_build_for_htp(tmp_path: Path, cli: CLI) -> None:
    from qnnbuild.toolchain.llm import export as llmexport

    model = _tiny("qwen2")
    for name, tokens in (("prefill", N), ("decode", 1)):
        llmexport.export(model, tokens, C, -100.0, 17, tmp_path / f"{name}.onnx")
    data = "{synthetic: {count: 2, ranges: {step_ids: [0, 255], step_positions: [0, 31], cache_mask: [0, 1]}}}"
    stages = "".join(f"""
          {g}: {{kind: export, onnx: {g}.onnx}}
          {g}_q: {{kind: quantize, model: {g}, precision: w8a16, calibration: {data}}}
          {g}_c: {{kind: compile, model: {g}_q}}
          {g}_x: {{kind: context-binary, compiled: {g}_c}}""" for g in ("prefill", "decode"))
    write(tmp_path, "r.yaml", "schema_version: 1\nrecipe: llm\ntargets: [SM8650]\nstages:" + stages + "\n")
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err  # the context-binary stage loads and runs each binary on the HTP emulator
    assert (tmp_path / "artifacts/llm/decode_x/SM8650/llm_SM8650.bin").is_file()


def test_a_trained_tiny_llama_generates_through_the_static_graphs(tmp_path: Path) -> None:
    """A tiny Llama trained here for a few seconds on the standard library's docstrings: held-out perplexity far
    below the vocabulary's (so it learned English), and the static graphs generate what transformers'
    generate() does, greedy."""
    import math

    import torch

    from qnnbuild.toolchain.llm import export as llmexport
    from qnnbuild.toolchain.llm import run as llmrun
    from qnnbuild.toolchain.sources.hfexport import import_transformers
    from tests.hfmodels import stdlib_sentences, trained_llama

    lines = stdlib_sentences(500)
    trained_llama(tmp_path / "llama", lines, steps=200)
    tf = import_transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path / "llama")).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(tmp_path / "llama"))
    held_out = " ".join(stdlib_sentences(40, skip=560))
    ids = torch.tensor([tokenizer.encode(held_out)[:128]])
    with torch.no_grad():
        perplexity = math.exp(float(model(ids, labels=ids).loss))
    assert perplexity < len(tokenizer) / 3, perplexity  # uniform guessing: the vocabulary size (measured ~130)

    for name, tokens in (("prefill", N), ("decode", 1)):
        llmexport.export(model, tokens, C, -100.0, 17, tmp_path / f"{name}.onnx")
    prompt = tokenizer.encode("Return the")
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False)[0, len(prompt):]
    runner = llmrun.Runner(_session(tmp_path / "prefill.onnx"), _session(tmp_path / "decode.onnx"))
    assert runner.generate(prompt, 10) == expected.tolist()


def test_runner_generates_and_scores_like_transformers(tmp_path: Path) -> None:
    """llmrun.Runner over the fp32 graphs: greedy tokens equal to transformers' generate(), perplexity equal to
    the model's own (teacher forcing, prompts longer than the prefill length run in chunks), and every feed
    recorded for calibration, the decode graph's with a cache that is not empty."""
    import math

    import torch

    from qnnbuild.toolchain.llm import export as llmexport
    from qnnbuild.toolchain.llm import run as llmrun
    from qnnbuild.toolchain.sources.hfexport import import_transformers
    from tests.hfmodels import stdlib_sentences, trained_llama

    trained_llama(tmp_path / "llama", stdlib_sentences(200), steps=60)
    tf = import_transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path / "llama")).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(str(tmp_path / "llama"))
    for name, tokens in (("prefill", N), ("decode", 1)):
        llmexport.export(model, tokens, C, -100.0, 17, tmp_path / f"{name}.onnx")
    runner = llmrun.Runner(_session(tmp_path / "prefill.onnx"), _session(tmp_path / "decode.onnx"))
    prompt = tokenizer.encode("The file is")
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt):]
    assert runner.generate(prompt, 6) == expected.tolist()
    assert runner.runs == {"prefill": 1, "decode": 5}
    assert np.abs(runner.cache[0]).sum() > 0  # the decode steps read and wrote a real cache

    ids = tokenizer.encode(" ".join(stdlib_sentences(3, skip=300)))[:C]  # several prefill chunks
    with torch.no_grad():
        want = math.exp(float(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss))
    assert llmrun.perplexity(runner, [ids]) == pytest.approx(want, rel=1e-4)


def test_calibration_runs_one_graph_at_a_time_and_records_what_one_pass_records(tmp_path: Path) -> None:
    """llmquant.calibration_ranges runs every line's prefill, then resumes every line in the decode graph (one
    session with the weights open at a time): the ranges and runs are those of running each line through both
    graphs in turn, for lines that fit one prefill chunk, span several, and end on a single token (which feed()
    sends to decode)."""
    from qnnbuild.toolchain.llm import export as llmexport
    from qnnbuild.toolchain.llm import quant as llmquant
    from qnnbuild.toolchain.llm import run as llmrun
    from qnnbuild.toolchain.quant.ranges import RangeSession

    model = _tiny("llama")
    (tmp_path / "decode").mkdir()
    llmexport.export(model, N, C, -100.0, 17, tmp_path / "model.onnx")
    llmexport.export(model, 1, C, -100.0, 17, tmp_path / "decode" / "model.onnx")
    lines = [[3, 9, 27], list(range(1, 2 * N + 2)), list(range(40, 40 + N + 5))]  # 1 chunk; 2 and a token; 2
    ranges, runs = llmquant.calibration_ranges(tmp_path, lines, 4)
    sessions = [RangeSession(tmp_path / "model.onnx"), RangeSession(tmp_path / "decode" / "model.onnx")]
    runner = llmrun.Runner(*sessions)
    for ids in lines:
        runner.generate(ids[:C - 4], 4)
    assert runs == runner.runs and runs["decode"] > 3 * 3
    assert ranges == {"prefill": sessions[0].ranges, "decode": sessions[1].ranges}
