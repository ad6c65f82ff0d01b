"""The table of stage kinds: one module each, registered here and nowhere else."""

from __future__ import annotations

from qnnbuild.stages import (
    command,
    compile,
    context_binary,
    convert,
    export,
    layer_error,
    part,
    profile,
    quantize,
    validate,
)
from qnnbuild.stages.base import StageKind

KINDS: dict[str, StageKind] = {k.name: k for k in (
    export.KIND,
    quantize.KIND,
    convert.KIND,
    part.KIND,
    compile.KIND,
    context_binary.KIND,
    validate.KIND,
    layer_error.KIND,
    profile.KIND,
    command.KIND,
)}
