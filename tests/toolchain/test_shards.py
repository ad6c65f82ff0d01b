"""toolchain/runtime/shards: per-sample work over shard processes, results in sample order, errors named by samples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from qnnbuild.errors import StageFailed
from qnnbuild.toolchain.runtime import shards

ROOT = str(Path(__file__).resolve().parents[2])


def squares(spec: dict[str, Any], start: int, stop: int) -> list[int]:
    """A shard's work: each sample's square, failing on spec["bad"]; ticks as real work does."""
    found = []
    for i in range(start, stop):
        if i == spec.get("bad"):
            raise ValueError(f"bad sample {i}")
        found.append(i * i + spec["offset"])
        shards.tick()
    return found


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard processes import this module by name, as they import a stage's."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))


def test_ranges_cover_the_samples_in_order() -> None:
    assert shards.ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shards.ranges(2, 5) == [(0, 1), (1, 2)]


def test_shard_processes_give_what_one_process_gives_and_count_every_sample() -> None:
    seen: list[tuple[int, int]] = []
    one, _ = shards.run(squares, {"offset": 1}, 11, 1)
    three, seconds = shards.run(squares, {"offset": 1}, 11, 3, lambda done, total: seen.append((done, total)))
    assert [v for r in three for v in r] == [v for r in one for v in r] == [i * i + 1 for i in range(11)]
    assert len(three) == len(seconds) == 3
    assert seen and seen[-1] == (11, 11) and all(total == 11 for _, total in seen)


def test_a_failing_shard_fails_the_run_naming_its_samples() -> None:
    with pytest.raises(StageFailed, match=r"samples 4-7: ValueError: bad sample 5"):
        shards.run(squares, {"offset": 0, "bad": 5}, 12, 3)
