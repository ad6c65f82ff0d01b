"""The one module that opens onnxruntime / onnxruntime-qnn sessions.

Everything here encodes a fact from QNN_NOTES.md: register the plugin EP once per process; always disable
CPU fallback (otherwise a node, or the whole graph, silently runs on the CPU); unknown or bad provider
options are ignored silently, so callers pass only options validated by qnnbuild; QNN's real reasons are in
the verbose log, so failures are retried with it captured.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qnnbuild.common.child import start_module

_registered = False
VERBOSE_ENV = "QNNBUILD_QNN_VERBOSE"  # set: QNN's own log is on (it follows the logger level at registration)


def ort() -> Any:
    """onnxruntime with the QNN plugin registered (once per process)."""
    global _registered  # noqa: PLW0603 - registration is per process by nature
    import onnxruntime

    if not _registered:
        import onnxruntime_qnn

        # QNN's log follows onnxruntime's *default* logger level as it is when the plugin registers, not the
        # session's: quiet by default, verbose only in the child that explains a failure (see failure_log)
        onnxruntime.set_default_logger_severity(0 if os.environ.get(VERBOSE_ENV) else 3)
        onnxruntime.register_execution_provider_library("QNNExecutionProvider", onnxruntime_qnn.get_library_path())
        _registered = True
    return onnxruntime


def library_dir() -> Path:
    import onnxruntime_qnn

    return Path(onnxruntime_qnn.get_library_path()).parent


def versions() -> dict[str, str]:
    import onnxruntime
    import onnxruntime_qnn

    return {"onnxruntime": onnxruntime.__version__, "onnxruntime-qnn": onnxruntime_qnn.__version__,
            "qnn_sdk": str(getattr(onnxruntime_qnn.build_and_package_info, "qnn_version", "unknown"))}


def htp_session(model: str | bytes, provider: dict[str, str], config: dict[str, str] | None = None, *,
                fallback: bool = False, verbose: bool = False) -> Any:
    """An InferenceSession on the QNN HTP backend (emulated on x86)."""
    rt = ort()
    so = quiet_threads(rt.SessionOptions())
    so.log_severity_level = 0 if verbose else 3
    if not fallback:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
    devices = [d for d in rt.get_ep_devices() if d.ep_name == "QNNExecutionProvider"]
    if not devices:
        raise RuntimeError("the QNN execution provider offers no device; run `qnnbuild doctor`")
    # Keep the input Quantize / output Dequantize inside the QNN graph (what a device build does); with the
    # default, an assignment check with fallback allowed would report them as refused.
    so.add_provider_for_devices(devices, {"backend_type": "htp", "offload_graph_io_quantization": "0", **provider})
    session = rt.InferenceSession(model, so)
    if not fallback:
        session.disable_fallback()  # run() must raise, not quietly re-create the session on the CPU
    return session


def deliverable_session(folder: Path, provider: dict[str, str] | None = None, graph: str | None = None) -> Any:
    """A session on a context-binary folder: its EPContext model (named in io_spec.json) refers to the binary
    by a path relative to itself, so it is opened from inside the folder. An LLM's deliverable holds two graphs:
    `graph` "decode" picks the second (the prefill graph is the folder's first); a graph built in parts is a
    chain of their sessions (runtime/chain.Chain) that runs as one."""
    import json

    spec = json.loads((folder / "io_spec.json").read_text())
    entry = spec[graph] if graph == "decode" else spec
    with contextlib.chdir(folder):
        if "parts" not in entry:
            return htp_session(entry["epcontext_model"], provider or {})
        from qnnbuild.toolchain.runtime.chain import Chain

        return Chain([htp_session(p["epcontext_model"], provider or {}) for p in entry["parts"]],
                              [v["name"] for v in entry["inputs"]], [v["name"] for v in entry["outputs"]])


def plain_cpu_session(model: str | bytes, external_folder: Path | None = None) -> Any:
    """onnxruntime's CPU alone, the QNN plugin not registered: for a process that never needs QNN (splitting a
    graph into parts), which then neither loads QNN's libraries nor tears them down at exit."""
    import onnxruntime

    return onnxruntime.InferenceSession(model, _cpu_options(onnxruntime, external_folder),
                                        providers=["CPUExecutionProvider"])


def cpu_session(model: str | bytes, external_folder: Path | None = None, *, threads: int | None = None,
                as_written: bool = False) -> Any:
    """`external_folder`: where the data file of a model given as bytes lies (a weightless copy of a graph);
    `threads`: onnxruntime's intra-op threads, fixed (default: one per core this process may use);
    `as_written`: the graph run as it is, graph optimizations and weight prepacking off (with them, onnxruntime
    fuses DequantizeLinear → MatMul into an integer MatMul, and a packed constant weight sums in another order)."""
    rt = ort()
    options = _cpu_options(rt, external_folder, threads)
    if as_written:
        options.graph_optimization_level = rt.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
    return rt.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _cpu_options(rt: Any, external_folder: Path | None, threads: int | None = None) -> Any:
    so = quiet_threads(rt.SessionOptions())
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
    if external_folder is not None:
        so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_folder))
    return so


def quiet_threads(so: Any) -> Any:
    """No spin-waiting in onnxruntime's thread pools: a spinning pool burns a core between ops, which a
    neighbouring stage (another Dask worker, `-j 2`) needs. Bit-identical results; wall time on one stage
    unchanged within noise."""
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 (onnxruntime and QNN logs); also copied to the stage log."""
    sys.stderr.flush()
    saved = os.dup(2)
    text: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode("utf-8", "replace"))
            sys.stderr.write(text[0])
            sys.stderr.flush()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """libQnnHtp prints to fd 1 when it loads; keep a command's stdout for its own output."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def refusal_reasons(log: str) -> dict[str, str]:
    """node name → QNN's reason, from the verbose log's "Validation FAILED" entries."""
    reasons: dict[str, str] = {}
    for m in re.finditer(r"Node name: (\S+).*?\n\s*REASON : (.+)", log):
        reasons.setdefault(m.group(1), m.group(2).strip())
    return reasons


def failure_log(model: str, provider: dict[str, str], *, fallback: bool = False) -> str:
    """QNN's own log of opening `model` once more, in a child process whose QNN log is verbose.

    QNN's reasons (`could not create op: q::QNN_LSTM_FAIL` behind a bare `QNN_COMMON_ERROR_MEM_ALLOC 1002`)
    only reach the log when onnxruntime's default logger is verbose as the plugin registers, which in this
    process it was not; so the failing attempt is repeated where it is. No context is written there.
    """
    import json
    import subprocess

    request = json.dumps({"model": str(Path(model).resolve()), "provider": provider, "fallback": fallback})
    with tempfile.TemporaryDirectory(prefix="qnnbuild-explain-") as tmp:
        proc = start_module("qnnbuild.toolchain.runtime.qnn", request, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp, env={VERBOSE_ENV: "1"}, text=True)
        _, err = proc.communicate()
    return str(err)


def _owner(qnn_name: str, node_types: dict[str, str]) -> str:
    owners = [n for n in node_types if qnn_name.startswith(n)]
    return max(owners, key=len) if owners else qnn_name


def _validation_failures(log: str, node_types: dict[str, str]) -> list[dict[str, str]]:
    """Nodes QNN's op validation refused before finalize (the EP then leaves them to the CPU, which a build
    forbids): `backendValidateOpConfig() failed for node `X` of type `LayerNorm` with error code 3110`."""
    found: dict[str, dict[str, str]] = {}
    pattern = r"backendValidateOpConfig\(\) failed for node `([^`]+)` of type `([^`]+)` with error code (\d+)"
    for qnn_name, qnn_type, code in re.findall(pattern, log):
        name = _owner(qnn_name, node_types)
        found.setdefault(name, {"name": name, "op_type": node_types.get(name, qnn_type),
                                "reason": f"QNN's op validation refused it as {qnn_type} (error {code})"})
    return list(found.values())


def finalize_failures(log: str, node_types: dict[str, str]) -> list[dict[str, str]]:
    """What HTP finalize refused, per ONNX node: `[{name, op_type, reason}]` from QNN's verbose log.

    QNN names its nodes after the ONNX node they came from (`LSTM_79_cell0_forward` from `LSTM_79`): the
    longest ONNX node name prefixing a QNN name is the node. QNN lists every node of the failed partition;
    when the op it could not create names an ONNX op type (`q::QNN_LSTM_FAIL`), the nodes of that type are
    the ones at fault.
    """
    refused = _validation_failures(log, node_types)
    if refused:
        return refused
    qnn_ops = list(dict.fromkeys(re.findall(r"could not create op: (\S+)", log)))
    reason = f"could not create op {', '.join(qnn_ops)}" if qnn_ops else "HTP finalize failed"
    nodes: dict[str, dict[str, str]] = {}
    for qnn_name, what in re.findall(r'<E> "([^"]+)" generated: ([^\n]+)', log):
        name = _owner(qnn_name, node_types)
        detail = reason if "could not create op" in what else what.strip()
        nodes.setdefault(name, {"name": name, "op_type": node_types.get(name, "?"), "reason": detail})
    named = [n for n in nodes.values() if any(n["op_type"].upper() in op.upper() for op in qnn_ops)]
    if named or nodes:
        return named or list(nodes.values())
    errors = list(dict.fromkeys(re.findall(r"::ERROR:([^\n]+)", log)))[:3]
    return [{"name": "?", "op_type": "?", "reason": "; ".join(errors)}] if errors else []


def describe(refused: list[dict[str, str]]) -> str:
    """One line for the refused nodes; with their input shapes and the rewrite tried where they were added
    (graph/refusals.py), and where to read on."""
    def one(r: dict[str, str]) -> str:
        said = f"{r['name']} ({r['op_type']}): {r['reason']}"
        if "inputs" in r:
            said += f" [inputs {r['inputs']}]"
        return said + (f" [rewrite: {r['rewrite']}]" if "rewrite" in r else "")

    tail = " (docs/troubleshooting.md: A node QNN refuses)" if any("rewrite" in r for r in refused) else ""
    return "; ".join(one(r) for r in refused) + tail


def _explain_main(request: str) -> int:
    """Child of `failure_log`: open the session once with QNN's log verbose; the log goes to stderr."""
    import json

    raw = json.loads(request)
    try:
        htp_session(raw["model"], raw["provider"], fallback=raw["fallback"], verbose=True)
    except Exception as exc:  # the failure is what we came for
        print(f"session failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_explain_main(sys.argv[1]))
