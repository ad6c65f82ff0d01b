"""Runs one stage instance in a fresh process: `python -m qnnbuild.engine.worker REQUEST.json`.

Why a process per stage: QNN state leaks within a process (a second context generation differs by a few
kB; soc_model changes later sessions' numerics), libQnnHtp writes to file descriptor 1, and a crash in
native code must fail one stage, not the build. stdout and stderr are the stage's log file.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from qnnbuild.errors import StageFailed
from qnnbuild.stages import KINDS
from qnnbuild.stages.base import StageRun

EXIT_STAGE_FAILED = 3


def main(argv: list[str]) -> int:
    request = Path(argv[0])
    raw = json.loads(request.read_text())
    ctx = StageRun.from_json(raw["run"])
    error_file = request.with_name("error.txt")
    try:
        KINDS[raw["kind"]].run(ctx)
        if ctx.reads:
            reads = sorted({str(p.resolve()) for p in ctx.reads})
            request.with_name("discovered.json").write_text(json.dumps(reads))
    except StageFailed as exc:
        error_file.write_text(str(exc))
        print(f"stage failed: {exc}", file=sys.stderr)
        return EXIT_STAGE_FAILED
    except Exception as exc:
        traceback.print_exc()
        error_file.write_text(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    raise SystemExit(main(sys.argv[1:]))
