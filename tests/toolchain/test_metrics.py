import math

import numpy as np
import pytest

from qnnbuild.stages.profile import parse_profile, percentile
from qnnbuild.stages.validate import verdicts
from qnnbuild.toolchain.data.metrics import compare, cosine, sqnr_db
from qnnbuild.toolchain.quant.sensitivity import rank


def test_sqnr_and_cosine() -> None:
    ref = np.array([3.0, 4.0])
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref + np.array([0.3, 0.4])) == pytest.approx(20.0)
    assert cosine(ref, 2 * ref) == pytest.approx(1.0)
    assert cosine(ref, -ref) == pytest.approx(-1.0)


def test_classifier_agreement() -> None:
    refs = [np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0]]), np.array([[0.8, 0.1, 0.0, 0.0, 0.0, 0.05]])]
    gots = [np.array([[0.2, 0.7, 0.0, 0.0, 0.0, 0.0]]), np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])]
    figures = compare(refs, gots)
    assert figures["top1_agreement"] == 0.5
    assert figures["top5_agreement"] == 0.5  # class 0 is the worst of six in the second sample
    assert figures["samples"] == 2


def test_threshold_messages() -> None:
    figures = {"logits": {"sqnr_db": 18.5, "cosine": 0.97, "top1_agreement": 0.5}}
    assert verdicts(figures, {"min_sqnr_db": 20, "min_cosine": 0.99, "min_top1_agreement": 0.9}) == [
        "logits: SQNR 18.50 dB < required 20 dB", "logits: cosine 0.9700 < required 0.99",
        "logits: top-1 agreement 50.0% < required 90.0%"]
    assert verdicts(figures, {"min_sqnr_db": 18}) == []


def test_rank_by_sqnr_lost() -> None:
    sqnr = {"input": 45.0, "a": 40.0, "b": 15.0, "c": 14.0}
    rows = rank(sqnr, {"a": ["input"], "b": ["a"], "c": ["b"]})
    assert [(r["tensor"], r["lost_db"]) for r in rows] == [("b", 25.0), ("a", 5.0), ("c", 1.0), ("input", 0.0)]


def test_profile_parsing_and_percentiles() -> None:
    text = ("Msg Timestamp,Message,Time,Unit of Measurement,Timing Source,Event Level,Event Identifier\n"
            "0,BACKEND,100,CYCLES,BACKEND,ROOT,Accelerator (execute) time (cycles)\n"
            "0,NODE,60,CYCLES,BACKEND,SUB-EVENT,conv1_token_1:OpId_24 (cycles)\n"
            "0,NODE,40,CYCLES,BACKEND,SUB-EVENT,Transpose_token_10:OpId_18 (cycles)\n"
            "0,EXECUTE,15,US,BACKEND,ROOT,QNN (execute) time\n")
    assert parse_profile(text) == [{"cycles": 100, "ops": {"conv1_token_1": 60, "Transpose_token_10": 40},
                                    "execute_us": 15}]
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([5.0], 0.99) == 5.0
