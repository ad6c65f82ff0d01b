"""A causal LM from transformers → the two static graphs an NPU runs: prefill (N tokens) and decode (1 token),
with the KV cache as explicit inputs and outputs of a fixed context length C.

Each graph takes `step_ids [1, n]`, `step_positions [1, n]`, `cache_mask [1, C]` (1 where a cache row holds a
token, the new ones included) and `past_key_values.{i}.key|value [1, kv_heads, C, head_dim]`, and returns
`step_logits [1, n, vocab]` and `present.{i}.key|value`, the same buffers with the new rows written at the tokens'
positions: the layout onnxruntime-genai uses with `past_present_share_buffer` (present is past, updated in place).
Nothing has a dynamic shape, so both graphs compile for HTP.

The model's own decoder layers run unchanged (any family whose layers take a 4-D additive mask, rotary position
embeddings and a cache object: Llama, Qwen2, Mistral, ...); only the cache is replaced. New rows are written by a
one-hot matrix product (`past * keep + onehot @ new`) rather than a scatter, and the mask is built from the
positions with a finite `mask_value`, so the graph holds only MatMul, Mul, Add, Equal and Where around the
attention: ops QNN runs, and a mask that quantizes (see the `finite-mask` rewrite).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qnnbuild.errors import StageFailed

# Not onnxruntime-genai's own input_ids / position_ids / attention_mask / logits: those have the prompt's length
# there, and small CPU models in its pipeline pad them to these fixed shapes (toolchain/llm/genai.py)
STEP_INPUTS = ("step_ids", "step_positions", "cache_mask")
STEP_LOGITS = "step_logits"


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of both graphs, in order."""
    parts = [f"{i}.{part}" for i in range(layers) for part in ("key", "value")]
    return ([*STEP_INPUTS, *(f"past_key_values.{p}" for p in parts)],
            [STEP_LOGITS, *(f"present.{p}" for p in parts)])


def shape_of(model: Any) -> dict[str, int]:
    """layers, kv_heads, head_dim and vocab of a transformers causal LM."""
    config = model.config
    heads = config.num_attention_heads
    return {"layers": config.num_hidden_layers, "kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads, "vocab": config.vocab_size}


class _RowWriter:
    """The cache object the decoder layers see: writes each layer's new keys and values into its fixed buffers
    and keeps the results, which become the graph's `present` outputs."""

    def __init__(self, pasts: list[Any], onehot: Any, keep: Any) -> None:
        self.pasts, self.onehot, self.keep = pasts, onehot, keep
        self.presents: list[Any] = []

    def update(self, keys: Any, values: Any, layer_idx: int, **_: Any) -> tuple[Any, Any]:
        import torch

        past_k, past_v = self.pasts[2 * layer_idx], self.pasts[2 * layer_idx + 1]
        new_k = past_k * self.keep + torch.matmul(self.onehot, keys)
        new_v = past_v * self.keep + torch.matmul(self.onehot, values)
        self.presents += [new_k, new_v]
        return new_k, new_v


def static_decoder(model: Any, context_length: int, mask_value: float) -> Any:
    """A torch module computing one step of `model` (prefill or decode: the length of input_ids decides) over a
    static KV cache of `context_length` rows."""
    import torch

    core = model.model
    for needed in ("embed_tokens", "rotary_emb", "layers", "norm"):
        if not hasattr(core, needed):
            raise StageFailed(f"llm: {type(model).__name__} has no {needed}: only decoder families built like "
                              "Llama (embed_tokens, rotary_emb, layers, norm) are exported with a static cache")
    model.config._attn_implementation = "eager"

    class Static(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, position_ids: Any, attention_mask: Any, *past: Any) -> tuple[Any, ...]:
            hidden = core.embed_tokens(input_ids)
            rotary = core.rotary_emb(hidden, position_ids)
            rows = torch.arange(context_length, dtype=position_ids.dtype)
            onehot = (rows[None, :, None] == position_ids[:, None, :]).to(hidden.dtype).unsqueeze(1)  # [1,1,C,n]
            keep = 1 - onehot.sum(-1, keepdim=True)
            causal = rows[None, None, None, :] <= position_ids[:, None, :, None]  # [1,1,n,C]
            visible = (attention_mask[:, None, None, :] > 0) & causal
            mask = torch.where(visible, torch.zeros((), dtype=hidden.dtype),
                               torch.full((), mask_value, dtype=hidden.dtype))
            cache = _RowWriter(list(past), onehot, keep)
            for layer in core.layers:
                out = layer(hidden, attention_mask=mask, position_embeddings=rotary, cache=cache,
                            position_ids=position_ids)
                hidden = out[0] if isinstance(out, tuple) else out
            return (self.model.lm_head(core.norm(hidden)), *cache.presents)

    return Static().eval()


def example(model: Any, tokens: int, context_length: int) -> tuple[Any, ...]:
    """Inputs of the graph taking `tokens` tokens: ids, positions 0..tokens-1, a full mask, an empty cache."""
    import torch

    dims = shape_of(model)
    cache = [torch.zeros(1, dims["kv_heads"], context_length, dims["head_dim"]) for _ in range(2 * dims["layers"])]
    return (torch.zeros(1, tokens, dtype=torch.int64), torch.arange(tokens, dtype=torch.int64)[None],
            torch.ones(1, context_length, dtype=torch.int64), *cache)


def export(model: Any, tokens: int, context_length: int, mask_value: float, opset: int, dest: Path) -> None:
    """Write the graph taking `tokens` tokens (the prefill length, or 1 for decode) to `dest`."""
    import torch

    if tokens > context_length:
        raise StageFailed(f"llm: prefill {tokens} is longer than context_length {context_length}")
    from qnnbuild.toolchain.graph import onnxfile

    inputs, outputs = io_names(shape_of(model)["layers"])
    static = static_decoder(model, context_length, mask_value)
    with torch.no_grad():  # the weights go in afterwards, one at a time; clean's fold does torch's folding
        torch.onnx.export(static, example(model, tokens, context_length), str(dest), input_names=inputs,
                          output_names=outputs, opset_version=opset, dynamo=False, export_params=False,
                          do_constant_folding=False)
        transposed = _transposes_as_inputs(dest, set(inputs))
        missing = onnxfile.attach(dest, _weights(static, transposed))
    if missing != inputs:
        raise StageFailed(f"llm: the exported graph's inputs {sorted(set(missing) - set(inputs))} are not the "
                          "model's parameters (a buffer the exporter left as an input?)")


def _transposes_as_inputs(path: Path, io: set[str]) -> dict[str, list[tuple[str, list[int]]]]:
    """torch exports a Linear as MatMul(x, Transpose(W)) when it does not fold constants. Each Transpose of a
    parameter leaves the graph and its output becomes an input, which _weights fills with the transposed weight:
    onnxruntime's fold would otherwise hold a transposed copy of every weight beside the weights. Returns
    parameter → [(that input, the permutation)]; an unread parameter leaves too."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    params = {i.name: i for i in graph.input if i.name not in io}
    found: dict[str, list[tuple[str, list[int]]]] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in params:
            source = params[node.input[0]].type.tensor_type
            rank = len(source.shape.dim)
            perm = list(next((a.ints for a in node.attribute if a.name == "perm"), range(rank - 1, -1, -1)))
            found.setdefault(node.input[0], []).append((node.output[0], perm))
            dims = [source.shape.dim[p].dim_value for p in perm]
            graph.input.append(helper.make_tensor_value_info(node.output[0], source.elem_type, dims))
        else:
            kept.append(node)
    read = {t for n in kept for t in n.input}
    inputs = [i for i in graph.input if i.name in io or i.name in read]
    del graph.node[:], graph.input[:]
    graph.node.extend(kept)
    graph.input.extend(inputs)
    onnx.save(model, str(path))
    return found


def _weights(static: Any, transposed: dict[str, list[tuple[str, list[int]]]]) -> Iterator[tuple[str, Any]]:
    """(graph input, array) for every parameter, and its transposed forms, one at a time."""
    for name, param in static.named_parameters():
        array = param.detach().numpy()
        yield name, array
        for output, perm in transposed.get(name, []):
            yield output, array.transpose(perm)


SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["context_length", "prefill"],
    "description": "a causal LM as two static graphs: prefill (`prefill` tokens) and decode (1 token), with the KV "
                   "cache as inputs and outputs of `context_length` rows",
    "properties": {"context_length": {"type": "integer", "minimum": 2, "maximum": 32768},
                   "prefill": {"type": "integer", "minimum": 1, "maximum": 4096}},
}
GRAPHS = ("prefill", "decode")


def export_pair(model: Any, llm: dict[str, Any], mask_value: float, opset: int, scratch: Path,
                say: Callable[[str], None]) -> tuple[dict[str, Path], dict[str, Any]]:
    """Both graphs of a transformers causal LM → (graph → ONNX file in `scratch`, llm.json's content: the shapes
    an application and the later stages need)."""
    dims = shape_of(model)
    context, prefill = llm["context_length"], llm["prefill"]
    files = {}
    for graph, tokens in zip(GRAPHS, (prefill, 1), strict=True):
        say(f"{type(model).__name__}: {graph} graph, {tokens} token(s), context {context}, {dims['layers']} layers")
        files[graph] = scratch / graph / "model.onnx"  # a folder each: over 2 GB, torch writes every weight
        files[graph].parent.mkdir()  # to a file named after it, and the two graphs' constants share names
        export(model, tokens, context, mask_value, opset, files[graph])
    config = model.config
    info = {"context_length": context, "prefill": prefill, "graphs": list(GRAPHS), **dims,
            "hidden_size": config.hidden_size, "num_attention_heads": config.num_attention_heads,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "pad_token_id": config.pad_token_id, "model_type": config.model_type}
    return files, info
