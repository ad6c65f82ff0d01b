"""What every stage kind declares, and what it is handed when it runs.

A stage kind is plain data plus one `run` function (doit's idea of a task as a dict, with types). The engine
never looks inside a stage; a stage never looks at the engine. `run` may execute in a fresh worker process,
so everything it receives is JSON-serialisable.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qnnbuild.common.atomic import write_json
from qnnbuild.errors import StageFailed

Params = dict[str, Any]
PROGRESS_EVERY_S = 0.5
_PROGRESS_WRITTEN: dict[Path, tuple[float, float]] = {}  # progress file → (last write, first sample's time)
PREPROCESSING = "preprocessing"  # a Hugging Face source's tokenizer files, carried from export to the deliverable


@dataclass(frozen=True)
class StageRun:
    """One execution of one stage instance.

    `inputs` maps each reference name (e.g. `model`) to the upstream instance's output folder; `files` maps
    each declared file input to its absolute path; `out` is an empty folder the stage fills and that is
    published atomically afterwards (the stage never writes anywhere else).
    """

    recipe: str
    stage: str
    instance: str
    params: Params
    inputs: dict[str, Path]
    files: dict[str, Path]
    out: Path
    target: dict[str, Any] | None = None
    root: Path = Path()  # the recipe's folder: where a torch factory's own modules live
    targets: list[dict[str, Any]] = field(default_factory=list)  # every recipe target (kinds with all_targets)
    reads: list[Path] = field(default_factory=list)  # files the stage discovered it read (see `read`)
    progress_file: Path | None = None  # where `progress` writes for the console; None: nobody watches
    spread: Any = None  # on a Dask cluster, the engine's shard runner (toolchain/runtime/shards.Spread); never in JSON

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "stage": self.stage, "instance": self.instance, "params": self.params,
                "inputs": {k: str(v) for k, v in self.inputs.items()},
                "files": {k: str(v) for k, v in self.files.items()}, "out": str(self.out),
                "target": self.target, "root": str(self.root), "targets": self.targets,
                "progress_file": str(self.progress_file) if self.progress_file else None}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> StageRun:
        return cls(recipe=raw["recipe"], stage=raw["stage"], instance=raw["instance"], params=raw["params"],
                   inputs={k: Path(v) for k, v in raw["inputs"].items()},
                   files={k: Path(v) for k, v in raw["files"].items()}, out=Path(raw["out"]),
                   target=raw["target"], root=Path(raw["root"]), targets=raw.get("targets", []),
                   progress_file=Path(raw["progress_file"]) if raw.get("progress_file") else None)

    def require_target(self) -> dict[str, Any]:
        """The target of a per-target stage (the engine always gives one; this only narrows the type)."""
        if self.target is None:
            raise StageFailed(f"{self.instance} runs per target, but got none")
        return self.target

    def read(self, paths: list[Path]) -> None:
        """Record files the stage read that the recipe did not declare (a depfile, as compilers write): the
        engine stores their digests with the entry and rebuilds when one of them changes."""
        self.reads.extend(paths)

    def timings(self, figures: dict[str, Any]) -> None:
        """Wall-clock figures (samples/s, seconds) go here, never into an output: outputs are keyed and must be
        equal for equal inputs. Kept beside the manifest as `.qnnbuild/timings.json`, which `verify` skips."""
        meta = self.out / ".qnnbuild"
        meta.mkdir(parents=True, exist_ok=True)
        (meta / "timings.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")

    def carry(self, ref: str) -> None:
        """Pass the `preprocessing/` folder (a Hugging Face source's tokenizer files) of input `ref` on to this
        stage's outputs: the deliverable at the end of the chain ships what its application needs to prepare
        inputs, and text data finds the tokenizer in any model folder."""
        import shutil

        found = self.inputs[ref] / PREPROCESSING
        if found.is_dir():
            shutil.copytree(found, self.out / PREPROCESSING)

    def progress(self, done: int | None = None, total: int | None = None, unit: str = "samples",
                 phase: str = "") -> None:
        """Where a long stage is, for the console: `done` of `total` `unit` (it shows counts and an ETA), or a
        `phase` without counts (compile: "finalizing the HTP graph"). Written at most twice a second, beside
        the build, never into the outputs."""
        if self.progress_file is None:
            return
        now = time.time()
        last = _PROGRESS_WRITTEN.get(self.progress_file, (0.0, now))
        if done is not None and total and done < total and now - last[0] < PROGRESS_EVERY_S:
            return
        since = last[1] if (done or 0) > 0 else now  # the ETA's rate counts from the first sample
        _PROGRESS_WRITTEN[self.progress_file] = (now, since)
        with contextlib.suppress(OSError):  # a display aid: never worth failing a stage over
            write_json(self.progress_file, {"done": done, "total": total, "unit": unit, "phase": phase,
                                            "since": since}, sort_keys=False, indent=None)

    def watched(self, samples: Any, phase: str = "") -> Any:
        """`samples` (a calibration Source) reporting progress as they are read: how many distinct samples of
        all so far (calibration reads in strides, some methods twice)."""
        return _Watched(samples, lambda seen: self.progress(seen, len(samples), "samples", phase))

    def workers(self) -> int:
        """How many shards per-sample work is spread over (toolchain/runtime/shards): the stage's `workers`, or on a
        Dask cluster its worker threads, or the run's -j (the engine passes it as QNNBUILD_JOBS), or 1."""
        import os

        if self.params.get("workers"):
            return int(self.params["workers"])
        if self.spread is not None:
            return int(self.spread.slots)
        return int(os.environ.get("QNNBUILD_JOBS") or 1)

    def say(self, message: str) -> None:
        """A progress line for the stage log (stdout/stderr of a stage go to its log file)."""
        print(f"[{self.instance}] {message}", file=sys.stderr, flush=True)


class _Watched:
    """A Source that reports how many distinct samples have been read (StageRun.watched)."""

    def __init__(self, samples: Any, report: Callable[[int], None]) -> None:
        self._samples, self._report, self._seen = samples, report, set[int]()

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index: int) -> Any:
        value = self._samples[index]
        if index not in self._seen:
            self._seen.add(index)
            self._report(len(self._seen))
        return value

    def __iter__(self) -> Any:
        return (self[i] for i in range(len(self)))

    def __getattr__(self, name: str) -> Any:  # labels, classes, ...
        return getattr(self._samples, name)


def never(params: Params) -> bool:
    return False


def no_refs(params: Params) -> dict[str, str]:
    return {}


def refs_of(*names: str) -> Callable[[Params], dict[str, str]]:
    """The common case: these parameters each name one upstream stage (absent ones are optional)."""
    def refs(params: Params) -> dict[str, str]:
        return {name: params[name] for name in names if name in params}

    return refs


def no_files(params: Params) -> dict[str, str]:
    return {}


def expects_nothing(params: Params, files: dict[str, Path]) -> list[Path]:
    return []


def no_summary(folder: Path) -> dict[str, Any]:
    return {}


def read_json(folder: Path, name: str) -> Any:
    """An output file of an entry, or None when the entry has none (or an unreadable one)."""
    try:
        return json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None


def no_checks(params: Params) -> list[tuple[tuple[str | int, ...], str]]:
    return []


@dataclass(frozen=True)
class Unfolded:
    """What a stage unfolds into: its own parameters after, and the stages it adds (name → (kind, parameters),
    in build order; their names hold a '.', which recipe names cannot, so they never clash)."""

    params: Params
    stages: dict[str, tuple[str, Params]]


@dataclass(frozen=True)
class StageKind:
    """A stage kind's declaration.

    - `params`: JSON Schema `properties` of its parameters (defaults included: they enter the stage key);
    - `refs(params)`: input name → referenced stage name (the DAG's data edges);
    - `files(params)`: input name → file or folder path relative to the recipe (digested into the key);
    - `checks(params)`: semantic checks the schema cannot express, as (parameter path, message);
    - `fans_out`: runs once per target even when nothing upstream does (compile);
    - `tools`: distributions whose versions change its output (they enter the key); a function of the params
      when only some instances use a tool (tensorflow for a TF-source export);
    - `reproducible`: equal inputs give equal bytes (False for measurements with timings);
    - `discovers(params)`: this instance reports files it read (`StageRun.read`), which then enter its key; on
      a cluster, the files its key's last run read travel with it;
    - `expects(params, files)`: undeclared files it will read, as far as its declared files tell before it runs
      (an ONNX file's external data): sent to a worker with a declared key's first build;
    - `all_targets`: the stage runs once but judges the model against every recipe target (convert);
    - `expand(params)`: spells a preset out (quantize's `precision: w8a16`) before defaults are filled in, so
      a preset and its spelled-out form are one key;
    - `summarize(folder)`: the few figures of an entry that compare builds (`diff`, the report's variants
      table), read one way for everyone: e.g. validate → worst SQNR, top-1; profile → cycles per inference;
    - `ordered`: mapping parameters whose order is data (export's `inputs:` bind the model's arguments in
      that order): the key holds them as [name, value] pairs, since canonical JSON sorts mapping keys;
    - `unkeyed`: parameters that change how a stage runs, never what it writes (validate's `workers`): left out
      of the key, so changing them rebuilds nothing;
    - `spreads`: its per-sample work can run as shards on a Dask cluster (`StageRun.spread`), so on a cluster
      the engine frees the worker slot its coordinating process holds while the shards run;
    - `stays_here(params)`: on a cluster the instance runs on the client all the same: its work is arranging
      entries the client already holds (compile's join of its parts), which a worker would first fetch, then
      upload, for the client to fetch back;
    - `named`: its outputs' file names follow the recipe's name (context-binary's `<recipe>_<target>.*`), so
      the recipe's name enters its key: two recipes that differ only in name do not share its entry;
    - `unfold(name, params)`: stages this one becomes several of (compile's `parts: K`: K part stages and their
      compiles, so the parts build side by side and each is keyed by its own graph), as `Unfolded`.
    """

    name: str
    version: int
    summary: str
    params: dict[str, Any]
    run: Callable[[StageRun], None]
    required: tuple[str, ...] = ()
    refs: Callable[[Params], dict[str, str]] = no_refs
    files: Callable[[Params], dict[str, str]] = no_files
    checks: Callable[[Params], list[tuple[tuple[str | int, ...], str]]] = no_checks
    fans_out: bool = False
    tools: tuple[str, ...] | Callable[[Params], tuple[str, ...]] = ()
    reproducible: bool = True  # False: outputs carry timings, so `verify --rebuild` cannot compare them
    discovers: Callable[[Params], bool] = never
    expects: Callable[[Params, dict[str, Path]], list[Path]] = expects_nothing
    all_targets: bool = False
    extra_schema: dict[str, Any] = field(default_factory=dict)
    ordered: tuple[str, ...] = ()
    unkeyed: tuple[str, ...] = ()
    spreads: bool = False
    expand: Callable[[Params], Params] = lambda params: params  # presets → explicit parameters (before the key)
    summarize: Callable[[Path], dict[str, Any]] = no_summary
    unfold: Callable[[str, Params], Unfolded | None] = lambda name, params: None
    named: bool = False
    stays_here: Callable[[Params], bool] = never

    def key_params(self, params: Params) -> Params:
        """The parameters as the key holds them: `ordered` mappings as lists of [name, value] pairs."""
        return {k: [[n, v] for n, v in value.items()] if k in self.ordered and isinstance(value, dict) else value
                for k, value in params.items() if k not in self.unkeyed}

    def tools_for(self, params: Params) -> tuple[str, ...]:
        return self.tools(params) if callable(self.tools) else self.tools
