"""Which nodes of a QDQ model QNN takes for a part, and which it leaves to the CPU, with QNN's reasons: what
convert judges a model by, and what a compile that fails on a node names."""

from __future__ import annotations

from typing import Any

from qnnbuild.toolchain.runtime import qnn

QDQ = ("QuantizeLinear", "DequantizeLinear")


def refused_nodes(model: str, options: dict[str, str]) -> tuple[list[dict[str, str]], int]:
    """Nodes QNN would leave to the CPU with provider `options` (fallback allowed, so all of them are listed),
    or the nodes HTP finalize could not create, with QNN's reasons; and the number of nodes QNN took. The
    QuantizeLinear/DequantizeLinear around a refused node go with it and are not listed beside it."""
    import onnx

    try:
        with qnn.captured_stderr() as log:
            session = qnn.htp_session(model, options, {"session.record_ep_graph_assignment_info": "1"},
                                      fallback=True, verbose=True)
    except Exception as exc:
        types = {n.name: n.op_type for n in onnx.load(model, load_external_data=False).graph.node}
        failed = qnn.finalize_failures(qnn.failure_log(model, options, fallback=True), types)
        return failed or [{"name": "?", "op_type": "?", "reason": str(exc).strip()}], 0
    reasons = qnn.refusal_reasons(log[0])
    refused: list[dict[str, str]] = []
    on_qnn = 0
    for subgraph in session.get_provider_graph_assignment_info():
        nodes: Any = subgraph.get_nodes()
        if subgraph.ep_name == "QNNExecutionProvider":
            on_qnn += len(nodes)
            continue
        refused += [{"name": n.name, "op_type": n.op_type, "reason": reasons.get(n.name, "not supported by QNN")}
                    for n in nodes]
    real = [r for r in refused if r["op_type"] not in QDQ]
    return real or refused, on_qnn
