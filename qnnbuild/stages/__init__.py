"""The table of stage kinds: one module each, registered here and nowhere else."""

from __future__ import annotations

from qnnbuild.stages import command
from qnnbuild.stages.base import StageKind

KINDS: dict[str, StageKind] = {k.name: k for k in (
    command.KIND,
)}
