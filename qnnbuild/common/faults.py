"""Named crash points for the crash-safety tests.

`QNNBUILD_KILL_AT=<point>@<instance>` makes the process SIGKILL itself when that instance reaches that
point (`publish:manifest`, `publish:renamed`, `view:switched`, `remote:files-uploaded`, `cluster:ran`,
`cluster:left` (a worker's entry left in the shared cache);
toolchain/runtime/shards.py reads `shard@<first sample>` itself).
With `QNNBUILD_KILL_ONCE=<file>` as well, only the process that creates that file dies: of two Dask workers
with the same environment, the first to reach the point is lost and the retry elsewhere succeeds. Nothing
else reads them; unset, a point costs one dictionary lookup.

`QNNBUILD_PAUSE_AT=<point>@<instance>` with `QNNBUILD_PAUSE_FILE=<file>` instead makes the process write its
pid into that file and wait until the file is removed: a test then acts (kills, starts a rival command) at
that exact point, not in a time window it hopes to hit.
"""

from __future__ import annotations

import os
import signal
import time

PAUSE_LIMIT_S = 300


def _pause(file: str) -> None:
    with open(file, "w") as fh:  # noqa: PTH123 - a test hook, kept free of imports
        fh.write(str(os.getpid()))
    for _ in range(PAUSE_LIMIT_S * 20):
        if not os.path.exists(file):  # noqa: PTH110
            return
        time.sleep(0.05)


def checkpoint(point: str, instance: str) -> None:
    if os.environ.get("QNNBUILD_PAUSE_AT") == f"{point}@{instance}":
        _pause(os.environ.get("QNNBUILD_PAUSE_FILE", "qnnbuild.paused"))
    if os.environ.get("QNNBUILD_KILL_AT") == f"{point}@{instance}":
        once = os.environ.get("QNNBUILD_KILL_ONCE")
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)
