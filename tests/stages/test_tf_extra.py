"""Without the tensorflow extra, a TF source names the extra to install (runs whether or not it is installed)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from qnnbuild.errors import StageFailed
    from qnnbuild.toolchain.sources import tfconvert

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as if the extra were not installed
    with pytest.raises(StageFailed, match=r"pip install 'qnnbuild\[tensorflow\]'"):
        tfconvert.convert("keras", Path("m.keras"), {}, False, 17, Path("out.onnx"))
