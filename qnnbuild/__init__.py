"""qnnbuild: declarative, incremental and reproducible builds of neural networks for Qualcomm NPUs."""

from __future__ import annotations

__version__ = "0.1.0"


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qnnbuild.commands.infer import Deployed


def load(recipe: str, target: str, artifacts: str = "artifacts") -> Deployed:
    """A built target of `recipe`, ready to `run({input: array})` on the HTP emulator.

    Imported lazily so `import qnnbuild` (and a no-op build) never loads onnxruntime.
    """
    from qnnbuild.commands.infer import load as _load

    return _load(recipe, target, artifacts)
