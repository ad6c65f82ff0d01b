"""Running the static prefill/decode graphs of an LLM (toolchain/llm/export.py) on any onnxruntime session — fp32
or QDQ on the CPU, the context binaries on the HTP emulator: greedy generation and perplexity (and calibration,
in which the decode graph sees real caches, not zeros).

A prompt longer than the prefill length runs in chunks of it, the cache carried between them; a shorter one is
padded after its end: the pad rows are written at positions past the prompt, never attended (the mask covers
the prompt only), and overwritten by the tokens that follow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Paused:
    """Where a sequence stands between two runs: its cache, mask and length (a runner resumes it, perhaps with
    other sessions: calibration runs every line's prefill, then every line's decode steps)."""

    cache: list[Any]
    mask: Any
    length: int


@dataclass
class Runner:
    """One sequence through the two graphs."""

    prefill: Any
    decode: Any
    cache: list[Any] = field(default_factory=list)
    length: int = 0  # tokens in the cache
    seconds: dict[str, float] = field(default_factory=lambda: {"prefill": 0.0, "decode": 0.0})
    runs: dict[str, int] = field(default_factory=lambda: {"prefill": 0, "decode": 0})

    def __post_init__(self) -> None:
        import numpy as np

        inputs = self.prefill.get_inputs()
        self.names = [i.name for i in inputs]
        self.tokens = int(inputs[0].shape[1])  # the prefill length N
        self.context = int(inputs[2].shape[1])  # C
        self.mask = np.zeros((1, self.context), np.int64)
        self.shapes = [[int(d) for d in i.shape] for i in inputs[3:]]  # the caches' [1, kv_heads, C, head_dim]
        self.reset()

    def reset(self) -> None:
        import numpy as np

        self.cache = [np.zeros(shape, np.float32) for shape in self.shapes]
        self.mask[:] = 0
        self.length = 0

    def _run(self, graph: str, ids: list[int], count: int) -> Any:
        """Run `graph` on `ids` (padded to its length) whose first `count` are real; returns their logits."""
        import numpy as np

        session = self.prefill if graph == "prefill" else self.decode
        width = self.tokens if graph == "prefill" else 1
        if self.length + width > self.context:
            raise ValueError(f"the sequence passes the context length {self.context}")
        padded = np.zeros((1, width), np.int64)
        padded[0, :len(ids)] = ids
        positions = np.arange(self.length, self.length + width, dtype=np.int64)[None]
        self.mask[0, self.length:self.length + count] = 1
        feeds = dict(zip(self.names, [padded, positions, self.mask.copy(), *self.cache], strict=True))
        started = time.perf_counter()
        out = session.run(None, feeds)
        self.seconds[graph] += time.perf_counter() - started
        self.runs[graph] += 1
        self.cache = out[1:]
        self.length += count
        return out[0][0, :count]

    def feed(self, ids: list[int]) -> Any:
        """Put `ids` into the cache (prefill chunks, then decode for a last single token); their logits."""
        import numpy as np

        logits = []
        for start in range(0, len(ids), self.tokens):
            chunk = ids[start:start + self.tokens]
            if (len(chunk) == 1 and self.length > 0) or self.length + self.tokens > self.context:
                logits += [self._run("decode", [token], 1) for token in chunk]  # the padding would not fit
            else:
                logits.append(self._run("prefill", chunk, len(chunk)))
        return np.concatenate(logits)

    def generate(self, prompt: list[int], new_tokens: int, stop: Collection[int] = ()) -> list[int]:
        """Greedy: the prompt through prefill, then one decode step per new token, up to a `stop` id."""
        self.reset()
        return self.go_on(self.feed(prompt)[-1], new_tokens, stop)

    def go_on(self, logits: Any, new_tokens: int, stop: Collection[int] = ()) -> list[int]:
        """Greedy decode steps from the cache as it stands, the first token from `logits` (the last position's)."""
        import numpy as np

        tokens = [int(np.argmax(logits))]
        while len(tokens) < new_tokens and tokens[-1] not in stop and self.length < self.context:
            tokens.append(int(np.argmax(self._run("decode", [tokens[-1]], 1)[0])))
        return tokens

    def prefilled(self, ids: list[int]) -> int:
        """How many of `ids` feed() would put through the prefill graph from the cache as it stands: always the
        first ones (after the first chunk that does not fit, or a last single token, the rest go to decode)."""
        length = count = 0
        for start in range(0, len(ids), self.tokens):
            width = len(ids[start:start + self.tokens])
            if (width == 1 and self.length + length > 0) or self.length + length + self.tokens > self.context:
                break
            length, count = length + width, count + width
        return count

    def pause(self) -> Paused:
        """Where the sequence stands. The cache rows past the last prefill chunk's end were never written (zeros)
        and are not kept: at a context of thousands, a short line's cache is mostly those."""
        rows = min(self.context, self.length + self.tokens)
        return Paused([c[:, :, :rows].copy() for c in self.cache], self.mask.copy(), self.length)

    def resume(self, paused: Paused) -> None:
        self.reset()
        for cache, kept in zip(self.cache, paused.cache, strict=True):
            cache[:, :, :kept.shape[2]] = kept
        self.mask[:] = paused.mask
        self.length = paused.length


    def nll(self, ids: list[int]) -> tuple[float, int]:
        """Summed negative log-likelihood of ids[1:] given what precedes each (teacher forcing), and the count."""
        nll, count, _ = self.score(ids)
        return nll, count

    def score(self, ids: list[int]) -> tuple[float, int, list[int]]:
        """One teacher-forced pass over `ids`: the summed negative log-likelihood of ids[1:], their count, and
        the model's next-token argmax at every position (what token agreement compares)."""
        import numpy as np

        self.reset()
        logits = self.feed(ids[:-1]).astype(np.float64)
        predicted = [int(t) for t in logits.argmax(axis=-1)]
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        return float(-log_probs[np.arange(len(ids) - 1), ids[1:]].sum()), len(ids) - 1, predicted


def perplexity(runner: Runner, sequences: list[list[int]]) -> float:
    """exp of the mean negative log-likelihood per predicted token over `sequences`."""
    import math

    total, count = 0.0, 0
    for ids in sequences:
        nll, n = runner.nll(ids[:runner.context])
        total, count = total + nll, count + n
    return math.exp(total / max(count, 1))


def first_divergence(got: list[list[int]], want: list[list[int]]) -> float:
    """Mean number of greedily generated tokens in `got` equal to the reference's `want` before the first that
    differs (all of them when none does), over the prompts. Free-running: after one divergence the continuations
    part, so only the stretch before it says anything."""
    lengths = [next((i for i, (a, b) in enumerate(zip(w, g, strict=False)) if a != b), min(len(w), len(g)))
               for w, g in zip(want, got, strict=True)]
    return sum(lengths) / max(len(lengths), 1)


Score = tuple[float, int, list[int]]  # one text's summed NLL, predicted positions, next-token argmax per position
PROMPT_TOKENS = 8  # greedy generation starts after this many tokens of a text


def prompts_of(texts: list[list[int]], count: int, prompt_tokens: int = PROMPT_TOKENS) -> list[list[int]]:
    """The first `prompt_tokens` of the first `count` texts: what greedy generation starts from."""
    return [ids[:prompt_tokens] for ids in texts if len(ids) > 1][:count]


def summarize(scores: dict[str, list[Score]]) -> dict[str, Any]:
    """Perplexity per model and token agreement with fp32 from per-text scores in text order (summed in that
    order, so the figures do not depend on how the texts were spread over processes)."""
    import math

    found: dict[str, Any] = {"perplexity": {}, "token_agreement": {}}
    for model, per_text in scores.items():
        nll = count = 0.0
        for n_ll, n, _ in per_text:
            nll, count = nll + n_ll, count + n
        found["perplexity"][model] = round(math.exp(nll / max(count, 1)), 4)
    for model, per_text in scores.items():
        if model != "fp32":
            pairs = [(a, b) for got, want in zip(per_text, scores["fp32"], strict=True)
                     for a, b in zip(got[2], want[2], strict=True)]
            found["token_agreement"][model] = round(sum(a == b for a, b in pairs) / max(len(pairs), 1), 4)
    return found


def diverge(openers: dict[str, Callable[[], Runner]], prompts: list[list[int]], tokens: int,
            progress: Callable[[int], None] = lambda done: None,
            done_with: Callable[[str, Runner], None] = lambda model, runner: None) -> dict[str, float]:
    """first_divergence of each model against fp32, one model's runner open at a time (`openers`: model → how to
    open it); fp32 generates first and its tokens are kept. `progress` hears the generations done so far;
    `done_with` gets each runner when its generations are done, before it is closed."""
    reference = openers["fp32"]()
    want = [reference.generate(prompt, tokens) for prompt in prompts]
    done_with("fp32", reference)
    del reference
    progress(len(prompts))
    found = {}
    for model, opener in openers.items():
        if model != "fp32":
            runner = opener()
            found[model] = round(first_divergence([runner.generate(p, tokens) for p in prompts], want), 3)
            done_with(model, runner)
            del runner
            progress(len(prompts) * (len(found) + 1))
    return found


def decode_speed(runner: Runner) -> float:
    """Decode tokens/s of `runner` so far."""
    return round(runner.runs["decode"] / runner.seconds["decode"], 2) if runner.seconds["decode"] else 0.0
