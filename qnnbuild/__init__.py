"""qnnbuild: declarative, incremental and reproducible builds of neural networks for Qualcomm NPUs."""

__version__ = "0.1.0"


def load(recipe: str, target: str, artifacts: str = "artifacts") -> object:
    """Kept importable without onnxruntime; the runtime API lands with the validate/infer issue."""
    raise NotImplementedError("qnnbuild.load arrives with the infer issue")
