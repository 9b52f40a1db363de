"""Every committed fixture, both modes, checked independently of onnxfix's own parity code.

The independent check: run the original with its draws exposed, standardize each draw with
the plain float64 formula, feed it to the rewritten model at two batch sizes, compare.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, expose, full_check, random_nodes, run

import onnxfix
from onnxfix.ops import attrs_of

FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("*.onnx"))


def _affine_only(model: onnx.ModelProto) -> bool:
    return all(n.op_type.startswith("Random") for n in random_nodes(model))


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(FIXTURES / name)


def _is_dynamic(model: onnx.ModelProto) -> bool:
    return any(d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim)


def _inputs(model: onnx.ModelProto, batch: int, rng) -> dict:
    feeds = {}
    for i in model.graph.input:
        t = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _standard_noise(node: onnx.NodeProto, draw: np.ndarray) -> np.ndarray:
    a = attrs_of(node)
    if "Normal" in node.op_type:
        offset, factor = a.get("mean", 0.0), a.get("scale", 1.0)
    else:
        offset, factor = a.get("low", 0.0), a.get("high", 1.0) - a.get("low", 0.0)
    return ((draw.astype(np.float64) - offset) / factor).astype(draw.dtype)


def test_fixture_set_is_complete():
    stems = {n.removesuffix(".onnx") for n in FIXTURE_FILES}
    for ref in ("ref1", "ref2", "ref3", "randn_like"):
        for batch in ("static", "dynamic"):
            for exporter in ("ts", "dynamo"):
                assert f"{ref}_{batch}_{exporter}" in stems


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_input_noise_reproduces_the_original_given_its_draws(name, rng):
    model = _load(name)
    new, report = onnxfix.rewrite(model, "input-noise")
    full_check(new)
    assert new.ir_version == model.ir_version
    assert list(new.opset_import) == list(model.opset_import)
    assert random_nodes(new) == []
    assert report.parity.status == "passed"
    draws = random_nodes(model)
    noise_of = {r.output: r.replacement.name for r in report.nodes}
    if _is_dynamic(model):  # the batch dim of every noise input is proven to be the input's
        for r in report.nodes:
            assert r.replacement.shape[0] == "batch", (r.output, r.replacement.shape)
    assert sorted(noise_of) == sorted(n.output[0] for n in draws)
    if not _affine_only(model):
        return  # discrete draws: checked by the tool's parity above and in test_ops.py
    captured = expose(model, [n.output[0] for n in draws])
    for batch in ([2, 5] if _is_dynamic(model) else [None]):
        feeds = _inputs(model, batch, rng)
        want = run(captured, feeds)
        noise = {noise_of[n.output[0]]: _standard_noise(n, want[n.output[0]]) for n in draws}
        got = run(new, {**feeds, **noise})
        for out in model.graph.output:
            np.testing.assert_allclose(got[out.name].astype(np.float64),
                                       want[out.name].astype(np.float64),
                                       rtol=2e-3 if got[out.name].dtype == np.float16 else 1e-5,
                                       atol=2e-3 if got[out.name].dtype == np.float16 else 1e-5)


@pytest.mark.parametrize("name", FIXTURE_FILES)
def test_constant_mode_freezes_one_draw_per_node(name, rng):
    model = _load(name)
    dims = {"batch": 3} if _is_dynamic(model) else {}
    new, report = onnxfix.rewrite(model, "constant", dims=dims, seed=11)
    full_check(new)
    assert random_nodes(new) == [] and report.parity.status == "passed"
    frozen = {t.name: onnx.numpy_helper.to_array(t) for t in new.graph.initializer
              if t.name in {r.replacement.name for r in report.nodes}}
    assert len(frozen) == len(random_nodes(model))
    feeds = _inputs(new, 3, rng)
    first, second = run(new, feeds), run(new, feeds)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    if not _affine_only(model):
        return
    # The original, its random nodes cut out and fed the frozen draws, computes the same.
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    keep = [n for n in cut.graph.node if n.output[0] not in frozen]
    del cut.graph.node[:]
    cut.graph.node.extend(keep)
    for name_, value in frozen.items():
        cut.graph.input.append(onnx.helper.make_tensor_value_info(
            name_, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    want = run(cut, {**feeds, **frozen})
    for out in model.graph.output:
        np.testing.assert_allclose(first[out.name], want[out.name], rtol=1e-5, atol=1e-6)
