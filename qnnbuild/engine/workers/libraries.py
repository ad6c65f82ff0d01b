"""The distributions whose modules a stage's process loaded: what enters its key as `libraries` (issue: a
hand-kept list of the tools a stage calls missed tokenizers, Pillow and numpy's generators).

Which distribution a module belongs to is read from the installed distributions' metadata once, when this
module is imported: the fork server imports it among its preloads, so every stage forked from it has the map
without paying the ~0.3 s the scan takes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from importlib.metadata import packages_distributions

from qnnbuild.common.child import SHARD_MODULES, top_modules

OWNERS: Mapping[str, list[str]] = packages_distributions()  # top-level import name → its distributions
OWN = "qnnbuild"  # keyed by its code digest instead: an editable checkout's version says nothing


def loaded(skip: frozenset[str] = frozenset()) -> list[str]:
    """The distributions of the modules in this process now (and in its shard processes: common/child's
    SHARD_MODULES), but the standard library's, qnnbuild's own and those of the top-level modules in `skip`
    (what the engine loaded for itself, not for the stage)."""
    names = (top_modules() | set(filter(None, os.environ.get(SHARD_MODULES, "").split(",")))) - skip
    names -= set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    return sorted({dist for name in names for dist in OWNERS.get(name, []) if dist != OWN})

