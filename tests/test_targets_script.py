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


def _shaped(inputs: dict, outputs: dict) -> onnx.ModelProto:
    """A model with these input and output shapes (its one node is never run)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [next(iter(inputs))], [next(iter(outputs))])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()])
    return helper.make_model(graph)


def test_the_batch_is_the_symbolic_dim_leading_every_input(targets, tmp_path):
    def batch(inputs: dict) -> str | None:
        onnx.save(_shaped(inputs, {"y": [1]}), tmp_path / "m.onnx")
        return targets.batch_dim(tmp_path / "m.onnx")

    assert batch({"x": ["n", 3, 4, 4], "noise": ["n", 1, 4, 4]}) == "n"
    assert batch({"x": ["n", 3], "steps": []}) is None  # a 0-d input has no batch axis
    assert batch({"x": ["n", 3], "t": ["m", 3]}) is None
    assert batch({"x": [2, 3]}) is None
    assert targets.batch_dim(FIXTURES / "edge" / "stylegan_noise_ts.onnx") == "batch"


def test_ncnn_runs_sample_by_sample_only_where_every_input_and_output_leads_with_the_batch():
    runners = _load("target_runners")
    whole = _shaped({"x": [2, 4, 4, 4], "noise": [2, 1, 4, 4]}, {"y": [2, 4, 8, 8]})
    twin = _shaped({"x": [1, 4, 4, 4], "noise": [1, 1, 4, 4]}, {"y": [1, 4, 8, 8]})
    assert runners.batch_size(whole, twin, {"y": [2, 4, 8, 8]}) == 2
    # an output that does not lead with the batch (a loop's iteration axis, a scalar)
    assert runners.batch_size(whole, twin, {"y": [3, 4, 8, 8]}) == 0
    assert runners.batch_size(whole, twin, {"y": []}) == 0
    # an input whose other axes moved with the batch is not batched along axis 0
    moved = _shaped({"x": [1, 4, 4, 4], "noise": [1, 1, 4, 2]}, {"y": [1, 4, 8, 8]})
    assert runners.batch_size(whole, moved, {"y": [2, 4, 8, 8]}) == 0


def test_ncnn_outputs_take_the_reference_shape_written_beside_the_model(tmp_path):
    runners = _load("target_runners")
    model = _shaped({"x": [2, 3]}, {"y": ["d0", "d1"]})
    path = tmp_path / "0.onnx"
    assert runners.output_shapes(path, model) == {"y": [0, 0]}  # declared: symbolic
    (tmp_path / "0.outputs.json").write_text('{"y": [2, 4, 4]}')
    assert runners.output_shapes(path, model) == {"y": [2, 4, 4]}
    assert runners._reshaped(np.zeros((8, 4)), [2, 4, 4]).shape == (2, 4, 4)
    assert runners._reshaped(np.zeros((3, 4)), [2, 4, 4]).shape == (3, 4)  # left to judge
