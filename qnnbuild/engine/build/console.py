"""What a person reads while a build runs: one line when an instance starts, one when it ends, progress for long
stages, a closing summary. Everything goes to stderr so `--json` keeps stdout to itself.

A running stage's worker reports where it is (StageRun.progress: samples done of total, or a phase) in a small
file the console reads. On a terminal the running stages sit in a block at the bottom that rich redraws in place,
with counts, a bar and an ETA; finished lines print above it and stay. Elsewhere (CI logs, pipes) a plain line per
running stage at most every `pulse_seconds` (10 s; QNNBUILD_PULSE_S sets another, for a CI that wants more).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from qnnbuild.engine.build.result import Result

MARKS = {"ran": "✓", "cached": "✓", "failed": "✗", "skipped": "-"}


def _progress(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):  # not written yet, or being replaced
        return {}


def describe(found: dict[str, Any], elapsed: float) -> str:
    """`12/50 samples (24 %), ETA 31 s, 40 s` from a progress record; the phase, or `still running`, without one."""
    done, total = found.get("done"), found.get("total")
    phase = f"{found['phase']}, " if found.get("phase") else ""
    if done is None or not total:
        return f"{phase or 'still running, '}{elapsed:.0f} s"
    text = f"{phase}{done}/{total} {found.get('unit', 'samples')} ({done / total:.0%})"
    rate_for = time.time() - float(found.get("since", time.time()))
    if 0 < done < total and rate_for > 0:
        text += f", ETA {(total - done) * rate_for / done:.0f} s"
    return f"{text}, {elapsed:.0f} s"


def _pulse() -> float:
    """QNNBUILD_PULSE_S, else 10 s: how often a log shows a running stage."""
    import os

    try:
        return max(0.1, float(os.environ.get("QNNBUILD_PULSE_S") or 10.0))
    except ValueError:
        return 10.0


class Console:
    def __init__(self, stream: TextIO | None = None, pulse_seconds: float | None = None,
                 live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.pulse_seconds = pulse_seconds or _pulse()
        self.running: dict[str, tuple[float, Path | None]] = {}
        self._lock = threading.Lock()  # self.running
        self._print_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.live = self.stream.isatty() if live is None else live
        self._live: Any = None

    def warn(self, text: str) -> None:
        self.say(f"warning: {text}")

    def say(self, text: str) -> None:
        # never under self._lock: rich's refresh thread takes its own lock, then calls _table, which takes ours
        live = self._live
        if live is not None:
            live.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            with self._print_lock:
                print(text, file=self.stream, flush=True)

    def started(self, inst_id: str, progress: Path | None = None) -> None:
        with self._lock:
            self.running[inst_id] = (time.monotonic(), progress)
        if not self.live:
            self.say(f"  … {inst_id:<30} running")
        if self._thread is None:
            self._thread = threading.Thread(target=self._redraw if self.live else self._pulse, daemon=True)
            self._thread.start()

    def ended(self, result: Result, label: str | None = None) -> None:
        label = label or result.id
        with self._lock:
            self.running.pop(label, None)
        mark = MARKS.get(result.status, "?")
        line = f"  {mark} {label:<30} {result.status:<8} {result.seconds:7.2f} s"
        if result.status == "cached" and result.origin == "remote":
            line += "  from the shared cache"
        if result.worker:
            line += f"  on {result.worker}"
            if result.phases:
                line += " (" + ", ".join(f"{name} {s:.1f} s" for name, s in result.phases.items()) + ")"
        if result.message:
            line += f"  {result.message}"
        self.say(line)
        if result.log:
            self.say(f"      log: {result.log}")

    def _snapshot(self) -> list[tuple[str, float, dict[str, Any]]]:
        with self._lock:
            now = time.monotonic()
            busy = [(i, now - t, p) for i, (t, p) in self.running.items()]
        return [(i, elapsed, _progress(p)) for i, elapsed, p in busy]

    def _pulse(self) -> None:
        """Plain output: one line per running stage every pulse_seconds."""
        while not self._stop.wait(self.pulse_seconds):
            for inst_id, elapsed, found in self._snapshot():
                if elapsed >= self.pulse_seconds:
                    self.say(f"  … {inst_id:<30} {describe(found, elapsed)}")

    def _table(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        table = Table.grid(padding=(0, 1))
        for inst_id, elapsed, found in self._snapshot():
            done, total = found.get("done"), found.get("total")
            bar = ProgressBar(total=float(total), completed=float(done), width=24) if done is not None and total \
                else ProgressBar(total=None, width=24, pulse=True)
            table.add_row(f"  … {inst_id:<30}", bar, describe(found, elapsed))
        return table

    def _redraw(self) -> None:
        """A terminal: the running stages redrawn in place by rich, four times a second."""
        from rich.console import Console as RichConsole
        from rich.live import Live

        live = Live(get_renderable=self._table, console=RichConsole(file=self.stream), refresh_per_second=4,
                    transient=True, redirect_stdout=False, redirect_stderr=False)
        live.start()
        self._live = live
        self._stop.wait()
        self._live = None
        live.stop()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self.live:
            self._thread.join(timeout=2)

    def summary(self, results: list[Result], seconds: float) -> None:
        counts = {s: sum(r.status == s for r in results) for s in ("ran", "cached", "failed", "skipped")}
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        remote = sum(r.status == "cached" and r.origin == "remote" for r in results)
        if remote:
            parts[[p.endswith("cached") for p in parts].index(True)] += f" ({remote} from the shared cache)"
        self.say(f"{'done' if not counts['failed'] else 'FAILED'} in {seconds:.2f} s: {', '.join(parts) or 'nothing'}")
