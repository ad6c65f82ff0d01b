"""Release bundles and rebuild verification: what makes a build something you can ship and check later.

A bundle holds every target's deliverable, the recipe, the lock entries the deliverables depend on, and a
MANIFEST.json with the sha256 of every file and the tool versions. It is a byte-stable tar.gz: sorted
members, fixed mtimes, owners and modes, and a gzip header without name or time, so two clean builds of
one recipe give the same bundle.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from qnnbuild.common.atomic import replacing
from qnnbuild.common.hashing import sha256_file
from qnnbuild.engine.build.session import Session, stale
from qnnbuild.engine.recipe.plan import Plan
from qnnbuild.errors import QnnbuildError, UsageError
from qnnbuild.stages import KINDS


def _deliverables(plan: Plan) -> list[Any]:
    return [i for i in plan.instances if i.kind == "context-binary"]


def bundle_files(plan: Plan, artifacts: Path) -> dict[str, bytes | Path]:
    """Archive name → content (bytes) or file to copy, for the release of `plan`'s current build."""
    session = Session(plan, artifacts, readonly=True)
    deliverables = _deliverables(plan)
    if not deliverables:
        raise UsageError(f"{plan.recipe}: the recipe has no context-binary stage, so nothing to release")
    needed = plan.upstream({i.id for i in deliverables})
    out_of_date = stale(session, needed)
    if out_of_date:
        raise QnnbuildError(f"not built or out of date: {', '.join(out_of_date)}; run `qnnbuild run` first")
    lock = session.store.read_lock(plan.recipe)
    root = plan.recipe
    files: dict[str, bytes | Path] = {f"{root}/recipe.yaml": Path(plan.recipe_file)}
    for inst in deliverables:
        view = session.view(inst)
        for rel in lock["instances"][inst.id]["outputs"]:
            files[f"{root}/{inst.target}/{rel}"] = view / rel
    release_lock = {**lock, "instances": {k: v for k, v in lock["instances"].items() if k in needed}}
    files[f"{root}/qnnbuild.lock"] = (json.dumps(release_lock, indent=1, sort_keys=True) + "\n").encode()
    digests = {name: sha256_file(src) if isinstance(src, Path) else _sha(src) for name, src in sorted(files.items())}
    manifest = {"recipe": plan.recipe, "tools": lock.get("tools", {}), "platform": lock.get("platform", {}),
                "files": digests}
    files[f"{root}/MANIFEST.json"] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    return files


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def write_bundle(files: dict[str, bytes | Path], out: Path) -> None:
    with replacing(out) as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirname in sorted({str(Path(n).parent) for n in files} | {n.split("/")[0] for n in files}):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name in sorted(files):
            src = files[name]
            data = src.read_bytes() if isinstance(src, Path) else src
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


def cmd_release(args: argparse.Namespace) -> int:
    from qnnbuild.engine.recipe.plancache import load_plan

    return release(load_plan(args.recipe, Path(args.artifacts)), Path(args.artifacts), Path(args.output))


def release(plan: Plan, artifacts: Path, out: Path) -> int:
    files = bundle_files(plan, artifacts)
    write_bundle(files, out)
    print(f"wrote {out}: {len(files)} files, {out.stat().st_size / 1e6:.2f} MB, sha256 {sha256_file(out)}")
    return 0


def verify_rebuild(plan: Plan, artifacts: Path, jobs: int) -> int:
    """Rebuild everything from scratch in a temporary store; compare every output digest with the lock."""
    from qnnbuild.engine.build.console import Console
    from qnnbuild.engine.build.doitbridge import run_with_doit

    locked = Session(plan, artifacts, readonly=True).store.read_lock(plan.recipe).get("instances", {})
    if not locked:
        raise UsageError(f"no build of {plan.recipe!r} under {artifacts} to verify; run `qnnbuild run` first")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="qnnbuild-verify-") as tmp:
        console.say(f"rebuilding {plan.recipe} from scratch in {tmp}")
        fresh = Session(plan, Path(tmp))
        run_with_doit([fresh], console, [], jobs)
        console.close()
        rows: list[tuple[str, str, str, str, str]] = []
        for inst in plan.instances:
            before = locked.get(inst.id, {}).get("outputs", {})
            result = fresh.results.get(inst.id)
            after = result.files if result and result.status in ("ran", "cached") else {}
            if not KINDS[inst.kind].reproducible:
                rows.append((inst.id, "*", "", "", "not compared (timings)"))
                continue
            for rel in sorted(set(before) | set(after)):
                a, b = before.get(rel, ""), after.get(rel, "")
                verdict = "same" if a == b else ("missing in rebuild" if not b else
                                                 "not in lock" if not a else "DIFFERENT")
                rows.append((inst.id, rel, a[:12], b[:12], verdict))
    width = max(len(f"{r[0]}/{r[1]}") for r in rows)
    print(f"{'instance/file':<{width}}  {'locked':<12}  {'rebuilt':<12}  verdict")
    for inst_id, rel, a, b, verdict in rows:
        print(f"{inst_id + '/' + rel:<{width}}  {a:<12}  {b:<12}  {verdict}")
    compared = [r for r in rows if r[4] != "not compared (timings)"]
    bad = [r for r in compared if r[4] != "same"]
    skipped = len(rows) - len(compared)
    print(f"{len(compared) - len(bad)} of {len(compared)} outputs reproduced" +
          (f"; {skipped} stage(s) not compared (timings)" if skipped else "") + (f"; {len(bad)} differ" if bad else ""))
    for inst_id, rel, *_ in bad:
        print(f"DIFFERS  {inst_id}/{rel}", file=sys.stderr)
    return 1 if bad else 0

