"""`command`: a user's own step — an argument list (never a shell) with declared inputs, outputs and params.

Placeholders in `argv`: `{out}` (this stage's output folder, also the working directory), `{out.NAME}` (a
declared output file), `{inputs.NAME}` (a declared input file), `{uses.NAME}` (an upstream stage's output
folder), `{params.NAME}`. Only declared outputs are published; anything else the command leaves in its
folder is dropped, and nothing outside it is ever collected.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from qnnbuild.common import child
from qnnbuild.errors import StageFailed
from qnnbuild.stages.base import Params, StageKind, StageRun

PLACEHOLDER = re.compile(r"\{(out|inputs|uses|params)(?:\.([A-Za-z0-9_./-]+))?\}")
NAME = {"type": "string", "pattern": r"^[A-Za-z0-9_-]+$"}


def _refs(params: Params) -> dict[str, str]:
    return {f"uses.{name}": stage for name, stage in params.get("uses", {}).items()}


def _files(params: Params) -> dict[str, str]:
    return {f"inputs.{name}": path for name, path in params.get("inputs", {}).items()}


def _safe_relative(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and path.parts[0] != ".qnnbuild" \
        and "\\" not in name


def _checks(params: Params) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    outputs = params.get("outputs", [])
    for i, name in enumerate(outputs):
        if not _safe_relative(name):
            problems.append((("outputs", i), f"output {name!r} must be a relative path inside the stage's folder"))
    declared = {"out": set(outputs), "inputs": set(params.get("inputs", {})), "uses": set(params.get("uses", {})),
                "params": set(params.get("params", {}))}
    for i, arg in enumerate(params.get("argv", [])):
        for m in PLACEHOLDER.finditer(arg):
            group, name = m.group(1), m.group(2)
            if name is None and group != "out":
                problems.append((("argv", i), f"placeholder {m.group(0)} needs a name, e.g. {{{group}.NAME}}"))
            elif name is not None and name not in declared[group]:
                problems.append((("argv", i), f"placeholder {m.group(0)} names nothing declared under {group}"))
    return problems


def _expand(arg: str, ctx: StageRun) -> str:
    def value(m: re.Match[str]) -> str:
        group, name = m.group(1), m.group(2)
        if group == "out":
            return str(ctx.out / name) if name else str(ctx.out)
        if group == "inputs":
            return str(ctx.files[f"inputs.{name}"])
        if group == "uses":
            return str(ctx.inputs[f"uses.{name}"])
        return str(ctx.params["params"][name])

    return PLACEHOLDER.sub(value, arg)


def run(ctx: StageRun) -> None:
    argv = [_expand(a, ctx) for a in ctx.params["argv"]]
    ctx.say("$ " + " ".join(argv))
    try:
        status = child.run_program(argv, ctx.out)  # a killed run ends it too
    except OSError as exc:
        raise StageFailed(f"cannot start {argv[0]!r}: {exc.strerror}") from None
    if status != 0:
        raise StageFailed(f"command exited with status {status}: {' '.join(argv)}")
    declared = {str(PurePosixPath(o)) for o in ctx.params["outputs"]}
    links = sorted(o for o in declared if (ctx.out / o).is_symlink())
    if links:
        raise StageFailed(f"declared outputs must be regular files, not symlinks: {', '.join(links)}")
    missing = sorted(o for o in declared if not (ctx.out / o).is_file())
    if missing:
        raise StageFailed(f"command did not write its declared outputs: {', '.join(missing)}")
    for path in sorted(ctx.out.rglob("*"), reverse=True):
        rel = path.relative_to(ctx.out).as_posix()
        if rel == ".qnnbuild" or rel.startswith(".qnnbuild/"):
            continue
        if path.is_symlink() or (path.is_file() and rel not in declared):
            ctx.say(f"dropping undeclared output {rel}")
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


KIND = StageKind(
    name="command",
    version=1,
    summary="a user's own command with declared inputs, outputs and params",
    params={
        "argv": {"type": "array", "minItems": 1, "items": {"type": "string"},
                 "description": "program and arguments, run without a shell in the output folder"},
        "inputs": {"type": "object", "propertyNames": NAME, "additionalProperties": {"type": "string"},
                   "default": {}, "description": "name → file or folder (relative to the recipe)"},
        "uses": {"type": "object", "propertyNames": NAME, "additionalProperties": {"type": "string"},
                 "default": {}, "description": "name → stage whose output folder this one reads"},
        "outputs": {"type": "array", "minItems": 1, "items": {"type": "string"}, "uniqueItems": True},
        "params": {"type": "object", "propertyNames": NAME,
                   "additionalProperties": {"type": ["string", "number", "boolean"]}, "default": {}},
    },
    required=("argv", "outputs"),
    refs=_refs,
    files=_files,
    checks=_checks,
    run=run,
)

