"""Planning is a pure function: tested on literal plans, with the store and keys as plain functions."""

from __future__ import annotations

from typing import Any

from qnnbuild.engine.keys.document import explain, key_document, key_of
from qnnbuild.engine.keys.status import assess
from qnnbuild.engine.recipe.plan import Instance, Plan


def inst(id_: str, params: dict[str, Any] | None = None, inputs: dict[str, str] | None = None) -> Instance:
    return Instance(id_, id_, "command", None, params or {}, inputs or {}, (), {})


PLAN = Plan("r", "/r.yaml", (inst("a", {"n": 1}), inst("b", {"m": 2}, {"x": "a"}), inst("c", {}, {"y": "b"})),
            (("a",), ("b",), ("c",)))


def key_for(instance: Instance, upstream: dict[str, str]) -> tuple[str, dict[str, Any]]:
    doc = key_document("command", 1, instance.params, None, upstream, {}, {"tool": "1"}, "code")
    return key_of(doc), doc


def digests_of(keys: set[str]) -> Any:
    return lambda key: f"out-{key[:8]}" if key in keys else None


def all_keys() -> dict[str, str]:
    digests: dict[str, str] = {}
    keys = {}
    for i in PLAN.instances:
        key, _ = key_for(i, {n: digests[u] for n, u in i.inputs.items()})
        keys[i.id] = key
        digests[i.id] = f"out-{key[:8]}"
    return keys


def test_never_built() -> None:
    verdicts = assess(PLAN, key_for, digests_of(set()), lambda i, k: False, {})
    assert [(v.id, v.fresh, v.reasons) for v in verdicts] == [
        ("a", False, ["never built"]), ("b", False, ["input a will be rebuilt first"]),
        ("c", False, ["input b will be rebuilt first"])]


def test_all_fresh() -> None:
    keys = all_keys()
    verdicts = assess(PLAN, key_for, digests_of(set(keys.values())), lambda i, k: True, {})
    assert all(v.fresh and v.view_current for v in verdicts)
    assert [v.key for v in verdicts] == [keys["a"], keys["b"], keys["c"]]


def test_changed_parameter_is_named() -> None:
    keys = all_keys()
    _, old_doc = key_for(PLAN.instances[1], {"x": f"out-{keys['a'][:8]}"})
    changed = Plan("r", "/r.yaml", (PLAN.instances[0], inst("b", {"m": 3}, {"x": "a"}), PLAN.instances[2]),
                   PLAN.generations)
    verdicts = assess(changed, key_for, digests_of(set(keys.values())), lambda i, k: True,
                      {"b": {"key": keys["b"], "document": old_doc}})
    assert [(v.id, v.fresh, v.reasons) for v in verdicts] == [
        ("a", True, []), ("b", False, ["parameter m: 2 → 3"]), ("c", False, ["input b will be rebuilt first"])]


def test_forced_and_view_outdated() -> None:
    keys = all_keys()
    verdicts = assess(PLAN, key_for, digests_of(set(keys.values())), lambda i, k: i.id != "c", {},
                      frozenset({"a"}))
    assert [(v.id, v.fresh, v.reasons) for v in verdicts] == [
        ("a", False, ["forced"]), ("b", False, ["input a will be rebuilt first"]),
        ("c", False, ["input b will be rebuilt first"])]
    verdicts = assess(PLAN, key_for, digests_of(set(keys.values())), lambda i, k: i.id != "c", {})
    assert (verdicts[2].fresh, verdicts[2].view_current, verdicts[2].reasons) == (
        True, False, ["in the store; view will be updated"])


def test_missing_from_store_and_explain() -> None:
    keys = all_keys()
    verdicts = assess(PLAN, key_for, digests_of(set()), lambda i, k: False, {"a": {"key": keys["a"]}})
    assert verdicts[0].reasons == ["output missing from the store"]
    old = key_document("quantize", 1, {"a": "uint8"}, None, {"model": "x"}, {}, {"onnxruntime": "1.31"}, "c1")
    new = key_document("quantize", 2, {"a": "uint16"}, None, {"model": "y"}, {}, {"onnxruntime": "1.32"}, "c2")
    assert explain(old, new) == ["implementation version 1 → 2", "qnnbuild's code for this stage changed",
                                 "parameter a: uint8 → uint16",
                                 "input model changed", "tool onnxruntime: 1.31 → 1.32"]
