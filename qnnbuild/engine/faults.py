"""Named crash points for the crash-safety tests.

`QNNBUILD_KILL_AT=<point>@<instance>` makes the process SIGKILL itself when that instance reaches that
point (`publish:manifest`, `publish:renamed`, `view:switched`). Nothing else reads it; unset, it costs one
dictionary lookup per point.
"""

from __future__ import annotations

import os
import signal


def checkpoint(point: str, instance: str) -> None:
    if os.environ.get("QNNBUILD_KILL_AT") == f"{point}@{instance}":
        os.kill(os.getpid(), signal.SIGKILL)
