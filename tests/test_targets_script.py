"""scripts/targets.py's own logic, without any deployment runtime: how two runs are judged
against onnxruntime, which tolerance a graph gets, and what a crashing or hanging runtime
child turns into (one cell, not a lost table)."""

from __future__ import annotations

import importlib.util
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FIXTURES
from onnx import TensorProto, helper

SCRIPTS = FIXTURES.parent / "scripts"


def _load(name: str):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"onnxfix_{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def targets():
    return _load("targets")


F32 = (1e-4, 1e-4)


def test_nan_where_onnxruntime_has_nan_passes_and_elsewhere_fails(targets):
    want = {"z": np.array([1.0, np.nan, 3.0], np.float32)}
    same = [np.array([1.0, np.nan, 3.00001], np.float32)]
    assert targets.judge(same, same, want, F32) == (True, "ok (1e-05)")
    moved = [np.array([np.nan, 2.0, 3.0], np.float32)]
    assert targets.judge(moved, moved, want, F32) == (False, "differs ('z', NaN elsewhere)")


def test_integer_outputs_must_be_exact_and_the_cell_counts_the_wrong_ones(targets):
    want = {"y": np.array([[3, 4, 5, 6]], np.int64)}
    got = [np.array([[3, 5, 5, 7]], np.float32)]  # ncnn returns every output as float32
    assert targets.judge(got, got, want, F32) == (False, "differs ('y', 2 of 4 integers)")
    assert targets.judge([want["y"]], [want["y"]], want, F32) == (True, "ok (exact)")


def test_two_runs_that_differ_are_not_repeatable(targets):
    want = {"y": np.zeros(3, np.float32)}
    assert targets.judge([np.zeros(3)], [np.ones(3)], want, F32) == (
        False, "repeatable: no ('y')")


def test_a_graph_computing_in_float16_gets_the_float16_tolerance(targets):
    def model(inner: int) -> onnx.ModelProto:
        nodes = [helper.make_node("Cast", ["x"], ["h"], to=inner),
                 helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
        graph = helper.make_graph(nodes, "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert targets.tolerance(model(TensorProto.FLOAT16)) == (2e-3, 2e-3)
    assert targets.tolerance(model(TensorProto.DOUBLE)) == (1e-4, 1e-4)


def test_a_0d_feed_stays_0d():  # np.ascontiguousarray makes it 1-d, which tract refuses
    runners = _load("target_runners")
    assert runners.contiguous(np.float32(0.5)).shape == ()
    assert runners.contiguous(np.arange(6).reshape(2, 3).T).flags["C_CONTIGUOUS"]


def test_a_runtime_child_that_crashes_costs_one_cell(targets, tmp_path):
    fake = tmp_path / "python"  # stands in for a venv's Python whose runtime segfaults
    fake.write_text("#!/bin/sh\nkill -SEGV $$\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    work = tmp_path / "work"
    work.mkdir()
    want = {"y": np.zeros(1, np.float32)}
    cases = {str(n): targets.Case(f"m{n}", onnx.ModelProto(), want, F32) for n in range(2)}
    cells = targets.run_runtime(str(fake), "tract", cases, work)
    assert cells == {"0": [False, "converts: crashed (signal 11)"],
                     "1": [False, "converts: crashed (signal 11)"]}


def test_rows_are_named_by_folder(targets):
    assert targets.label(Path("x/fixtures/ref1_static_ts.onnx")) == "ref1_static_ts"
    assert targets.label(Path("x/fixtures/edge/gan_ts.onnx")) == "edge/gan_ts"


def test_open_noise_dims_get_a_default_bound_and_loop_axes_the_check_size(targets):
    edge = FIXTURES / "edge"
    assert targets._open_noise_dims(edge / "loop_varying_draw.onnx") == (
        {"noise_eps:1": targets.NOISE_BOUND}, {})
    assert targets._open_noise_dims(edge / "ddim_loop_script.onnx") == (
        {}, {"Loop_iterations": targets.SIZE})


def test_constant_outputs_onnx2tf_drops_are_read_off_the_model():
    runners = _load("target_runners")
    value = helper.make_tensor("v", TensorProto.INT64, [1], [3])
    nodes = [helper.make_node("Constant", [], ["version"], value=value),
             helper.make_node("Identity", ["x"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("version", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1])],
        initializer=[onnx.numpy_helper.from_array(np.float32([0.5]), "w")])
    found = runners._constant_outputs(helper.make_model(graph))
    assert sorted(found) == ["version", "w"]
    np.testing.assert_array_equal(found["version"], [3])
    np.testing.assert_array_equal(found["w"], np.float32([0.5]))
