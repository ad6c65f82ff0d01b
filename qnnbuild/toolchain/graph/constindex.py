"""GatherND and ScatterND whose indices are constants become Reshape / Slice / Gather / Concat, which HTP takes.

QNN's op validation refuses the GatherND that exporters leave behind once shapes are fixed (transformers' mask
functions broadcast the attention mask with one: `node_GatherND_40 (GatherND): ... refused it as GatherNd (error
3110)`), and ScatterND is as rare on HTP. With constant indices and a data shape known at the recipe's fixed
shapes, every element of the output is a known element of the data (and, for ScatterND, of the updates), so
the node is an index table over the flattened tensors:

- GatherND(data, idx) = Reshape(Gather(Reshape(data, [-1]), table), out_shape); a table that is a run of
  consecutive positions is a Slice, and the whole tensor in order is the Reshape alone;
- ScatterND(data, idx, updates) = Reshape(Gather(Concat(flat data, flat updates), table), data_shape): the
  table takes each position from the updates where an index writes it (the last write wins, as ONNX's
  reduction none leaves it) and from the data elsewhere.

Both are exact: an element is moved, never computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TABLE_LIMIT = 1 << 22  # elements: a bigger index table would be a weight of its own, not a fix for a mask


def _rows(shape: list[int], indices: Any) -> tuple[Any, int] | None:
    """Where each index tuple's slice starts in the flattened data, and the slice's length; None when an index
    lies outside the data (ONNX allows negative indices: counted from the end)."""
    k = int(indices.shape[-1])
    if k > len(shape):
        return None
    rows = indices.reshape(-1, k).astype(np.int64)
    lead = np.asarray(shape[:k], np.int64)
    rows = np.where(rows < 0, rows + lead, rows)
    if (rows < 0).any() or (rows >= lead).any():
        return None
    inner = int(np.prod(shape[k:], dtype=np.int64))
    return (np.ravel_multi_index(rows.T, shape[:k]) * inner if k else np.zeros(len(rows), np.int64)), inner


def _gathernd_table(shape: list[int], indices: Any, batch_dims: int) -> tuple[Any, list[int]] | None:
    """The flat positions of GatherND's output in the flattened data, and the output's shape."""
    found = _rows(shape, indices) if batch_dims == 0 else None
    if found is None:
        return None
    starts, inner = found
    table = (starts[:, None] + np.arange(inner, dtype=np.int64)[None, :]).reshape(-1)
    return table, [*indices.shape[:-1], *shape[int(indices.shape[-1]):]]


def _scatternd_table(shape: list[int], indices: Any) -> Any | None:
    """For each flat position of ScatterND's output: its position in Concat(flat data, flat updates)."""
    found = _rows(shape, indices)
    if found is None:
        return None
    starts, inner = found
    total = int(np.prod(shape, dtype=np.int64))
    table = np.arange(total, dtype=np.int64)
    for row, start in enumerate(starts):  # in order: the last write to a position wins
        table[start:start + inner] = total + row * inner + np.arange(inner)
    return table


def _take(prefix: str, flat: str, table: Any, out: str, shape: list[int], total: int) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers that take `table`'s positions of `flat` into `out` of `shape`: nothing but a
    Reshape for the whole tensor in order, a Slice for a run, a Gather otherwise."""
    from onnx import helper, numpy_helper

    nodes, inits = [], []
    source = flat
    if len(table) and np.array_equal(table, np.arange(table[0], table[0] + len(table))):
        if not (table[0] == 0 and len(table) == total):
            inits += [numpy_helper.from_array(np.array([table[0]], np.int64), f"{prefix}_start"),
                      numpy_helper.from_array(np.array([table[0] + len(table)], np.int64), f"{prefix}_end")]
            nodes.append(helper.make_node("Slice", [flat, f"{prefix}_start", f"{prefix}_end"], [f"{prefix}_run"],
                                          name=f"{prefix}_slice"))
            source = f"{prefix}_run"
    else:
        inits.append(numpy_helper.from_array(table.astype(np.int64), f"{prefix}_table"))
        nodes.append(helper.make_node("Gather", [flat, f"{prefix}_table"], [f"{prefix}_taken"], axis=0,
                                      name=f"{prefix}_gather"))
        source = f"{prefix}_taken"
    inits.append(numpy_helper.from_array(np.asarray(shape, np.int64), f"{prefix}_shape"))
    nodes.append(helper.make_node("Reshape", [source, f"{prefix}_shape"], [out], name=f"{prefix}_reshape"))
    return nodes, inits


def _flatten(prefix: str, tensor: str) -> tuple[Any, Any]:
    from onnx import helper, numpy_helper

    flat = numpy_helper.from_array(np.array([-1], np.int64), f"{prefix}_flat")
    return helper.make_node("Reshape", [tensor, flat.name], [f"{tensor}_{prefix}_flat"], name=f"{prefix}_flatten"), flat


def constant_indices(model: Any, shapes: dict[str, list[int]]) -> list[str]:
    """Every GatherND and ScatterND with constant indices and a known data shape (`shapes`: tensor → static
    shape), rewritten in place; the names of the nodes rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constant = {i.name: i for i in graph.initializer}
    changed = []
    for node in list(graph.node):
        if node.op_type not in ("GatherND", "ScatterND") or node.input[1] not in constant:
            continue
        shape = shapes.get(node.input[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if shape is None or any(not isinstance(d, int) or d < 1 for d in shape):
            continue
        indices = numpy_helper.to_array(constant[node.input[1]])
        if indices.size > TABLE_LIMIT:
            continue
        total = int(np.prod(shape, dtype=np.int64))
        prefix = node.name or node.output[0]
        flatten, flat_shape = _flatten(prefix, node.input[0])
        if node.op_type == "GatherND":
            found = _gathernd_table(shape, indices, int(attrs.get("batch_dims", 0)))
            if found is None:
                continue
            taken, inits = _take(prefix, flatten.output[0], found[0], node.output[0], found[1], total)
            replacement = [flatten, *taken]
        else:
            table = None if attrs.get("reduction", b"none") not in (b"none", "none") else _scatternd_table(shape,
                                                                                                       indices)
            if table is None:
                continue
            updates, updates_shape = _flatten(f"{prefix}_updates", node.input[2])
            joined = helper.make_node("Concat", [flatten.output[0], updates.output[0]], [f"{prefix}_joined"], axis=0,
                                      name=f"{prefix}_concat")
            taken, inits = _take(prefix, joined.output[0], table, node.output[0], list(shape), -1)
            replacement = [flatten, updates, joined, *taken]
            inits.append(updates_shape)
        position = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, new in enumerate(replacement):
            graph.node.insert(position + offset, new)
        graph.initializer.extend([flat_shape, *inits])
        changed.append(node.name or node.output[0])
    return changed
