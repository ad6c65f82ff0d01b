"""What a person reads while a build runs: one line when an instance starts, one when it ends, a pulse for
long stages, a closing summary. Everything goes to stderr so `--json` keeps stdout to itself."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from qnnbuild.engine.result import Result

MARKS = {"ran": "✓", "cached": "✓", "failed": "✗", "skipped": "-"}


class Console:
    def __init__(self, stream: TextIO | None = None, pulse_seconds: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.pulse_seconds = pulse_seconds
        self.running: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def warn(self, text: str) -> None:
        self.say(f"warning: {text}")

    def say(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream, flush=True)

    def started(self, inst_id: str) -> None:
        with self._lock:
            self.running[inst_id] = time.monotonic()
        self.say(f"  … {inst_id:<30} running")
        if self._thread is None:
            self._thread = threading.Thread(target=self._pulse, daemon=True)
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
        if result.message:
            line += f"  {result.message}"
        self.say(line)
        if result.log:
            self.say(f"      log: {result.log}")

    def _pulse(self) -> None:
        while not self._stop.wait(self.pulse_seconds):
            with self._lock:
                now = time.monotonic()
                busy = [(i, now - t) for i, t in self.running.items()]
            for inst_id, elapsed in busy:
                if elapsed >= self.pulse_seconds:
                        self.say(f"  … {inst_id:<30} still running, {elapsed:.0f} s")

    def close(self) -> None:
        self._stop.set()

    def summary(self, results: list[Result], seconds: float) -> None:
        counts = {s: sum(r.status == s for r in results) for s in ("ran", "cached", "failed", "skipped")}
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        remote = sum(r.status == "cached" and r.origin == "remote" for r in results)
        if remote:
            parts[[p.endswith("cached") for p in parts].index(True)] += f" ({remote} from the shared cache)"
        self.say(f"{'done' if not counts['failed'] else 'FAILED'} in {seconds:.2f} s: {', '.join(parts) or 'nothing'}")
