"""`python -m qnnbuild.commands.doctor`: probe the toolchain and print one JSON line (run by `qnnbuild doctor` in a
child process, because libQnnHtp writes to file descriptor 1 when it loads)."""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any


def _tiny_model(path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((2, 2), 0.5, np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))


def _run_on(backend: str) -> Any:
    """Probe a backend by running the tiny model on it, CPU fallback disabled (a silent fallback "works")."""
    def run(model: str, _folder: Path) -> str:
        import numpy as np

        from qnnbuild.toolchain.runtime import qnn

        qnn.htp_session(model, {"backend_type": backend}).run(None, {"x": np.ones((1, 2), np.float32)})
        return "ran a MatMul" + (" (emulated on this x86 host)" if platform.machine() == "x86_64" else "")
    return run


def _dump_dlc(model: str, folder: Path) -> str:
    """The IR backend is what convert uses: it counts as working when it writes a DLC."""
    from qnnbuild.toolchain.runtime import qnn

    dump = folder / "dump"
    dump.mkdir()
    qnn.htp_session(model, {"dump_qnn_ir_dlc": "1", "dump_qnn_ir_dlc_dir": str(dump),
                            "qnn_ir_backend_path": str(qnn.library_dir() / "libQnnIr.so")})
    written = [p for p in dump.iterdir() if p.suffix == ".dlc"]
    if not written:
        raise RuntimeError("the session opened but no DLC was written")
    return f"wrote a DLC ({written[0].stat().st_size} bytes)"


PROBES = {"htp": _run_on("htp"), "ir": _dump_dlc, "cpu": _run_on("cpu"), "gpu": _run_on("gpu")}


def _try(probe_fn: Any, model: str, folder: Path) -> tuple[bool, str]:
    """(worked, what was tried and what came of it): every answer comes from a real attempt."""
    try:
        return True, str(probe_fn(model, folder))
    except Exception as exc:  # any failure of a backend is the answer this probe reports
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
        return False, lines[0][:300]


def probe() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str] = {"python": platform.python_version(), "platform": platform.platform()}
    advice: list[str] = []
    for dist in ("qnnbuild", "onnx", "onnxruntime", "onnxruntime-qnn", "torch", "numpy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "not installed"
            hint = "pip install 'qnnbuild[torch]' (torch==2.13.0, CPU)" if dist == "torch" else f"pip install {dist}"
            advice.append(f"{dist} is missing: {hint}" + (" — needed only for torch exports" if dist == "torch"
                                                           else ""))
    backends: dict[str, tuple[bool, str]] = {}
    try:
        from qnnbuild.toolchain.runtime import qnn

        versions["qnn_sdk"] = qnn.versions()["qnn_sdk"]
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / "probe.onnx"
            _tiny_model(model)
            backends = {name: _try(probe_fn, str(model), Path(tmp)) for name, probe_fn in PROBES.items()}
    except ImportError as exc:
        advice.append(f"onnxruntime-qnn does not import ({exc}): pip install onnxruntime-qnn==2.7.0 "
                      "(x86-64 Linux or Windows on Snapdragon)")
    if not backends.get("htp", (False, ""))[0]:
        advice.append("the HTP backend does not load: nothing can be compiled here")
    ok = backends.get("htp", (False, ""))[0] and backends.get("ir", (False, ""))[0]
    return {"ok": ok, "versions": versions, "backends": backends, "advice": advice}


if __name__ == "__main__":
    report = probe()
    sys.stdout.flush()
    print("\n" + json.dumps(report))
