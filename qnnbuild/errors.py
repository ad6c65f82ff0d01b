"""The error vocabulary of qnnbuild.

Two families, as in doit: mistakes in what the user wrote (exit status 2, reported all at once with the
file, line and column) and failures while building (exit status 1, naming the stage and its log).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One fault in a recipe, located so an editor can jump to it."""

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class QnnbuildError(Exception):
    """Base of every error qnnbuild reports without a traceback."""

    exit_status = 1


class RecipeError(QnnbuildError):
    """The recipe (or a command line naming parts of it) is wrong; carries every problem found."""

    exit_status = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.column, p.path, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(QnnbuildError):
    """A command-line argument is wrong (unknown stage in --only, missing file...)."""

    exit_status = 2


class StageFailed(QnnbuildError):
    """A stage's own work failed; the message is the tool's, the log holds the rest."""

    def __init__(self, message: str, log: Path | None = None) -> None:
        self.log = log
        super().__init__(message)


class StoreError(QnnbuildError):
    """The artifacts folder is not in the state qnnbuild left it in (a corrupt entry, a foreign file)."""


class CacheError(QnnbuildError):
    """The shared cache failed where it was required (`--cache-required`, `cache push`, `cache gc`)."""
