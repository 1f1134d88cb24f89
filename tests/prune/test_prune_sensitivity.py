"""Sensitivity analysis: one layer pruned at a time, the model untouched, the same data
from a serial run and from an Executor, and per-layer amounts chosen for a budget."""

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from refcompress import nn, prune as P
from refcompress.errors import ArgumentError, DTypeError


def model_and_eval():
    rng = np.random.default_rng(0)
    m = nn.Sequential(nn.Linear(6, 16, rng=rng), nn.ReLU(), nn.Linear(16, 3, rng=rng))
    X = rng.standard_normal((120, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    nn.fit(m, X, y, optimizer=nn.AdamW(m.parameters(), lr=1e-2), epochs=15, progress=False)
    return m, (lambda model: nn.evaluate(model, X, y)["accuracy"])


def test_sensitivity_serial_equals_executor_and_leaves_model_alone():
    m, ev = model_and_eval()
    before = m.state_dict()
    amounts = [0.0, 0.5, 0.9, 1.0]
    res = P.sensitivity_analysis(m, ev, amounts=amounts)
    with ThreadPoolExecutor(max_workers=2) as ex:
        res2 = P.sensitivity_analysis(m, ev, amounts=amounts, executor=ex)
    assert res.accuracy == res2.accuracy and res.layers == ["0", "2"]
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert P.masked_layers(m) == []
    # amount 0 is the unpruned model; each value is the model with exactly that layer pruned
    assert res.accuracy["0"][0] == res.baseline
    c = copy.deepcopy(m)
    P.magnitude_prune(c, amount=0.9, layers=["2"])
    assert res.accuracy["2"][2] == ev(c)
    rows = res.records()
    assert len(rows) == 8 and rows[0] == {"layer": "0", "amount": 0.0, "accuracy": res.baseline, "drop": 0.0}


def test_structured_sensitivity_and_choose_amounts():
    m, ev = model_and_eval()
    res = P.sensitivity_analysis(m, ev, amounts=[0.25, 0.5, 0.75], method="l1")
    assert res.layers == ["0"] and len(res.accuracy["0"]) == 3
    fake = P.SensitivityResult(baseline=0.9, amounts=[0.25, 0.5, 0.75], method="magnitude",
                               accuracy={"a": [0.9, 0.89, 0.5], "b": [0.7, 0.9, 0.9], "c": [0.9, 0.9, 0.9]})
    assert fake.choose_amounts(0.02) == {"a": 0.5, "b": 0.0, "c": 0.75}


def test_sensitivity_bad_input():
    m, ev = model_and_eval()
    with pytest.raises(ArgumentError, match="amounts"):
        P.sensitivity_analysis(m, ev, amounts=[0.5, 0.2])
    with pytest.raises(ArgumentError, match=r"amounts\[0\]"):
        P.sensitivity_analysis(m, ev, amounts=[1.5])
    with pytest.raises(ArgumentError, match="method"):
        P.sensitivity_analysis(m, ev, method="random")
    with pytest.raises(DTypeError, match="executor"):
        P.sensitivity_analysis(m, ev, executor=object())
    with pytest.raises(DTypeError, match="evaluate"):
        P.sensitivity_analysis(m, 3)


def test_a_drop_equal_to_the_budget_is_within_it():
    # 0.97 - 0.96 is 0.010000000000000009 in floats
    fake = P.SensitivityResult(baseline=0.97, amounts=[0.5, 0.75], method="magnitude",
                               accuracy={"a": [0.96, 0.95]})
    assert fake.choose_amounts(0.01) == {"a": 0.5}
