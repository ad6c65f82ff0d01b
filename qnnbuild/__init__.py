"""qnnbuild: declarative, incremental and reproducible builds of neural networks for Qualcomm NPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qnnbuild.common.version import VERSION as __version__

__all__ = ["__version__", "load"]

if TYPE_CHECKING:
    from qnnbuild.commands.infer import Deployed


def load(recipe: str, target: str, artifacts: str = "artifacts") -> Deployed:
    """A built target of `recipe`, ready to `run({input: array})` on the HTP emulator.

    Imported lazily so `import qnnbuild` (and a no-op build) never loads onnxruntime.
    """
    from qnnbuild.commands.infer import load as _load

    return _load(recipe, target, artifacts)
