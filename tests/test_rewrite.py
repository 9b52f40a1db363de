"""The input-noise and constant passes on small models built inline in ONNX text."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import full_check, input_dims, op_types, parse, random_nodes, run

from onnxfix import ModelError, UsageError
from onnxfix.rewrite import NOISE_METADATA_KEY, rewrite_model

EXPORTER_CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,10] x) => (float[batch,10] y) {
  s = Shape(x)
  c = ConstantOfShape(s)
  r = RandomNormalLike<mean=2.0, scale=0.5>(c)
  y = Add(x, r)
}
"""


def test_exporter_chain_becomes_noise_input_with_mean_and_scale_in_graph(rng):
    model = parse(EXPORTER_CHAIN)
    out, records = rewrite_model(model, "input-noise")
    full_check(out)
    # Shape -> ConstantOfShape only fed the draw: gone. Mul/Add apply scale and mean.
    assert op_types(out) == ["Constant", "Mul", "Constant", "Add", "Add"]
    assert [i.name for i in out.graph.input] == ["x", "noise_r"]
    assert input_dims(out, "noise_r") == ["batch", 10]
    assert out.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert len(records) == 1 and records[0].replacement.name == "noise_r"
    assert records[0].output == "r" and records[0].graph == "main"
    x = rng.standard_normal((3, 10)).astype(np.float32)
    zero = run(out, {"x": x, "noise_r": np.zeros((3, 10), np.float32)})["y"]
    np.testing.assert_allclose(zero, x + 2.0, rtol=1e-6)
    eps = rng.standard_normal((3, 10)).astype(np.float32)
    got = run(out, {"x": x, "noise_r": eps})["y"]
    np.testing.assert_array_equal(got, x + (eps * np.float32(0.5) + np.float32(2.0)))


def test_default_mean_and_scale_add_no_arithmetic_but_keep_the_name():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch,4] x) => (float[batch,4] y) {
      r = RandomNormalLike(x)
      y = Mul(x, r)
    }""")
    out, _ = rewrite_model(model, "input-noise")
    full_check(out)
    assert op_types(out) == ["Identity", "Mul"]
    ident = out.graph.node[0]
    assert list(ident.input) == ["noise_r"] and list(ident.output) == ["r"]


def test_dtype_attribute_wins_over_the_input_type():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y) {
      r = RandomNormalLike<dtype=11, mean=1.0>(x)
      rf = Cast<to=1>(r)
      y = Add(x, rf)
    }""")
    out, records = rewrite_model(model, "input-noise")
    full_check(out)
    noise = out.graph.input[1]
    assert noise.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert records[0].replacement.dtype == "double"
    x = np.ones((2, 3), np.float32)
    y = run(out, {"x": x, "noise_r": np.full((2, 3), 0.25)})["y"]
    np.testing.assert_allclose(y, 1 + 1.25)


def test_float16_like_takes_the_input_type_and_zero_noise_gives_the_mean():
    model = parse("""
    <ir_version: 7, opset_import: ["" : 14]>
    g (float16[2,3,4] input) => (float16[2,3,4] output) {
      output = RandomNormalLike<mean=10.0, scale=1.5, seed=0.0>(input)
    }""")
    out, records = rewrite_model(model, "input-noise")
    full_check(out)
    assert out.ir_version == 7 and out.opset_import[0].version == 14
    assert records[0].replacement.dtype == "float16"
    assert input_dims(out, "noise_output") == [2, 3, 4]
    y = run(out, {"input": np.zeros((2, 3, 4), np.float16),
                  "noise_output": np.zeros((2, 3, 4), np.float16)})["output"]
    assert y.dtype == np.float16 and np.all(y == 10.0)
    y = run(out, {"input": np.zeros((2, 3, 4), np.float16),
                  "noise_output": np.full((2, 3, 4), 2.0, np.float16)})["output"]
    assert np.all(y == 13.0)


def test_random_normal_without_inputs_whose_draw_is_the_graph_output():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g () => (float[2,3] y) {
      y = RandomNormal<shape=[2,3], scale=3.0>()
    }""")
    out, _ = rewrite_model(model, "input-noise")
    full_check(out)
    assert [o.name for o in out.graph.output] == ["y"]
    assert input_dims(out, "noise_y") == [2, 3]
    eps = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run(out, {"noise_y": eps})["y"], 3 * eps)


def test_draw_that_is_both_a_graph_output_and_consumed():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch,3] x) => (float[batch,3] r, float[batch,3] y) {
      r = RandomUniformLike<low=-1.0, high=3.0>(x)
      y = Add(x, r)
    }""")
    out, _ = rewrite_model(model, "input-noise")
    full_check(out)
    x = np.ones((2, 3), np.float32)
    u = np.full((2, 3), 0.5, np.float32)
    res = run(out, {"x": x, "noise_r": u})
    np.testing.assert_allclose(res["r"], np.full((2, 3), 1.0))
    np.testing.assert_allclose(res["y"], np.full((2, 3), 2.0))


def test_identical_nodes_never_share_a_noise_input(rng):
    model = parse("""
    <ir_version: 6, opset_import: ["" : 9]>
    g (float[batch,2] m) => (float[batch,2] a, float[batch,2] b) {
      r1 = RandomNormalLike<dtype=1>(m)
      r2 = RandomNormalLike<dtype=1>(m)
      a = Add(m, r1)
      b = Add(m, r2)
    }""")
    out, records = rewrite_model(model, "input-noise")
    full_check(out)
    names = [r.replacement.name for r in records]
    assert names == ["noise_r1", "noise_r2"]
    m = rng.standard_normal((4, 2)).astype(np.float32)
    e1, e2 = (rng.standard_normal((4, 2)).astype(np.float32) for _ in range(2))
    res = run(out, {"m": m, "noise_r1": e1, "noise_r2": e2})
    np.testing.assert_allclose(res["a"], m + e1)
    np.testing.assert_allclose(res["b"], m + e2)
    assert not np.allclose(res["a"], res["b"])


def test_noise_names_never_collide_with_existing_names():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, float[2] noise_r) => (float[2] y) {
      r = RandomNormalLike(x)
      t = Add(r, noise_r)
      noise_r_1 = Identity(t)
      y = Identity(noise_r_1)
    }""")
    out, records = rewrite_model(model, "input-noise")
    full_check(out)
    assert records[0].replacement.name == "noise_r_2"
    added = [n.name for n in out.graph.node if n.op_type == "Identity" and "onnxfix" in n.name]
    assert added and all(added)


def test_every_added_node_has_a_unique_nonempty_name():
    model = parse(EXPORTER_CHAIN.replace("y = Add(x, r)", """
      r2 = RandomNormalLike<mean=2.0, scale=0.5>(c)
      t = Add(x, r)
      y = Add(t, r2)"""))
    out, _ = rewrite_model(model, "input-noise")
    names = [n.name for n in out.graph.node if n.name]
    added = [n for n in out.graph.node if n.name.startswith("onnxfix_")]
    assert len(added) == 8  # two draws x (2 Constants + Mul + Add)
    assert len(names) == len(set(names))


def test_shape_producers_still_used_elsewhere_are_kept():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch,10] x) => (float[batch,10] y, int64[2] s) {
      s = Shape(x)
      c = ConstantOfShape(s)
      r = RandomNormalLike(c)
      y = Add(x, r)
    }""")
    out, _ = rewrite_model(model, "input-noise")
    full_check(out)
    assert op_types(out) == ["Shape", "Identity", "Add"]


def test_dims_from_data_values_are_never_claimed_as_input_dims():
    # NonZero's count comes from x's values: not a function of any input dim
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch,3] x) => (float[2,K] y) {
      nz = NonZero(x)
      c = Cast<to=1>(nz)
      y = RandomNormalLike(c)
    }""")
    with pytest.raises(ModelError, match=r"axis 1 of its noise 'noise_y' is data-dependent "
                                         r"\(the size of 'c' axis 1 comes from NonZero -> 'nz'"):
        rewrite_model(model, "input-noise")
    out, _ = rewrite_model(model, "input-noise", noise_bounds={"noise_y:1": 7})
    assert input_dims(out, "noise_y") == [2, 7]


def test_noise_input_documents_its_distribution_and_metadata_lists_it():
    out, _ = rewrite_model(parse(EXPORTER_CHAIN), "input-noise")
    doc = out.graph.input[1].doc_string
    assert "standard normal N(0, 1)" in doc and "r = 2 + 0.5 * noise" in doc
    meta = {p.key: p.value for p in out.metadata_props}
    import json

    entries = json.loads(meta[NOISE_METADATA_KEY])
    assert entries == [{"name": "noise_r", "family": "normal", "dtype": "float",
                        "shape": ["batch", 10], "draw": "r", "op_type": "RandomNormalLike",
                        "dims": [{"axis": 0, "kind": "input", "name": "batch"},
                                 {"axis": 1, "kind": "constant", "size": 10}]}]


def test_model_without_random_nodes_is_returned_unchanged():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) { y = Relu(x) }""")
    out, records = rewrite_model(model, "input-noise")
    assert records == []
    assert out.SerializeToString() == model.SerializeToString()


def test_disallowed_dtype_is_a_model_error():
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("RandomNormal", [], ["y"], shape=[2], dtype=6)], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [2])]))
    with pytest.raises(ModelError, match="dtype int32 is not allowed"):
        rewrite_model(model, "input-noise")


def test_old_opset_gets_broadcast_attribute_on_arithmetic():
    model = parse("""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2,3] x) => (float[2,3] y) {
      y = RandomNormalLike<mean=1.0, scale=2.0>(x)
    }""")
    out, _ = rewrite_model(model, "input-noise")
    onnx.checker.check_model(out, full_check=True)
    arith = [n for n in out.graph.node if n.op_type in ("Mul", "Add")]
    assert all(a.name == "broadcast" and a.i == 1 for n in arith for a in n.attribute)


# -- constant mode ----------------------------------------------------------------------

def test_constant_mode_is_reproducible_and_keyed_by_seed_and_node():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4,5] x) => (float[4,5] y) {
      a = RandomNormalLike(x)
      b = RandomNormalLike(x)
      y = Add(a, b)
    }""")
    one, records = rewrite_model(model, "constant", seed=7)
    two, _ = rewrite_model(model, "constant", seed=7)
    other, _ = rewrite_model(model, "constant", seed=8)
    full_check(one)
    assert one.SerializeToString() == two.SerializeToString()
    vals = {t.name: onnx.numpy_helper.to_array(t) for t in one.graph.initializer}
    assert set(vals) == {"a", "b"} and not np.array_equal(vals["a"], vals["b"])
    other_vals = {t.name: onnx.numpy_helper.to_array(t) for t in other.graph.initializer}
    assert not np.array_equal(vals["a"], other_vals["a"])
    assert [r.replacement.kind for r in records] == ["initializer", "initializer"]
    assert random_nodes(one) == [] and op_types(one) == ["Add"]


def test_constant_draw_follows_mean_scale_and_dtype():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g () => (double[200,100] y) { y = RandomNormal<shape=[200,100], mean=2.0, scale=0.5,
                                                   dtype=11>() }""")
    out, _ = rewrite_model(model, "constant")
    full_check(out)
    y = onnx.numpy_helper.to_array(out.graph.initializer[0])
    assert y.dtype == np.float64 and y.shape == (200, 100)
    assert abs(y.mean() - 2.0) < 0.02 and abs(y.std() - 0.5) < 0.02


def test_constant_mode_needs_concrete_dims_and_names_them():
    with pytest.raises(ModelError, match=r"dim batch is symbolic; fix it with dims=\{'batch': N\}"):
        rewrite_model(parse(EXPORTER_CHAIN), "constant")


def test_dim_flag_fixes_symbolic_dims_model_wide():
    out, records = rewrite_model(parse(EXPORTER_CHAIN), "constant", dims={"batch": 3})
    full_check(out)
    assert input_dims(out, "x") == [3, 10]
    assert records[0].replacement.shape == [3, 10]
    x = np.zeros((3, 10), np.float32)
    draw = onnx.numpy_helper.to_array(out.graph.initializer[0])
    np.testing.assert_array_equal(run(out, {"x": x})["y"], draw)


def test_unknown_dim_name_is_a_usage_error():
    with pytest.raises(UsageError, match="no symbolic dim 'batchh'"):
        rewrite_model(parse(EXPORTER_CHAIN), "constant", dims={"batchh": 3})


def test_oversized_draw_is_refused_before_allocation():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g () => (float[1000000,1000000] y) { y = RandomNormal<shape=[1000000,1000000]>() }""")
    with pytest.raises(ModelError, match="over the cap"):
        rewrite_model(model, "constant")


def test_old_ir_lists_constant_initializers_as_inputs():
    model = parse("""
    <ir_version: 3, opset_import: ["" : 6]>
    g (float[2,3] x) => (float[2,3] y) {
      r = RandomNormalLike(x)
      y = Add(x, r)
    }""")
    out, _ = rewrite_model(model, "constant")
    onnx.checker.check_model(out, full_check=True)
    assert "r" in [i.name for i in out.graph.input]


def test_tts_duration_predictor_noise_ties_two_symbolic_dims(rng):
    # VITS-style: z = randn(x.size(0), 2, x.size(2)) * noise_scale, x: [batch, C, T]
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch,4,T] x, float noise_scale) => (float[batch,2,T] z) {
      s = Shape(x)
      i0 = Constant<value=int64[1] {0}>()
      i2 = Constant<value=int64[1] {2}>()
      two = Constant<value=int64[1] {2}>()
      b = Gather<axis=0>(s, i0)
      t = Gather<axis=0>(s, i2)
      shp = Concat<axis=0>(b, two, t)
      c = ConstantOfShape(shp)
      r = RandomNormalLike(c)
      z = Mul(r, noise_scale)
    }""")
    out, _ = rewrite_model(model, "input-noise")
    full_check(out)
    assert input_dims(out, "noise_r") == ["batch", 2, "T"]
    assert op_types(out) == ["Identity", "Mul"]
    eps = rng.standard_normal((3, 2, 7)).astype(np.float32)
    z = run(out, {"x": np.zeros((3, 4, 7), np.float32), "noise_scale": np.array(0.667, np.float32),
                  "noise_r": eps})["z"]
    np.testing.assert_array_equal(z, eps * np.float32(0.667))


def test_unknown_rank_draw_is_a_clear_error_and_leaves_no_scratch_file(tmp_path, monkeypatch):
    from onnx import TensorProto as T
    from onnx import helper as h

    monkeypatch.chdir(tmp_path)
    g = h.make_graph([h.make_node("Foo", ["x"], ["t"], domain="custom"),
                      h.make_node("RandomNormalLike", ["t"], ["r"], dtype=1),
                      h.make_node("Add", ["x", "r"], ["y"])],
                     "g", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["batch", 4])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("custom", 1)])
    onnx.checker.check_model(m)
    with pytest.raises(ModelError, match="cannot tell even the rank"):
        rewrite_model(m, "input-noise")
    assert list(tmp_path.iterdir()) == []  # onnxruntime's sym_shape_infer_temp.onnx is not left
    out, _ = rewrite_model(m, "deterministic")
    assert "RandomNormalLike" not in op_types(out)
