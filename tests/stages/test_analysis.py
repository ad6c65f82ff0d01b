"""validate, layer-error, profile and infer on the tiny model, on the HTP emulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.conftest import CLI, TINY_RECIPE, run_process, write

ANALYSIS = """\
  validate: {kind: validate, context: context, reference: export, min_sqnr_db: %s}
  layers:   {kind: layer-error, model: quantize, reference: export}
  profile:  {kind: profile, context: context, model: quantize, runs: 5}
"""


def test_validate_passes_a_reachable_threshold_and_fails_an_unreachable_one(tiny_project: Path, cli: CLI) -> None:
    write(tiny_project, "tiny.yaml", TINY_RECIPE + ANALYSIS % 20)
    code, _, err = cli("run", "tiny.yaml")
    assert code == 0, err
    metrics = json.loads((tiny_project / "artifacts/tiny/validate/SM8650/metrics.json").read_text())
    figures = metrics["outputs"]["output"]
    assert 25 < figures["sqnr_db"] < 60 and figures["cosine"] > 0.99 and figures["samples"] == 8
    assert metrics["passed"] is True and metrics["thresholds"] == {"min_sqnr_db": 20}

    write(tiny_project, "tiny.yaml", TINY_RECIPE + ANALYSIS % 90)
    code, out, err = cli("run", "tiny.yaml", "--json")
    assert code == 1
    statuses = {s["id"]: s["status"] for s in json.loads(out)["stages"]}
    assert statuses["validate[SM8650]"] == "failed" and statuses["context[SM8650]"] == "cached"
    sqnr = figures["sqnr_db"]
    assert (f"accuracy on SM8650 below the recipe's thresholds: output: SQNR {sqnr:.2f} dB < required 90 dB"
            in err)


def test_layer_error_ranks_an_int4_layer_first(tiny_project: Path, cli: CLI) -> None:
    int4 = TINY_RECIPE.replace("weights: uint8}", "weights: uint8, overrides: {w1: {type: int4}}}")
    write(tiny_project, "tiny.yaml", int4 + ANALYSIS % 0)
    code, _, err = cli("run", "tiny.yaml", "--only", "layers")
    assert code == 0, err
    layers = json.loads((tiny_project / "artifacts/tiny/layers/layers.json").read_text())
    assert layers["activations"][0]["tensor"] == "r1"  # conv1 (int4 weights) → relu1 output
    assert layers["activations"][0]["lost_db"] > 10
    assert layers["weights"][0]["tensor"] == "w1" and layers["weights"][0]["bits"] == 4
    assert "r1" in layers["suggested_overrides"]

    write(tiny_project, "tiny.yaml", TINY_RECIPE + ANALYSIS % 0)  # without the override r1 is not the worst
    cli("run", "tiny.yaml", "--only", "layers")
    plain = json.loads((tiny_project / "artifacts/tiny/layers/layers.json").read_text())
    assert plain["activations"][0]["tensor"] != "r1"


def test_layer_error_over_workers_writes_the_same_report(tiny_project: Path, cli: CLI) -> None:
    """9 samples in 3 shard processes: layers.json byte for byte the single process's; workers is unkeyed."""
    recipe = TINY_RECIPE + "  layers: {kind: layer-error, model: quantize, reference: export, " \
                           "data: {synthetic: {count: 9, seed: 5}}, workers: %d}\n"
    write(tiny_project, "tiny.yaml", recipe % 1)
    code, _, err = cli("run", "tiny.yaml")
    assert code == 0, err
    report = tiny_project / "artifacts/tiny/layers/layers.json"
    single = report.read_bytes()
    write(tiny_project, "tiny.yaml", recipe % 3)
    code, out, err = cli("run", "tiny.yaml", "--json", "--force", "layers")
    assert code == 0, err
    assert report.read_bytes() == single
    assert "9 samples in 3 shard(s)" in (tiny_project / "artifacts/tiny/layers/.qnnbuild/stage.log").read_text()
    code, out, err = cli("run", "tiny.yaml", "--json")
    assert {s["id"]: s["status"] for s in json.loads(out)["stages"]}["layers"] == "cached"


def test_profile_names_onnx_nodes(tiny_project: Path, cli: CLI) -> None:
    write(tiny_project, "tiny.yaml", TINY_RECIPE + ANALYSIS % 0)
    code, _, err = cli("run", "tiny.yaml", "--only", "profile")
    assert code == 0, err
    profile = json.loads((tiny_project / "artifacts/tiny/profile/SM8650/profile.json").read_text())
    assert profile["total_cycles_mean"] > 0 and profile["runs"] == 5
    assert {"conv1", "conv2"} <= {o["onnx_node"] for o in profile["ops"]}
    assert set(profile["emulator_latency_ms"]) == {"mean", "p50", "p95", "p99", "min", "max"}
    assert "emulator" in profile["note"]
    csv = (tiny_project / "artifacts/tiny/profile/SM8650/profile.csv").read_text().splitlines()
    assert csv[0] == "op,onnx_node,cycles_mean,cycles_min,share" and len(csv) == len(profile["ops"]) + 1


def test_infer_cli_and_python_api(tiny_project: Path, cli: CLI) -> None:
    assert cli("run", "tiny.yaml")[0] == 0
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tiny_project / "x.npy", x[0])
    proc = run_process(["infer", "tiny.yaml", "--target", "SM8650", "--input", "x.npy", "-o", "y.npz"], tiny_project)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("output: shape [1, 4, 16, 16] float32")  # nothing else on stdout
    probe = write(tiny_project, "probe.py", """\
        import numpy as np, qnnbuild
        from qnnbuild.toolchain.runtime import qnn
        x = np.load("x.npy")[None]
        y = qnnbuild.load("tiny.yaml", "SM8650").run({"input": x})["output"]
        ref = qnn.cpu_session("model.onnx").run(None, {"input": x})[0]
        assert np.allclose(np.load("y.npz")["output"], y)
        print("SQNR", 10 * np.log10((ref ** 2).sum() / ((ref - y) ** 2).sum()))
        """)
    import subprocess
    import sys
    done = subprocess.run([sys.executable, str(probe)], cwd=tiny_project, capture_output=True, text=True, check=True)
    assert float(done.stdout.split("SQNR")[-1]) > 25
    code, _, err = cli("infer", "tiny.yaml", "--target", "SM8750", "--input", "x.npy")
    assert (code, err) == (2, "qnnbuild: tiny.yaml: no context-binary for target 'SM8750'; built targets: SM8650\n")
