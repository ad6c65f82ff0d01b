"""`qnnbuild` command line: parse arguments, call one module per command, map errors to exit statuses.

0 ok · 1 a build (or verification) failed · 2 bad input. No traceback unless --debug.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from qnnbuild.common.version import VERSION
from qnnbuild.engine.recipe.limits import MAX_PROBLEMS
from qnnbuild.errors import QnnbuildError, RecipeError


def _add_common(p: argparse.ArgumentParser, *, recipe: bool = True, artifacts: bool = True) -> None:
    if recipe:
        p.add_argument("recipe", help="path to the recipe YAML")
    if artifacts:
        p.add_argument("--artifacts", default="artifacts", help="artifacts folder (default: ./artifacts)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # not over `qnnbuild --debug CMD`
                   help="show tracebacks")


def _add_cache(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="URL", default=os.environ.get("QNNBUILD_CACHE") or None,
                   help="shared cache, any fsspec URL: s3://bucket/prefix (endpoint: AWS_ENDPOINT_URL), "
                        "file:///shared/folder (default: $QNNBUILD_CACHE)")
    p.add_argument("--cache-mode", choices=["readwrite", "read"], default="readwrite",
                   help="read: never write to the shared cache (laptops); readwrite: upload what ran (CI)")
    p.add_argument("--cache-required", action="store_true",
                   help="exit 1 when the shared cache failed (for CI jobs that must populate it)")


def _add_cache_commands(sub: Any) -> None:
    p = sub.add_parser("cache", help="the shared cache: push what a recipe built here, gc old entries")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    push = verbs.add_parser("push", help="upload what RECIPE... built locally to the shared cache")
    push.add_argument("recipe", nargs="+", help="recipe YAML files")
    _add_common(push, recipe=False)
    gc = verbs.add_parser("gc", help="delete shared-cache entries older than --older-than DAYS")
    gc.add_argument("--older-than", type=float, required=True, metavar="DAYS")
    _add_common(gc, recipe=False)
    for verb in (push, gc):
        verb.add_argument("--cache", metavar="URL", default=os.environ.get("QNNBUILD_CACHE") or None,
                          help="shared cache URL (default: $QNNBUILD_CACHE)")


def _init_parser(sub: Any) -> None:
    p = sub.add_parser("init", help="write a first recipe for a model (ONNX, TFLite, Keras, SavedModel, Hugging "
                                    "Face folder)")
    p.add_argument("model", help="an .onnx, .tflite, .keras/.h5 file, a SavedModel folder or a Hugging Face folder")
    p.add_argument("--target", nargs="+", metavar="T", help="Snapdragon parts (default: SM8650)")
    p.add_argument("--precision", default="w8a16", choices=["w8a8", "w8a16", "w4a16", "w16a16"])
    p.add_argument("-o", "--output", help="the recipe to write (default: MODEL's name .yaml); never overwritten")
    _add_common(p, recipe=False, artifacts=False)


def _infer_parser(sub: Any) -> None:
    p = sub.add_parser("infer", help="run a built target on the HTP emulator")
    _add_common(p)
    p.add_argument("--target", required=True, help="Snapdragon part, e.g. SM8650")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", action="append", metavar="[NAME=]FILE.npy",
                       help="an input array (.npy); NAME= may be left out for a single-input model")
    given.add_argument("--prompt", help="an LLM deliverable: generate greedily after this text")
    given.add_argument("--chat", metavar="MESSAGE", help="an LLM deliverable with a chat template: answer this "
                       "user message in the model's chat format, and say how many tokens/s")
    p.add_argument("--max-new-tokens", type=int, default=32, help="with --prompt or --chat (default: 32)")
    p.add_argument("-o", "--output", help="write the outputs to this .npz file")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="qnnbuild", description="Incremental, reproducible builds for Qualcomm NPUs.")
    top.add_argument("--version", action="version", version=f"qnnbuild {VERSION}")
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _build_parsers(sub)
    _store_parsers(sub)
    _deliverable_parsers(sub)
    _init_parser(sub)
    p = sub.add_parser("schema", help="print the recipe JSON Schema")
    _add_common(p, recipe=False, artifacts=False)
    _add_cache_commands(sub)
    p = sub.add_parser("doctor", help="toolchain versions and which QNN backends load here")
    _add_common(p, recipe=False, artifacts=False)
    return top


def _build_parsers(sub: Any) -> None:
    """run, status, dag: what a build does and would do."""
    p = sub.add_parser("run", help="build what is stale")
    p.add_argument("recipe", nargs="+", help="recipe YAML files: several are built in one run, shared stages once")
    _add_common(p, recipe=False)
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="instances in flight (default: 1; with --scheduler, the cluster's worker threads + 1)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run stale instances on a Dask cluster: tcp://HOST:PORT, or local:N worker processes here "
                        "(needs --cache)")
    p.add_argument("--only", action="append", default=[], metavar="STAGE", help="build only STAGE and its inputs")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="rebuild STAGE even if cached")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout when done")
    _add_cache(p)

    p = sub.add_parser("status", help="what would run, and why")
    _add_common(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("dag", help="show the stage graph")
    _add_common(p, artifacts=False)
    p.add_argument("--format", choices=["text", "mermaid", "dot"], default="text")


def _store_parsers(sub: Any) -> None:
    """clean, gc, verify: the artifacts folder and its store."""
    p = sub.add_parser("clean", help="remove a recipe's outputs, or everything under the artifacts folder")
    p.add_argument("recipe", nargs="?", help="recipe whose views and lock to remove (default: everything)")
    _add_common(p, recipe=False)

    p = sub.add_parser("gc", help="drop store entries that no lock file references")
    _add_common(p, recipe=False)

    p = sub.add_parser("verify", help="re-hash the store and the current outputs, or rebuild and compare")
    p.add_argument("recipe", nargs="?", help="only this recipe's current outputs")
    p.add_argument("--rebuild", action="store_true", help="rebuild RECIPE from scratch in a temporary store and "
                   "compare every output digest with its lock file")
    p.add_argument("-j", "--jobs", type=int, default=1)
    _add_common(p, recipe=False)


def _deliverable_parsers(sub: Any) -> None:
    """release, infer, report, diff: what a build gives."""
    p = sub.add_parser("release", help="a reproducible tar.gz of every target's deliverable")
    _add_common(p)
    p.add_argument("-o", "--output", required=True, help="the bundle to write (.tar.gz)")

    _infer_parser(sub)

    p = sub.add_parser("report", help="write an HTML report of the last build")
    _add_common(p)
    p.add_argument("-o", "--output", help="HTML file (default: artifacts/<recipe>/report.html)")

    p = sub.add_parser("diff", help="two builds side by side: accuracy, SQNR, cycles, slowest ops, binary size")
    p.add_argument("a", metavar="A", help="a recipe file (its last build) or a qnnbuild.lock")
    p.add_argument("b", metavar="B", help="the build to compare it with")
    p.add_argument("--json", action="store_true")
    _add_common(p, recipe=False)


# command → "module:function" of qnnbuild.commands, imported only when that command runs (a no-op `run` must
# not pay for report's or infer's imports)
COMMANDS = {"run": "run:cmd_run", "status": "status:cmd_status", "dag": "show:cmd_dag", "schema": "show:cmd_schema",
            "infer": "infer:cmd_infer", "init": "init:cmd_init", "report": "report:cmd_report",
            "release": "release:cmd_release", "cache": "cache:cmd_cache", "diff": "diff:cmd_diff",
            "clean": "maintenance:cmd_clean", "gc": "maintenance:cmd_gc", "verify": "maintenance:cmd_verify",
            "doctor": "maintenance:cmd_doctor"}


def command(name: str) -> Callable[[argparse.Namespace], int]:
    module, _, function = COMMANDS[name].partition(":")
    found: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(f"qnnbuild.commands.{module}"),
                                                         function)
    return found


MAX_SHOWN_PROBLEMS = MAX_PROBLEMS + 1  # the loader stops at 50 and says so in one more line


def _report_problems(exc: RecipeError, *, json_out: bool) -> None:
    """The first problems on stderr, then how many more; `--json` carries every one of them on stdout."""
    n = len(exc.problems)
    for problem in exc.problems[:MAX_SHOWN_PROBLEMS]:
        print(problem, file=sys.stderr)
    if n > MAX_SHOWN_PROBLEMS:
        print(f"... and {n - MAX_SHOWN_PROBLEMS} more problems", file=sys.stderr)
    print(f"qnnbuild: {n} problem{'s' if n != 1 else ''} in the recipe", file=sys.stderr)
    if json_out:
        problems = [{"file": p.file, "line": p.line, "column": p.column, "path": p.path, "message": p.message}
                    for p in exc.problems]
        print(json.dumps({"ok": False, "error": "recipe", "problems": problems}, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return command(args.command)(args)
    except QnnbuildError as exc:
        if args.debug:
            raise
        if isinstance(exc, RecipeError):
            _report_problems(exc, json_out=bool(getattr(args, "json", False)))
        else:
            print(f"qnnbuild: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("qnnbuild: interrupted; nothing half-written was published", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system refused (a full disk, a folder that cannot be made): say where
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"qnnbuild: {where}{exc.strerror or exc} (--debug shows where it happened)", file=sys.stderr)
        return 1
