"""YAML that remembers where every value came from.

PyYAML's safe loader gives plain data; error messages need line and column, so we compose the node tree and
build the data ourselves, recording the position of each value and each mapping key. Building by hand is
also where hostile input is stopped: duplicate keys, alias expansion beyond a budget, absurd nesting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qnnbuild.engine.recipe.limits import MAX_BYTES, MAX_DEPTH, MAX_NODES
from qnnbuild.errors import Problem, RecipeError

YamlPath = tuple[str | int, ...]

try:
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader


def dotted(path: YamlPath) -> str:
    """`stages.quantize.calibration` for a path; list indices in brackets."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Located:
    """Parsed data plus where each part of it stands in the source file."""

    file: str
    data: Any
    values: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: YamlPath, *, key: bool = False) -> tuple[int, int]:
        """Position of `path`, falling back to its nearest located ancestor."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), (1, 1))

    def problem(self, path: YamlPath, message: str, *, key: bool = False) -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, dotted(path), message)


class _Builder:
    def __init__(self, file: str) -> None:
        self.out = Located(file, None)
        self.count = 0
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: YamlPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(node, f"the document expands to more than {MAX_NODES} values (alias bomb?)")
        if len(path) > MAX_DEPTH:
            raise _TooBig(node, f"nesting deeper than {MAX_DEPTH} levels")
        self.out.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: YamlPath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            pos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(Problem(self.out.file, *pos, dotted(path), "merge keys (<<) are not supported"))
                continue
            key = self.constructor.construct_object(key_node, deep=True) if isinstance(
                key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.problems.append(Problem(self.out.file, *pos, dotted(path), "keys must be plain strings"))
                continue
            if key in result:
                first = self.out.keys[(*path, key)]
                self.problems.append(Problem(self.out.file, *pos, dotted((*path, key)),
                                             f"duplicate key (first defined on line {first[0]})"))
                continue
            self.out.keys[(*path, key)] = pos
            result[key] = self.build(value_node, (*path, key))
        return result


class _TooBig(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        self.node = node
        super().__init__(message)


OPENERS = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken, yaml.BlockSequenceStartToken,
           yaml.BlockMappingStartToken)
CLOSERS = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def _check_depth(text: str, file: str) -> None:
    """Refuse deep nesting before composing: libyaml's composer recurses in C and crashes the process on a
    few hundred thousand nested brackets, which no Python recursion limit catches. Scanning is iterative."""
    depth = 0
    for token in yaml.scan(text, Loader=_Loader):
        if isinstance(token, OPENERS):
            depth += 1
            if depth > MAX_DEPTH:
                mark = token.start_mark
                raise RecipeError([Problem(file, mark.line + 1, mark.column + 1, "",
                                           f"nesting deeper than {MAX_DEPTH} levels")])
        elif isinstance(token, CLOSERS):
            depth -= 1


def load_text(raw: bytes, file: str) -> Located:
    """Parse one YAML document; every fault becomes a located Problem inside a RecipeError."""
    if len(raw) > MAX_BYTES:
        raise RecipeError([Problem(file, 1, 1, "", f"file is {len(raw)} bytes; recipes are limited to {MAX_BYTES}")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecipeError([Problem(file, line, col, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x})")]) from None
    if "\x00" in text:
        raise RecipeError([Problem(file, 1, 1, "", "binary data, not a YAML recipe")])
    builder = _Builder(file)
    try:
        _check_depth(text, file)
        node = yaml.compose(text, Loader=_Loader)
        if node is None:
            raise RecipeError([Problem(file, 1, 1, "", "the file is empty")])
        builder.out.data = builder.build(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = exc.problem or exc.context or "invalid YAML"
        if mark and text.splitlines()[mark.line:mark.line + 1] and "\t" in text.splitlines()[mark.line]:
            reason += " (a tab: YAML indents with spaces only)"
        raise RecipeError([Problem(file, line, col, "", f"YAML syntax: {reason}")]) from None
    except yaml.YAMLError as exc:
        raise RecipeError([Problem(file, 1, 1, "", f"YAML: {exc}")]) from None
    except _TooBig as exc:
        mark = exc.node.start_mark
        raise RecipeError([Problem(file, mark.line + 1, mark.column + 1, "", str(exc))]) from None
    except RecursionError:
        raise RecipeError([Problem(file, 1, 1, "", f"nesting deeper than {MAX_DEPTH} levels")]) from None
    if builder.problems:
        raise RecipeError(builder.problems)
    return builder.out


def load_file(path: Path, shown_as: str) -> Located:
    """Read and parse a recipe file; `shown_as` is the name used in messages (as the user typed it)."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RecipeError([Problem(shown_as, 1, 1, "", f"cannot read: {exc.strerror}")]) from None
    return load_text(raw, shown_as)
