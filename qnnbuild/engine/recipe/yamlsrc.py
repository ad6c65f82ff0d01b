"""YAML that remembers where every value came from.

PyYAML's safe loader gives plain data; error messages need line and column, so we build the data ourselves
from libyaml's parser events, recording the position of each value and each mapping key. Building by hand is
also where hostile input is stopped: duplicate keys, alias expansion beyond a budget, absurd nesting. From
events, in one pass: composing a node tree first cost a token scan (libyaml's composer recurses in C and
crashes on deep nesting, so depth had to be checked before it) and a tree of node objects; the 900 kB hostile
recipe of benchmarks/hostile.py took 2.2 s to load that way, 1.0 s this way (measured on a busy machine).
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


STR = "tag:yaml.org,2002:str"
MERGE = "tag:yaml.org,2002:merge"
_SKIP = object()  # the value of a refused key: read, then dropped; also "no document"


@dataclass
class _Frame:
    """An open mapping or sequence: where it is, its next key or index, and the anchor it records for."""

    value: Any
    path: YamlPath
    key: Any = None  # a mapping's key waiting for its value (None: the next scalar is a key)
    index: int = 0
    anchor: str | None = None
    skip: bool = False  # a refused key's value, or a key that is not a scalar: its events are read and dropped


class _Builder:
    """Plain data with positions, built from libyaml's parser events in one pass over an explicit stack: no
    recursion (libyaml's own composer recurses in C and crashes the process on a few tens of thousands of nested
    brackets, so composing needed a separate token scan first), every value counted (an alias replays its
    anchor's events, so an alias bomb reaches the budget), nesting checked as it opens."""

    def __init__(self, file: str) -> None:
        self.out = Located(file, None)
        self.count = 0
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.resolver = yaml.resolver.Resolver()
        self.stack: list[_Frame] = []
        self.root: Any = _SKIP
        self.anchors: dict[str, list[Any]] = {}
        self.recording: dict[str, list[Any]] = {}
        self.replaying = 0  # inside an alias's replay: its anchor's events, recorded once already

    def feed(self, event: Any) -> None:
        if not self.replaying:
            for events in self.recording.values():
                events.append(event)
        if isinstance(event, yaml.AliasEvent):
            self._alias(event)
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            self._open(event)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            frame = self.stack.pop()
            if frame.anchor is not None:
                self.anchors[frame.anchor] = self.recording.pop(frame.anchor)
        elif isinstance(event, yaml.ScalarEvent):
            self._scalar(event)

    def _anchor(self, event: Any) -> str | None:
        name: str | None = event.anchor if not self.replaying else None
        if name is not None and (name in self.anchors or name in self.recording):
            raise yaml.composer.ComposerError("found duplicate anchor", None, "second occurrence", event.start_mark)
        return name

    def _alias(self, event: Any) -> None:
        if self.stack and self.stack[-1].skip:
            return
        if event.anchor in self.recording:
            raise yaml.composer.ComposerError(None, None, f"an alias inside its own anchor {event.anchor}",
                                              event.start_mark)
        if event.anchor not in self.anchors:
            raise yaml.composer.ComposerError(None, None, f"found undefined alias {event.anchor}", event.start_mark)
        self.replaying += 1
        try:
            for replayed in self.anchors[event.anchor]:
                self.feed(replayed)
        finally:
            self.replaying -= 1

    def _open(self, event: Any) -> None:
        if self.stack and self.stack[-1].skip:
            self.stack.append(_Frame(None, (), skip=True))
            return
        value: Any = {} if isinstance(event, yaml.MappingStartEvent) else []
        anchor = self._anchor(event)
        path = self._place(value, event, is_scalar=False)
        if anchor is not None:
            self.recording[anchor] = [event]
        self.stack.append(_Frame(value, path or (), anchor=anchor, skip=path is None))

    def _scalar(self, event: Any) -> None:
        if self.stack and self.stack[-1].skip:
            return
        anchor = self._anchor(event)
        tag = event.tag if event.tag not in (None, "!") else self.resolver.resolve(  # type: ignore[no-untyped-call]
            yaml.ScalarNode, event.value, event.implicit)
        frame = self.stack[-1] if self.stack else None
        if frame is not None and isinstance(frame.value, dict) and frame.key is None and tag == MERGE:
            self._refuse(event, frame.path, "merge keys (<<) are not supported")
        elif tag == STR:
            self._place(event.value, event, is_scalar=True)
        else:
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
            self._place(self.constructor.construct_object(node, deep=True), event, is_scalar=True)
        if anchor is not None:
            self.anchors[anchor] = [event]

    def _refuse(self, event: Any, path: YamlPath, message: str) -> None:
        """A key that cannot be: said, and its value dropped."""
        mark = event.start_mark
        self.problems.append(Problem(self.out.file, mark.line + 1, mark.column + 1, dotted(path), message))
        self.stack[-1].key = _SKIP

    def _place(self, value: Any, event: Any, *, is_scalar: bool) -> YamlPath | None:
        """Put a value (or a key) where the open container wants it; its path, or None when it is dropped (a
        key, a refused key, or the value of one)."""
        mark = event.start_mark
        pos = (mark.line + 1, mark.column + 1)
        if not self.stack:
            path: YamlPath = ()
            self.root = value
        elif isinstance(self.stack[-1].value, list):
            frame = self.stack[-1]
            path = (*frame.path, frame.index)
            frame.index += 1
            frame.value.append(value)
        else:
            frame = self.stack[-1]
            if frame.key is None:
                self._key(frame, value, event, pos, is_scalar=is_scalar)
                return None
            if frame.key is _SKIP:
                frame.key = None
                return None
            path = (*frame.path, frame.key)
            frame.value[frame.key] = value
            frame.key = None
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(event, f"the document expands to more than {MAX_NODES} values (alias bomb?)")
        if len(path) > MAX_DEPTH:
            raise _TooBig(event, f"nesting deeper than {MAX_DEPTH} levels")
        self.out.values[path] = pos
        return path

    def _key(self, frame: _Frame, value: Any, event: Any, pos: tuple[int, int], *, is_scalar: bool) -> None:
        if not is_scalar or not isinstance(value, str):
            self._refuse(event, frame.path, "keys must be plain strings")  # a collection's events are dropped too
            return
        if value in frame.value:
            first = self.out.keys[(*frame.path, value)]
            self._refuse(event, (*frame.path, value), f"duplicate key (first defined on line {first[0]})")
            return
        frame.key = value
        self.out.keys[(*frame.path, value)] = pos


class _TooBig(Exception):
    def __init__(self, event: Any, message: str) -> None:
        self.event = event
        super().__init__(message)


def _build(text: str, builder: _Builder) -> Any:
    """The one document's data (_SKIP for an empty stream), from libyaml's parser events."""
    documents = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            where: Any = event.start_mark
            if documents > 1:
                raise yaml.composer.ComposerError("expected a single document in the stream", None,
                                                  "but found another document", where)
        elif not isinstance(event, (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent)):
            builder.feed(event)
    return builder.root


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
        data = _build(text, builder)
        if data is _SKIP:
            raise RecipeError([Problem(file, 1, 1, "", "the file is empty")])
        builder.out.data = data
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
        where = exc.event.start_mark
        raise RecipeError([Problem(file, where.line + 1, where.column + 1, "", str(exc))]) from None
    except RecursionError:  # aliases replaying aliases, thousands deep
        raise RecipeError([Problem(file, 1, 1, "", f"aliases nested deeper than {MAX_DEPTH} levels")]) from None
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
