"""Run a built context binary on the HTP emulator: `qnnbuild.load(recipe, target).run({...})`, or for an LLM
`.generate(prompt, max_new_tokens)` and, with a chat template, `.chat(message)`.

What the seed's QNNInference class promised: the caller passes and gets float arrays; if the deliverable
takes or returns quantized tensors, this module quantizes and dequantizes with the scale/offset recorded in
io_spec.json (QNN's convention: real = (q + offset) · scale).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qnnbuild.errors import UsageError
from qnnbuild.toolchain.data.samples import with_batch

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
          "tensor(uint16)": np.uint16, "tensor(int8)": np.int8, "tensor(int16)": np.int16,
          "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class Reply:
    """What chat() answered (str() is the text), and how fast: the emulator's speed, not a phone's."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    seconds: float  # prefill of the prompt and every decode step

    def __str__(self) -> str:
        return self.text

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds else 0.0


class Deployed:
    """One target's deliverable, loaded on the HTP emulator."""

    def __init__(self, folder: Path) -> None:
        from qnnbuild.toolchain.runtime import qnn

        self.folder = folder
        self.spec = json.loads((folder / "io_spec.json").read_text())
        with qnn.stdout_to_stderr():
            self.session = qnn.deliverable_session(folder)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.quant = {v["name"]: v.get("quantization") for v in self.spec["inputs"] + self.spec["outputs"]}

    def _feed(self, name: str, value: Any) -> np.ndarray:
        if name not in self.inputs:
            raise UsageError(f"the model has no input {name!r}; inputs: {', '.join(self.inputs)}")
        meta = self.inputs[name]
        array = np.asarray(value)
        shape = list(meta.shape)
        array = with_batch(array, shape)
        if list(array.shape) != shape:
            raise UsageError(f"input {name!r}: shape {list(array.shape)}, the model wants {shape}")
        kind = DTYPES.get(meta.type)
        if kind is None:
            raise UsageError(f"input {name!r}: the deliverable takes {meta.type}, which infer cannot feed")
        q = self.quant.get(name)
        if q and "scale" in q and np.dtype(kind).kind in "iu":  # quantized: real = (q + offset) · scale
            info = np.iinfo(kind)
            scaled = np.round(array.astype(np.float64) / q["scale"]) - q["offset"]
            return np.asarray(np.clip(scaled, info.min, info.max).astype(kind))
        return _exact(name, array, np.dtype(kind))

    def _runner(self) -> tuple[Any, dict[str, Any], list[int]]:
        """(a Runner over both graphs, llm.json's content, the ids generation stops at)."""
        from qnnbuild.toolchain.llm import run as llmrun
        from qnnbuild.toolchain.runtime import qnn

        llm = self.spec.get("llm")
        if llm is None:
            raise UsageError(f"{self.folder} is not an LLM deliverable (no llm: in its export): use run()")
        with qnn.stdout_to_stderr():
            runner = llmrun.Runner(self.session, qnn.deliverable_session(self.folder, graph="decode"))
        stop = llm.get("eos_token_ids") or [llm["eos_token_id"]]
        return runner, llm, [i for i in stop if i is not None]

    def generate(self, prompt: str | list[int], max_new_tokens: int = 32) -> str | list[int]:
        """An LLM deliverable: greedy generation on the emulator, prefill then decode. Text in (tokenized with
        the deliverable's tokenizer.json, after the model's bos token), text out; token ids in, the prompt's
        ids and the new ones out. Stops at the eos token or the context length."""
        runner, llm, stop = self._runner()
        if isinstance(prompt, str):
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
            ids = [llm["bos_token_id"]] * (llm["bos_token_id"] is not None) + tokenizer.encode(prompt).ids
            return str(tokenizer.decode(self._generate(runner, ids, max_new_tokens, stop)))
        return [*prompt, *self._generate(runner, list(prompt), max_new_tokens, stop)]

    @staticmethod
    def _generate(runner: Any, ids: list[int], max_new_tokens: int, stop: list[int]) -> list[int]:
        from qnnbuild.toolchain.runtime import qnn

        with qnn.stdout_to_stderr():  # QNN's emulator prints to stdout on its first run; stdout is the answer
            return list(runner.generate(ids, max_new_tokens, stop=stop))

    def chat(self, message: str | list[dict[str, str]], max_new_tokens: int = 64) -> Reply:
        """An LLM deliverable with a chat template: the user's message (or a whole conversation, [{role,
        content}]) in the model's own chat format, greedy answer until the turn ends, with its speed."""
        import time

        from tokenizers import Tokenizer

        from qnnbuild.toolchain.llm import chat

        if chat.template(self.folder) is None:
            raise UsageError(f"{self.folder}: the model's tokenizer has no chat template: use generate() / --prompt")
        messages = [{"role": "user", "content": message}] if isinstance(message, str) else message
        runner, _, stop = self._runner()
        tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        ids = tokenizer.encode(chat.render(self.folder, messages), add_special_tokens=False).ids
        if len(ids) >= runner.context:
            raise UsageError(f"the conversation is {len(ids)} tokens; the context holds {runner.context}")
        started = time.perf_counter()
        new = self._generate(runner, ids, max_new_tokens, stop)
        seconds = time.perf_counter() - started
        answer = new[:-1] if new and new[-1] in stop else new
        return Reply(str(tokenizer.decode(answer, skip_special_tokens=True)).strip(), new, len(ids), seconds)

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Outputs by name, as float32, for inputs by name (a missing leading batch dimension is added)."""
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise UsageError(f"missing input(s): {', '.join(missing)}")
        names = [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, {n: self._feed(n, v) for n, v in feeds.items()})
        out = {}
        for name, value in zip(names, values, strict=True):
            q = self.quant.get(name)
            real = (value.astype(np.float32) + q["offset"]) * q["scale"] if np.issubdtype(value.dtype, np.integer) \
                and q else value
            out[name] = np.asarray(real, dtype=np.float32)
        return out


def _exact(name: str, array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """The input in the deliverable's own dtype (token ids int64, bytes int32/uint8, images float32); a value that
    type cannot hold exactly is refused by name instead of silently rounded or wrapped."""
    if dtype.kind == "f" or array.dtype == dtype:
        return np.asarray(array, dtype=dtype)
    if dtype.kind in "iub":
        if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array == np.round(array))):
            raise UsageError(f"input {name!r}: the model takes {dtype.name}; got {array.dtype.name} values with "
                             "fractions")
        if dtype.kind in "iu" and array.size:
            info = np.iinfo(dtype)
            low, high = array.min(), array.max()
            if low < info.min or high > info.max:
                raise UsageError(f"input {name!r}: the model takes {dtype.name} ({info.min}..{info.max}); got values "
                                 f"{low}..{high}")
    return np.asarray(array).astype(dtype)


def deliverable(recipe: str, target: str, artifacts: str | Path = "artifacts",
                warn: Callable[[str], None] | None = None) -> Path:
    """The folder of the current context-binary output of `recipe` for `target`; `warn` (a Python warning by
    default) hears it when that build no longer matches the recipe or its inputs: it is still what runs."""
    from qnnbuild.engine.build.session import Session, stale
    from qnnbuild.engine.recipe.plancache import load_plan
    from qnnbuild.engine.store.local import Store

    plan = load_plan(recipe, Path(artifacts))
    found = [i for i in plan.instances if i.kind == "context-binary" and i.target == target]
    if not found:
        targets = sorted({i.target for i in plan.instances if i.kind == "context-binary" and i.target})
        raise UsageError(f"{recipe}: no context-binary for target {target!r}; built targets: {', '.join(targets)}")
    folder = Store(Path(artifacts)).view(plan.recipe, found[0].stage, target)
    if not (folder / "io_spec.json").is_file():
        raise UsageError(f"{folder} is not built yet: run `qnnbuild run {recipe}` first")
    out_of_date = stale(Session(plan, Path(artifacts), readonly=True), {found[0].id})
    if out_of_date:
        message = (f"{folder} was built from an earlier state of {recipe} or its inputs (out of date: "
                   f"{', '.join(out_of_date)}); running it as built. `qnnbuild run {recipe}` rebuilds it")
        (warn or functools.partial(warnings.warn, stacklevel=3))(message)
    return folder


def load(recipe: str, target: str, artifacts: str | Path = "artifacts") -> Deployed:
    """The deliverable of `recipe` for `target`, ready to run (a Python warning when it is out of date)."""
    return Deployed(deliverable(recipe, target, artifacts))


def _stdout_done() -> None:
    """The answer is on stdout; QNN's emulator writes a line there when its sessions close (at exit), so what
    follows goes to stderr."""
    import os

    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np

    from qnnbuild.toolchain.data.metrics import is_classifier

    deployed = Deployed(deliverable(args.recipe, args.target, args.artifacts,
                                    lambda message: print(f"qnnbuild: warning: {message}", file=sys.stderr)))
    if args.prompt is not None:
        print(deployed.generate(args.prompt, args.max_new_tokens), flush=True)
        _stdout_done()
        return 0
    if args.chat is not None:
        reply = deployed.chat(args.chat, args.max_new_tokens)
        print(reply.text, flush=True)
        _stdout_done()
        print(f"{len(reply.tokens)} tokens in {reply.seconds:.1f} s: {reply.tokens_per_second:.2f} tokens/s on the "
              f"HTP emulator (prompt {reply.prompt_tokens} tokens)", file=sys.stderr)
        return 0
    feeds = {}
    for item in args.input:
        name, _, file = item.rpartition("=")
        if not name:
            if len(deployed.inputs) != 1:
                raise UsageError(f"the model has inputs {', '.join(deployed.inputs)}: write --input NAME=FILE.npy")
            name = next(iter(deployed.inputs))
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--input {item}: cannot read {file}: {exc}") from None
    outputs = deployed.run(feeds)
    for name, value in outputs.items():
        line = f"{name}: shape {list(value.shape)} {value.dtype}, min {value.min():.4g}, max {value.max():.4g}"
        if is_classifier(value.shape):
            top = np.argsort(value[0])[::-1][:5]
            line += "; top-5 " + ", ".join(f"{int(i)} ({value[0, i]:.3f})" for i in top)
        print(line)
    if args.output:
        np.savez(args.output, **outputs)  # type: ignore[arg-type]
        print(f"wrote {args.output}")
    return 0
