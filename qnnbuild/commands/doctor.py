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
        from qnnbuild.toolchain import qnn

        versions["qnn_sdk"] = qnn.versions()["qnn_sdk"]
        libs = {p.name for p in qnn.library_dir().iterdir()}
        with tempfile.TemporaryDirectory() as tmp:
            model = Path(tmp) / "probe.onnx"
            _tiny_model(model)
            try:
                qnn.htp_session(str(model), {}).run(None, {"x": __import__("numpy").ones((1, 2), "float32")})
                backends["htp"] = (True, "emulated on this x86 host" if platform.machine() == "x86_64" else "")
            except Exception as exc:
                backends["htp"] = (False, str(exc).strip().splitlines()[0])
        backends["ir"] = ("libQnnIr.so" in libs, "writes DLC files (convert stage)")
        backends["cpu"] = ("libQnnCpu.so" in libs, "libQnnCpu.so is not shipped in onnxruntime-qnn")
        backends["gpu"] = (False, "libQnnGpu.so needs an OpenCL GPU; none here")
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
