from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import helper

from tests.conftest import CLI, make_conv_model, write


def test_onnx_source_is_cleaned(tmp_path: Path, cli: CLI) -> None:
    extra = [helper.make_node("Identity", ["output"], ["out/final:0"]), helper.make_node("Relu", ["out/final:0"],
                                                                                            ["final;1"])]
    model = onnx.load(str(make_conv_model(tmp_path / "raw.onnx", input_name="input:0", dynamic_batch=True,
                                          extra_nodes=extra)))
    model.graph.output[0].name = "final;1"
    model.metadata_props.add(key="exporter", value="tf2onnx")
    onnx.save(model, str(tmp_path / "raw.onnx"))
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: ex
        stages:
          export: {kind: export, onnx: raw.onnx, inputs: {"input:0": [1, 3, 16, 16]}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    out = onnx.load(str(tmp_path / "artifacts/ex/export/model.onnx"))
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "Conv", "Relu"]  # Identity folded away
    assert all(n.name for n in out.graph.node)
    assert len({n.name for n in out.graph.node}) == len(out.graph.node)
    names = {t for n in out.graph.node for t in [*n.input, *n.output]}
    assert not any(c in name for name in names for c in ":;/")
    assert len(out.metadata_props) == 0
    spec = json.loads((tmp_path / "artifacts/ex/export/io.json").read_text())
    assert spec["inputs"] == [{"name": "input_0", "dtype": "float32", "shape": [1, 3, 16, 16],
                               "source_name": "input:0"}]
    assert spec["outputs"][0]["name"] == "final_1" and spec["outputs"][0]["source_name"] == "final;1"


def test_dynamic_dims_must_be_given(tmp_path: Path, cli: CLI) -> None:
    make_conv_model(tmp_path / "raw.onnx", dynamic_batch=True)
    write(tmp_path, "r.yaml", "schema_version: 1\nrecipe: ex\nstages:\n  export: {kind: export, onnx: raw.onnx}\n")
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "input 'input' has dynamic dimensions (N); give its shape under inputs: {input: [...]}" in err


def test_torch_factory_with_batchnorm_folded(tmp_path: Path, cli: CLI) -> None:
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: tt
        stages:
          export: {kind: export, torch: "qnnbuild.zoo.mobilenet:tiny_convnet", inputs: {image: [1, 3, 32, 32]},
                   outputs: [logits]}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    out = onnx.load(str(tmp_path / "artifacts/tt/export/model.onnx"))
    ops = [n.op_type for n in out.graph.node]
    assert "BatchNormalization" not in ops and "Constant" not in ops and "Identity" not in ops
    assert ops.count("Conv") == 3
    assert [i.name for i in out.graph.input] == ["image"] and [o.name for o in out.graph.output] == ["logits"]


def test_torch_factory_from_the_recipe_folder_and_bad_factory(tmp_path: Path, cli: CLI) -> None:
    write(tmp_path, "mynet.py", """\
        import torch
        def build():
            return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        def not_a_module():
            return 42
        """)
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: own
        stages:
          a: {kind: export, torch: "mynet:build", inputs: {x: [1, 3, 8, 8]}, sources: [mynet.py]}
          b: {kind: export, torch: "mynet:not_a_module", inputs: {x: [1, 3, 8, 8]}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "✓ a" in err
    assert "torch: mynet:not_a_module returned int, not a torch.nn.Module" in err


def _run_json(cli: CLI, recipe: str) -> dict[str, str]:
    code, out, err = cli("run", recipe, "--json")
    assert code == 0, err
    return {s["id"]: s["status"] for s in json.loads(out)["stages"]}


def test_imported_modules_are_discovered_inputs(tmp_path: Path, cli: CLI) -> None:
    """The factory's module and a helper it imports are keyed without `sources:`; an unrelated file is not."""
    write(tmp_path, "blocks.py", """\
        import torch
        def block(channels):
            return torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3), torch.nn.ReLU())
        """)
    write(tmp_path, "factory.py", """\
        from blocks import block
        def build():
            return block(4)
        """)
    write(tmp_path, "notes.py", "X = 1\n")
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: disc
        stages:
          export: {kind: export, torch: "factory:build", inputs: {x: [1, 3, 8, 8]}}
        """)
    assert _run_json(cli, "r.yaml") == {"export": "ran"}
    assert _run_json(cli, "r.yaml") == {"export": "cached"}

    def channels() -> int:
        model = onnx.load(str(tmp_path / "artifacts/disc/export/model.onnx"))
        return int(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value)

    assert channels() == 4
    write(tmp_path, "factory.py", "from blocks import block\ndef build():\n    return block(6)\n")
    _, out, _ = cli("status", "r.yaml")
    assert "input file factory.py changed" in out
    assert _run_json(cli, "r.yaml") == {"export": "ran"}
    assert channels() == 6

    write(tmp_path, "blocks.py", """\
        import torch
        def block(channels):
            return torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3), torch.nn.ReLU6())
        """)
    _, out, _ = cli("status", "r.yaml")
    assert "input file blocks.py changed" in out and "factory.py" not in out
    assert _run_json(cli, "r.yaml") == {"export": "ran"}
    ops = [n.op_type for n in onnx.load(str(tmp_path / "artifacts/disc/export/model.onnx")).graph.node]
    assert "Clip" in ops

    write(tmp_path, "notes.py", "X = 2\n")  # in the folder, never imported
    assert _run_json(cli, "r.yaml") == {"export": "cached"}

    write(tmp_path, "factory.py", "from blocks import block\ndef build():\n    return block(4)\n")  # a revert
    write(tmp_path, "blocks.py", """\
        import torch
        def block(channels):
            return torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3), torch.nn.ReLU())
        """)
    assert _run_json(cli, "r.yaml") == {"export": "cached"}  # the first build's entry, found again
    assert channels() == 4
    lock = json.loads((tmp_path / "artifacts/disc/qnnbuild.lock").read_text())
    assert sorted(lock["instances"]["export"]["document"]["discovered"]) == ["blocks.py", "factory.py"]


def test_inputs_bound_in_recipe_order_also_from_a_cached_plan(tmp_path: Path, cli: CLI) -> None:
    """`x` before `mask` (not alphabetical): a --force rebuild from the cached plan must bind them the same."""
    import numpy as np
    import onnxruntime as ort

    write(tmp_path, "twoin.py", """\
        import torch
        class TwoInputs(torch.nn.Module):
            def forward(self, x, mask):
                return 10 * x + mask
        def build():
            return TwoInputs()
        """)
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: order
        stages:
          export: {kind: export, torch: "twoin:build", inputs: {x: [1, 4], mask: [1, 4]}}
        """)
    x, mask = np.ones((1, 4), np.float32), np.full((1, 4), 2.0, np.float32)

    def built() -> tuple[list[str], float, str]:
        model = tmp_path / "artifacts/order/export/model.onnx"
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        value = float(session.run(None, {"x": x, "mask": mask})[0][0, 0])
        lock = json.loads((tmp_path / "artifacts/order/qnnbuild.lock").read_text())
        return [i.name for i in session.get_inputs()], value, lock["instances"]["export"]["key"]

    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    first = built()
    assert first[:2] == (["x", "mask"], 12.0)
    code, _, err = cli("run", "r.yaml", "--force", "export")
    assert code == 0, err
    assert built() == first
    # the order is part of the key: swapping the two names is another model
    (tmp_path / "r.yaml").write_text((tmp_path / "r.yaml").read_text().replace(
        "{x: [1, 4], mask: [1, 4]}", "{mask: [1, 4], x: [1, 4]}"))
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    swapped = built()
    assert swapped[0] == ["mask", "x"] and swapped[2] != first[2]


def test_exporter_is_a_keyed_choice_and_a_failure_is_not_swapped(tmp_path: Path, cli: CLI) -> None:
    """A model the TorchScript exporter cannot trace fails with the reason and the other exporter to try;
    it is never exported by dynamo at another opset under the torchscript key."""
    write(tmp_path, "bad.py", """\
        import torch
        class Sorts(torch.nn.Module):
            def forward(self, x):
                return torch.sort(x, stable=True).values * 2
        def build():
            return Sorts()
        """)
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: ex
        stages:
          export: {kind: export, torch: "bad:build", inputs: {x: [1, 4]}, opset: 17}
          dyn: {kind: export, torch: "mynet:build", inputs: {x: [1, 3, 8, 8]}, exporter: dynamo}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 2 and "dyn.opset" in err.replace("stages.", "") and "opset 18 or later" in err
    recipe = (tmp_path / "r.yaml").read_text()
    (tmp_path / "r.yaml").write_text("".join(line for line in recipe.splitlines(keepends=True) if "dyn:" not in line))
    code, _, err = cli("run", "r.yaml")
    assert code == 1
    assert "torch.onnx.export (torchscript exporter) failed" in err and "exporter: dynamo may export" in err
    assert not (tmp_path / "artifacts/ex/export").exists()


def test_torch_inputs_with_dtypes(tmp_path: Path, cli: CLI) -> None:
    """Token ids are int64: `inputs: {ids: {shape, dtype}}` traces them as such (the short form stays float32)."""
    write(tmp_path, "emb.py", """\
        import torch
        class Embed(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.table = torch.nn.Embedding(50, 4)
            def forward(self, ids, scale):
                return self.table(ids) * scale
        def build():
            torch.manual_seed(0)
            return Embed()
        """)
    write(tmp_path, "r.yaml", """\
        schema_version: 1
        recipe: emb
        stages:
          export: {kind: export, torch: "emb:build", inputs: {ids: {shape: [1, 8], dtype: int64}, scale: [1, 8, 4]}}
        """)
    code, _, err = cli("run", "r.yaml")
    assert code == 0, err
    spec = json.loads((tmp_path / "artifacts/emb/export/io.json").read_text())
    assert [(i["name"], i["dtype"], i["shape"]) for i in spec["inputs"]] == [("ids", "int64", [1, 8]),
                                                                           ("scale", "float32", [1, 8, 4])]
