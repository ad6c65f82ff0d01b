"""Every file a stage reads is in its key: each stage kind runs under strace, which sees what native code opens
too (onnxruntime, QNN, tokenizers), and every file a stage's process read outside the installation, the store
and what it wrote itself must be one the key covers (a declared input, a file inside a declared folder, or a
discovered input in the lock file's key documents)."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from tests.conftest import make_conv_model, write_torch_factory

pytestmark = pytest.mark.slow

RECIPE = """\
schema_version: 1
recipe: traced
targets: [SM8650]
stages:
  export:   {kind: export, onnx: model.onnx}
  quantize: {kind: quantize, model: export, calibration: {npy: {dir: data, count: 2}}}
  convert:  {kind: convert, model: quantize}
  compile:  {kind: compile, model: quantize}
  context:  {kind: context-binary, compiled: compile}
  validate: {kind: validate, context: context, reference: export, quantized: quantize, data: {npy: {dir: data}}}
  profile:  {kind: profile, context: context, model: quantize, runs: 2, warmup: 1}
  layers:   {kind: layer-error, model: quantize, reference: export, data: {npy: {dir: data, count: 2}}}
  notes:    {kind: command, argv: ["{params.python}", "-c", "import sys; open(sys.argv[2], 'w').write(open(sys.argv[1]).read())", "{inputs.text}", "{out.copy.txt}"], inputs: {text: notes.txt}, outputs: [copy.txt], params: {python: PYTHON}}
"""

TEXT_RECIPE = """\
schema_version: 1
recipe: traced
targets: [SM8650]
stages:
  torch:    {kind: export, torch: "factory:build", inputs: {x: [1, 3, 8, 8]}}
  export:   {kind: export, onnx: enc.onnx}
  quantize: {kind: quantize, model: export, precision: w8a16,
             calibration: {text: {file: sentences.txt, tokenizer: tokenizer.json, count: 4}}}
  compile:  {kind: compile, model: quantize}
  context:  {kind: context-binary, compiled: compile}
  validate: {kind: validate, context: context, reference: export, quantized: quantize,
             data: {text: {file: sentences.txt, tokenizer: tokenizer.json, skip: 4, count: 2}}}
"""
LLM_RECIPE = """\
schema_version: 1
recipe: traced
targets: [SM8650]
stages:
  export:   {kind: export, hf: llama, task: causal-lm, llm: {context_length: 32, prefill: 8}}
  quantize: {kind: quantize, model: export, precision: w8a16, calibration: {text: {file: text.txt, count: 2}}}
  compile:  {kind: compile, model: quantize, parts: 2}
"""

OPENED = re.compile(r"^(\d+) +open(?:at2?)?\((.*)\) = \d+<(.*)>$")  # with -y: the opened file's own path
SPAWN = re.compile(r"^(\d+) +(?:clone3?|fork|vfork)\(.*\) = (\d+)$")
EXEC = re.compile(r'^(\d+) +execve\("[^"]*", \[(.*)\]')


def project(folder: Path) -> Path:
    """The conv model with its weights in an external data file (the first hole the keys issue named)."""
    folder.mkdir(parents=True)
    model = onnx.load(str(make_conv_model(folder / "built.onnx")))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    (folder / "built.onnx").unlink()
    (folder / "data").mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        np.save(folder / "data" / f"{i}.npy", rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    (folder / "notes.txt").write_text("release notes\n")
    (folder / "traced.yaml").write_text(RECIPE.replace("PYTHON", sys.executable))
    return folder


def stage_reads(log: Path) -> set[str]:
    """Files opened for reading by the stage processes (`qnnbuild.engine.workers.process` and every process
    they started), as strace logged them."""
    children: dict[str, list[str]] = {}
    stages: set[str] = set()
    opened: list[tuple[str, str]] = []
    for line in log.read_text(errors="replace").splitlines():
        if (m := SPAWN.match(line)) is not None:
            children.setdefault(m.group(1), []).append(m.group(2))
        elif (m := EXEC.match(line)) is not None and "qnnbuild.engine.workers.process" in m.group(2):
            stages.add(m.group(1))
        elif (m := OPENED.match(line)) is not None and not (
                {"O_WRONLY", "O_RDWR", "O_CREAT", "O_DIRECTORY"} & set(re.findall(r"O_[A-Z]+", m.group(2)))):
            opened.append((m.group(1), m.group(3)))
    todo, tree = list(stages), set(stages)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return {path for pid, path in opened if pid in tree and path.startswith("/")}


def installed() -> list[str]:
    """Where the interpreter, its distributions, qnnbuild and the system live: not inputs of a build."""
    import qnnbuild

    places = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages(),
              str(Path(qnnbuild.__file__).parent), "/proc", "/sys", "/dev", "/etc", "/usr", "/lib", "/lib64", "/run",
              "/var", "/opt",
              "/.dockerenv",  # a container probe
              str(Path.home() / ".cache/Microsoft/DeveloperTools")}  # onnxruntime's telemetry device id
    return sorted(os.path.realpath(p) for p in places)


def covered(folder: Path) -> tuple[set[str], list[str]]:
    """(files the keys cover, folders whose files they cover): the declared inputs and the discovered ones."""
    from qnnbuild.engine.recipe.plancache import load_plan

    plan = load_plan(str(folder / "traced.yaml"), folder / "artifacts", cached=False)
    files, folders = set(), []
    for inst in plan.instances:
        for path in inst.files.values():
            (folders.append(os.path.realpath(path)) if Path(path).is_dir() else files.add(os.path.realpath(path)))
    lock = json.loads((folder / "artifacts/traced/qnnbuild.lock").read_text())
    for entry in lock["instances"].values():
        files.update(os.path.realpath(folder / rel) for rel in entry["document"].get("discovered", {}))
    return files, folders


def text_project(folder: Path) -> Path:
    """A tokenizer's files (read by tokenizers' Rust) and a torch factory importing a helper module of its own,
    which reads a file of the project's."""
    from tests.stages.test_text_data import encoder, stdlib_lines, tokenizer_file

    folder.mkdir(parents=True)
    lines = stdlib_lines(8)
    (folder / "sentences.txt").write_text("\n".join(lines) + "\n")
    tokenizer_file(folder / "tokenizer.json", lines)
    encoder(folder / "enc.onnx")
    write_torch_factory(folder)
    (folder / "traced.yaml").write_text(TEXT_RECIPE)
    return folder


def llm_project(folder: Path) -> Path:
    """A tiny Llama (2 layers, trained a few steps) built in two parts: the llm-part kind, and an hf: folder's
    files (config, safetensors, tokenizer) read by transformers and tokenizers."""
    from tests.hfmodels import stdlib_sentences, trained_llama

    folder.mkdir(parents=True)
    trained_llama(folder / "llama", stdlib_sentences(60), steps=5)
    (folder / "text.txt").write_text("\n".join(stdlib_sentences(4, skip=60)) + "\n")
    (folder / "traced.yaml").write_text(LLM_RECIPE)
    return folder


@pytest.mark.parametrize("make", [project, text_project, llm_project],
                         ids=["conv-every-kind", "text-and-torch", "llm-parts"])
def test_every_file_a_stage_reads_is_in_its_key(tmp_path: Path, make: Any) -> None:
    assert shutil.which("strace"), "strace is not installed: the README's test command installs it (apt-get)"
    folder = make(tmp_path / "p")
    log = tmp_path / "strace.log"
    env = {**os.environ, "QNNBUILD_FORKSERVER": "0", "PYTHONWARNINGS": "ignore"}  # every stage a new process
    proc = subprocess.run(["strace", "-f", "-qq", "-y", "-s", "4096", "-e", "trace=openat,openat2,open,execve,"
                           "clone,clone3,fork,vfork", "-o", str(log), sys.executable, "-m", "qnnbuild", "run",
                           "traced.yaml"], cwd=folder, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reads = stage_reads(log)
    assert any(p.endswith(("model.onnx.data", "tokenizer.json")) for p in reads), "the tracer saw no input read"
    if make is llm_project:  # every kind of the recipe ran: the parts are instances of llm-part
        lock = json.loads((folder / "artifacts/traced/qnnbuild.lock").read_text())
        assert {e["document"]["kind"] for e in lock["instances"].values()} >= {"llm-part", "compile"}
    outside = [*installed(), os.path.realpath(folder / "artifacts")]
    temporary = os.path.realpath(tempfile.gettempdir())
    files, folders = covered(folder)
    unkeyed = []
    for path in sorted(os.path.realpath(p) for p in reads):
        if not Path(path).is_file() and not path.startswith(str(folder)):
            continue  # gone: a temporary file of the stage's own
        if any(path == o or path.startswith(o + os.sep) for o in outside) or re.search(r"\.(egg|dist)-info/", path):
            continue  # the installation (a distribution's metadata: an editable checkout's too)
        if path.startswith(temporary + os.sep) and not path.startswith(os.path.realpath(folder) + os.sep):
            continue  # the stage's own temporary folders (the project lives under the temporary folder too)
        if path in files or any(path.startswith(f + os.sep) for f in folders):
            continue
        unkeyed.append(path)
    assert not unkeyed, f"read by a stage but not in its key: {unkeyed}"
