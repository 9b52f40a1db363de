"""The check's sessions test a run's feed in linear time, with onnxruntime's outcome."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxfix.check.compare import make_session, run_all


def _adds(n: int) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [2]) for k in range(n)]
    nodes = [helper.make_node("Add", ["x0", f"x{k}"], [f"y{k}"]) for k in range(1, n)]
    outputs = [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, [2]) for k in range(1, n)]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _stock(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_full_feed_runs_as_with_onnxruntimes_own_check():
    model = _adds(50)
    feeds = {f"x{k}": np.full(2, k, np.float32) for k in range(50)}
    got = run_all(make_session(model), feeds)
    want = run_all(_stock(model), feeds)
    assert list(got) == list(want)
    assert all(np.array_equal(got[k], want[k]) for k in got)


def test_a_missing_input_raises_onnxruntimes_own_error():
    # the shortcut must never let a run through that onnxruntime's check refuses
    model = _adds(5)
    feeds = {f"x{k}": np.zeros(2, np.float32) for k in (0, 1, 3)}
    with pytest.raises(ValueError) as ours:
        make_session(model).run(None, feeds)
    with pytest.raises(ValueError) as stock:
        _stock(model).run(None, feeds)
    assert str(ours.value) == str(stock.value) and "x2" in str(ours.value)


def test_the_feed_is_not_searched_once_per_input(monkeypatch):
    # onnxruntime's own check searches the list of fed names once per input (quadratic)
    sess = make_session(_adds(300))
    feeds = {f"x{k}": np.zeros(2, np.float32) for k in range(300)}
    searched = []

    class Names(list):
        def __contains__(self, name):
            searched.append(name)
            return super().__contains__(name)

    sess._validate_input(Names(feeds))
    assert not searched
