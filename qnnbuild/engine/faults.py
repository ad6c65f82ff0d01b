"""Named crash points for the crash-safety tests.

`QNNBUILD_KILL_AT=<point>@<instance>` makes the process SIGKILL itself when that instance reaches that
point (`publish:manifest`, `publish:renamed`, `view:switched`, `remote:files-uploaded`, `cluster:ran`).
With `QNNBUILD_KILL_ONCE=<file>` as well, only the process that creates that file dies: of two Dask workers
with the same environment, the first to reach the point is lost and the retry elsewhere succeeds. Nothing
else reads them; unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def checkpoint(point: str, instance: str) -> None:
    if os.environ.get("QNNBUILD_KILL_AT") == f"{point}@{instance}":
        once = os.environ.get("QNNBUILD_KILL_ONCE")
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)
