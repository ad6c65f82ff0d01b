"""Builds the shipped recipes on two commits and diffs the lock files' key documents.

A move of code must change no key but its `code` digest (which follows the code): for the same recipe and tools,
every other field of every stage's key document, and every output digest (of kinds declared reproducible;
profile's outputs carry timings), must be equal on both commits.

    python benchmarks/key_documents.py --base 05b50cf [--recipes recipes/mobilenet.yaml ...]

Each side is built from its own checkout (a git worktree for the base) in its own artifacts folder, by
`python -m qnnbuild run`, with that checkout first on PYTHONPATH. Models a recipe names under recipes/models/
(downloaded or trained, git-ignored) are shared by both sides; e.g. for the tiny Llama first run
`python -m qnnbuild.zoo.tinyllama recipes/models/tinyllama`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from qnnbuild.stages import KINDS

ROOT = Path(__file__).resolve().parent.parent


def build(checkout: Path, recipe: str, artifacts: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, "-m", "qnnbuild", "run", recipe, "--artifacts", str(artifacts), "--json"],
                          cwd=checkout, env=env, capture_output=True, text=True, check=False)
    name = json.loads(proc.stdout)["recipe"] if proc.stdout.strip() else Path(recipe).stem
    lock = artifacts / name / "qnnbuild.lock"
    if not lock.is_file():
        print(proc.stderr[-2000:])
        raise SystemExit(f"{recipe}: no lock file from {checkout}")
    if proc.returncode:
        print(f"  note: {recipe} on {checkout.name} exited {proc.returncode}; comparing what it built")
    return json.loads(lock.read_text())["instances"]


def compare(old: dict, new: dict) -> list[str]:
    problems = []
    for inst in sorted(set(old) | set(new)):
        if inst not in old or inst not in new:
            problems.append(f"{inst}: built on one side only")
            continue
        a = {k: v for k, v in old[inst]["document"].items() if k != "code"}
        b = {k: v for k, v in new[inst]["document"].items() if k != "code"}
        if a != b:
            fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            problems.append(f"{inst}: key document differs in {fields}")
        if old[inst]["digest"] != new[inst]["digest"] and KINDS[b["kind"]].reproducible:
            problems.append(f"{inst}: output digest differs")  # profile's carry timings: keys only
    return problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the commit to compare with (the working tree is the other side)")
    ap.add_argument("--recipes", nargs="+", default=["recipes/mobilenet.yaml", "recipes/hand_recrop.yaml",
                                                     "recipes/minilm.yaml", "recipes/tinyllama.yaml"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qnnbuild-keys-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.base], cwd=ROOT, check=True)
        models = ROOT / "recipes" / "models"  # downloaded or trained models (git-ignored): both sides read the same
        if models.is_dir():
            (base / "recipes" / "models").symlink_to(models)
        try:
            failed = 0
            for recipe in args.recipes:
                old = build(base, recipe, Path(tmp) / "a")
                new = build(ROOT, recipe, Path(tmp) / "b")
                problems = compare(old, new)
                codes = sum(old[i]["document"]["code"] != new[i]["document"]["code"] for i in set(old) & set(new))
                print(f"{recipe}: {len(set(old) & set(new))} instances compared, {codes} code digests moved, "
                      f"{'every other field and every output digest equal' if not problems else 'DIFFERENT'}")
                for line in problems:
                    print("  ", line)
                failed += bool(problems)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
