"""Running the static prefill/decode graphs of an LLM (toolchain/llm/export.py) on any onnxruntime session — fp32
or QDQ on the CPU, the context binaries on the HTP emulator: greedy generation, perplexity, and the feeds each
graph saw (calibration samples in which the decode graph sees real caches, not zeros).

A prompt longer than the prefill length runs in chunks of it, the cache carried between them; a shorter one is
padded after its end: the pad rows are written at positions past the prompt, never attended (the mask covers
the prompt only), and overwritten by the tokens that follow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Feeds = dict[str, Any]


@dataclass
class Runner:
    """One sequence through the two graphs; `record` receives (graph, feeds) of every run."""

    prefill: Any
    decode: Any
    record: Callable[[str, Feeds], None] | None = None
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
        self.reset()

    def reset(self) -> None:
        import numpy as np

        self.cache = [np.zeros([int(d) for d in i.shape], np.float32) for i in self.prefill.get_inputs()[3:]]
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
        if self.record is not None:
            self.record(graph, feeds)
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

    def generate(self, prompt: list[int], new_tokens: int, stop: int | None = None) -> list[int]:
        """Greedy: the prompt through prefill, then one decode step per new token."""
        import numpy as np

        self.reset()
        tokens = [int(np.argmax(self.feed(prompt)[-1]))]
        while len(tokens) < new_tokens and tokens[-1] != stop and self.length < self.context:
            tokens.append(int(np.argmax(self._run("decode", [tokens[-1]], 1)[0])))
        return tokens

    def nll(self, ids: list[int]) -> tuple[float, int]:
        """Summed negative log-likelihood of ids[1:] given what precedes each (teacher forcing), and the count."""
        import numpy as np

        self.reset()
        logits = self.feed(ids[:-1]).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        return float(-log_probs[np.arange(len(ids) - 1), ids[1:]].sum()), len(ids) - 1


def perplexity(runner: Runner, sequences: list[list[int]]) -> float:
    """exp of the mean negative log-likelihood per predicted token over `sequences`."""
    import math

    total, count = 0.0, 0
    for ids in sequences:
        nll, n = runner.nll(ids[:runner.context])
        total, count = total + nll, count + n
    return math.exp(total / max(count, 1))


def agreement(runner: Runner, reference: Runner, prompts: list[list[int]], new_tokens: int) -> float:
    """Share of greedily generated tokens equal to the reference's, position by position, over `prompts`."""
    same = total = 0
    for prompt in prompts:
        want = reference.generate(prompt, new_tokens)
        got = runner.generate(prompt, new_tokens)
        same += sum(a == b for a, b in zip(want, got, strict=False))
        total += len(want)
    return same / max(total, 1)


def evaluate(runners: dict[str, Runner], texts: list[list[int]], new_tokens: int = 32, prompt_tokens: int = 8,
             progress: Callable[[int, int, str], None] = lambda done, total, unit: None) -> dict[str, Any]:
    """Perplexity of each runner on `texts` (teacher forcing) and the share of greedy tokens equal to fp32's,
    generating `new_tokens` after the first `prompt_tokens` of each text; `progress` hears (texts done, of all
    the passes over them)."""
    prompts = [ids[:prompt_tokens] for ids in texts if len(ids) > 1]
    total = len(texts) * len(runners) + len(prompts) * (len(runners) - 1)
    done = 0
    found: dict[str, Any] = {"perplexity": {}, "greedy_agreement": {}}
    for model, runner in runners.items():
        found["perplexity"][model] = round(perplexity(runner, texts), 4)
        done += len(texts)
        progress(done, total, "texts")
    for model, runner in runners.items():
        if model != "fp32":
            found["greedy_agreement"][model] = round(agreement(runner, runners["fp32"], prompts, new_tokens), 4)
            done += len(prompts)
            progress(done, total, "texts")
    return found


def decode_speed(runner: Runner) -> float:
    """Decode tokens/s of `runner` so far."""
    return round(runner.runs["decode"] / runner.seconds["decode"], 2) if runner.seconds["decode"] else 0.0
