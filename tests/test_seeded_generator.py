"""The seeded generator (onnxfix.seeded): the ONNX graph equals the numpy reference bit for bit in
onnxruntime, at several opsets, for static and runtime shapes, with and without a loop iteration
index; and the stream passes a statistical suite on 2^20 draws per stream (fixed seeds, so every
verdict repeats). Thresholds: moments and correlations within 5 standard errors; KS and
chi-square at p = 1e-4 (critical values below, computed once with scipy, which is not a
dependency).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import pytest
from conftest import session
from onnx import TensorProto, helper

from onnxfix.errors import ModelError
from onnxfix.graph.builder import NodeBuilder
from onnxfix.graph.naming import NameAllocator
from onnxfix.seeded import algorithm as alg
from onnxfix.seeded import (
    gumbel,
    node_key,
    normal,
    seeded_gumbel,
    seeded_normal,
    seeded_uniform,
    uniform,
)

KEY = node_key("/graph/RandomNormalLike:out")
N = 1 << 20


def generator_model(opset: int, shape, draw=seeded_uniform, iteration: bool = False,
                    dtype: int = TensorProto.FLOAT, rank: int | None = None,
                    key: int = KEY) -> onnx.ModelProto:
    """A model whose output `y` is one seeded draw: inputs `seed`, (`shape`), (`iteration`)."""
    inputs = [helper.make_tensor_value_info("seed", TensorProto.INT64, [])]
    runtime = isinstance(shape, str)
    if runtime:
        inputs.append(helper.make_tensor_value_info(shape, TensorProto.INT64, [rank]))
    if iteration:
        inputs.append(helper.make_tensor_value_info("iteration", TensorProto.INT64, []))
    dims = [None] * rank if runtime else list(shape)
    graph = helper.make_graph([], "g", inputs, [helper.make_tensor_value_info("y", dtype, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    b = NodeBuilder(NameAllocator(model), opset, "seeded")
    draw(b, "seed", key, shape, "iteration" if iteration else None, dtype, output="y",
         rank=rank)
    model.graph.node.extend(b.nodes)
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, seed: int, shape=None, iteration=None) -> np.ndarray:
    feeds = {"seed": np.array(seed, dtype=np.int64)}
    if shape is not None:
        feeds["shape"] = np.array(shape, dtype=np.int64)
    if iteration is not None:
        feeds["iteration"] = np.array(iteration, dtype=np.int64)
    return session(model).run(["y"], feeds)[0]


# -- graph == numpy reference ---------------------------------------------------------------

@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17, 18, 21])
@pytest.mark.parametrize("runtime_shape", [False, True])
@pytest.mark.parametrize("iteration", [None, 4099])
def test_uniform_graph_is_bit_identical_to_reference(opset, runtime_shape, iteration):
    if opset < 9 and runtime_shape:
        pytest.skip("a runtime shape needs NonZero (opset 9) or Range (11); refused below, "
                    "tested apart")
    shape = [3, 1400]  # 4200 elements: the counter's middle word is used too
    model = generator_model(opset, "shape" if runtime_shape else shape,
                            iteration=iteration is not None, rank=2)
    got = run(model, 123456, shape if runtime_shape else None, iteration)
    want = uniform(123456, KEY, shape, iteration=iteration)
    assert got.dtype == np.float32 and got.shape == (3, 1400)
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 0.0 and got.max() < 1.0


def test_double_uniform_has_48_bits_and_matches_reference():
    model = generator_model(17, "shape", dtype=TensorProto.DOUBLE, rank=1)
    got = run(model, 7, [5000])
    np.testing.assert_array_equal(got, uniform(7, KEY, [5000], np.float64))
    assert got.dtype == np.float64
    # the low 24 bits are set: the float32 uniform is the same value truncated to 24 bits
    high = np.floor(got * 2.0 ** 24) / 2.0 ** 24
    np.testing.assert_array_equal(high.astype(np.float32), uniform(7, KEY, [5000]))
    assert np.count_nonzero(got != high) > 4990


@pytest.mark.parametrize("dtype, atol", [(TensorProto.FLOAT, 4e-6), (TensorProto.DOUBLE, 1e-13)])
def test_normal_graph_matches_reference_within_rounding(dtype, atol):
    np_dtype = np.float32 if dtype == TensorProto.FLOAT else np.float64
    model = generator_model(13, "shape", seeded_normal, iteration=True, dtype=dtype, rank=3)
    got = run(model, 99, [2, 3, 700], iteration=2)
    want = normal(99, KEY, [2, 3, 700], np_dtype, iteration=2)
    assert got.dtype == np_dtype and got.shape == (2, 3, 700)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


@pytest.mark.parametrize("opset", [9, 11, 18])
@pytest.mark.parametrize("shape", [[], [4, 0, 2], [0], [1]])
@pytest.mark.parametrize("runtime_shape", [False, True])
def test_edge_shapes(opset, shape, runtime_shape):
    """0-d draws, and 0 dims (Reshape would read a runtime 0 as "copy this dim")."""
    model = generator_model(opset, "shape" if runtime_shape else shape, rank=len(shape))
    got = run(model, 5, shape if runtime_shape else None)
    assert got.shape == tuple(shape) and got.dtype == np.float32
    np.testing.assert_array_equal(got, uniform(5, KEY, shape))


@pytest.mark.parametrize("opset", [7, 9, 17])
def test_seed_is_taken_modulo_2_24_like_numpy(opset):
    """At every opset the seed is split into two floor-mod words from truncating Div (no
    intermediate reaches 2^24 for seeds below it: OpenVINO divides in float32, and once got
    2^24 - 1 wrong when an intermediate reached 2^25)."""
    model = generator_model(opset, [64])
    for seed in (-1, -(2 ** 24) - 5, 2 ** 24 - 1, 2 ** 24 + 3, 2 ** 40 + 5):
        np.testing.assert_array_equal(run(model, seed), uniform(seed, KEY, [64]))
    np.testing.assert_array_equal(run(model, -1), run(model, 2 ** 24 - 1))
    np.testing.assert_array_equal(run(model, 2 ** 24 + 3), run(model, 3))


def test_opset_9_builds_without_range_or_mod():
    ops = {n.op_type for n in generator_model(9, [2, 3], iteration=True).graph.node}
    assert ops == {"Constant", "Add", "Sub", "Mul", "Div", "Gather", "Cast", "Reshape"}


# IREE 3.13's ONNX import legalizes these only at their opset-13 versions (measured one op at a
# time at opsets 7-12: "failed to legalize operation 'torch.operator'")
IREE_FROM_13 = {"Mod", "Less", "Unsqueeze", "NonZero", "Ceil", "Floor", "Softmax"}


@pytest.mark.parametrize("opset, shape", [(7, [2, 3]), (10, [2, 3]), (11, [2, 3]),
                                          (11, "shape"), (12, "shape")])
def test_below_opset_13_the_generator_avoids_ops_iree_cannot_import(opset, shape):
    """Floor mods from truncating Div (no Mod, no Less), axes placed by Reshape (no
    Unsqueeze); a runtime shape before opset 11 still needs NonZero."""
    model = generator_model(opset, shape, seeded_normal, iteration=True, rank=2)
    assert {n.op_type for n in model.graph.node} & IREE_FROM_13 == set()


def test_ops_used_at_opset_11_and_later():
    """A runtime shape of known rank is counted per axis: no Reshape to a runtime shape and no
    Equal on a shape (IREE and TVM, see below); of unknown rank, Range over the element count
    and a Reshape (with the 0-dim guard), which onnxruntime, OpenVINO, tract, MNN and
    onnx2torch run."""
    ops = {n.op_type for n in generator_model(17, "shape", seeded_normal, rank=2).graph.node}
    assert ops == {"Constant", "Add", "Sub", "Mul", "Div", "Mod", "Gather", "Cast", "Range",
                   "Reshape", "ReduceSum", "Log", "Sqrt", "Cos", "Expand"}
    b = _builder(17)
    seeded_normal(b, "seed", KEY, "shape")
    assert {n.op_type for n in b.nodes} == {
        "Constant", "Add", "Sub", "Mul", "Div", "Mod", "Gather", "Cast", "Reshape",
        "ConstantOfShape",
        "Shape", "Range", "Log", "Sqrt", "Cos", "Equal", "Expand"}


# ops that only move or combine values read from a shape: their result is still such a value
_SHAPE_ARITHMETIC = {"Gather", "Reshape", "Mul", "Add", "Sub", "Cast", "Squeeze", "Unsqueeze",
                     "Concat", "Identity"}


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_no_mul_takes_a_value_read_from_the_runtime_shape(opset, rank):
    """tract holds a value read from a shape as a symbol where the dim is symbolic, and its
    optimizer refuses a Mul by one ("declutter node ... Mul: Undetermined symbol in
    expression: n", tract 0.23.9): each stride is a count of ones made from the axis'
    positions (ReduceSum), which tract holds as a number (and TVM converts, unlike a
    ConstantOfShape of a dim). Range, ConstantOfShape and NonZero may read the dims."""
    model = generator_model(opset, "shape", seeded_normal, iteration=True, rank=rank)
    from_shape = {"shape"}
    for node in model.graph.node:  # in topological order
        if node.op_type in _SHAPE_ARITHMETIC and from_shape & set(node.input):
            assert node.op_type != "Mul", f"{node.name} multiplies by a dim: {node.input}"
            from_shape.update(node.output)
    assert len(from_shape) > rank  # the dims were read


@pytest.mark.parametrize("opset", [9, 11, 13])
@pytest.mark.parametrize("rank", [0, 1, 3])
def test_runtime_shape_of_known_rank_is_typed_by_onnx_inference(opset, rank):
    """Every tensor of a runtime-shaped draw has a rank that onnx shape inference finds. Why:
    IREE's importer types a tensor of unknown rank as a scalar, and before opset 14 onnx gives
    a Reshape to a runtime shape no rank, so IREE drew one value and broadcast it (59,996 of
    60,000 uniforms wrong at opset 13, measured with iree-base-compiler 3.13.0)."""
    model = generator_model(opset, "shape", iteration=True, rank=rank)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    typed = {v.name for v in inferred.graph.value_info
             if v.type.tensor_type.HasField("shape")}
    made = {o for n in model.graph.node for o in n.output} - {"y"}
    assert made - typed == set()
    shape = [2, 3, 5][:rank]
    np.testing.assert_array_equal(run(model, 3, shape, 7), uniform(3, KEY, shape, iteration=7))


# -- refusals -------------------------------------------------------------------------------

def _builder(opset: int) -> NodeBuilder:
    model = helper.make_model(helper.make_graph([], "g", [], []),
                              opset_imports=[helper.make_opsetid("", opset)])
    return NodeBuilder(NameAllocator(model), opset, "seeded")


def test_runtime_shape_below_opset_9_is_refused():
    """Opsets 9 and 10 count a runtime shape with NonZero (tested with the others above)."""
    with pytest.raises(ModelError) as err:
        seeded_uniform(_builder(8), "seed", KEY, "shape")
    assert str(err.value) == ("a seeded draw of runtime shape needs Range (opset 11) or NonZero "
                              "(opset 9); the model uses opset 8: fix the shape (a static "
                              "shape) or use input-noise")


def test_opset_below_6_is_refused():
    with pytest.raises(ModelError) as err:
        seeded_uniform(_builder(5), "seed", KEY, [2])
    assert str(err.value) == ("the seeded generator needs opset 6 or later (integer Add, Sub, "
                              "Mul and Div); the model uses opset 5")


def test_other_dtypes_and_keys_are_refused():
    with pytest.raises(ModelError) as err:
        seeded_normal(_builder(17), "seed", KEY, [2], dtype=TensorProto.FLOAT16)
    assert str(err.value) == "dtype=FLOAT16: the seeded generator draws FLOAT or DOUBLE"
    with pytest.raises(ModelError) as err:
        seeded_uniform(_builder(17), "seed", 1 << 48, [2])
    assert str(err.value) == f"key={1 << 48} is not a 48-bit node key"
    with pytest.raises(ModelError) as err:
        seeded_uniform(_builder(17), "seed", KEY, [1 << 20, 1 << 17])
    assert str(err.value) == ("shape=[1048576, 131072] has more than 2^36 elements, the seeded "
                              "generator's limit")


# -- what a stream's values depend on -------------------------------------------------------

def test_values_follow_the_flat_index_not_the_shape():
    """Invariant: the value at row-major flat index i. Growing the leading (batch) dim keeps
    the existing elements; changing an inner dim moves values to other elements."""
    model = generator_model(17, "shape", rank=3)
    two, five = run(model, 11, [2, 3, 4]), run(model, 11, [5, 3, 4])
    np.testing.assert_array_equal(two, five[:2])
    wider = run(model, 11, [2, 3, 6])
    np.testing.assert_array_equal(wider.reshape(-1)[:24], two.reshape(-1))
    assert not np.array_equal(wider[:, :, :4], two)


def test_streams_differ_by_seed_key_and_iteration():
    base = uniform(1, KEY, [1000])
    for other in (uniform(2, KEY, [1000]), uniform(1, KEY + 1, [1000]),
                  uniform(1, KEY, [1000], iteration=1), uniform(1, KEY, [1000], iteration=4096)):
        assert np.count_nonzero(other == base) < 5
    # outside a loop there is one pass: no iteration index is iteration 0
    np.testing.assert_array_equal(uniform(1, KEY, [1000], iteration=0), base)


def test_the_algorithm_is_frozen():
    """Saved seeds must replay the same draws in every later onnxfix: these values are the
    contract (24-bit integers of the first uniforms; a change here breaks users' seeds)."""
    assert node_key("/graph/RandomNormalLike:out") == 0x85A73CB1BBFA
    assert sorted(alg.SBOX[:alg.WORD].tolist()) == list(range(alg.WORD))
    assert alg.SBOX[:6].tolist() == [1880, 2729, 2416, 4001, 341, 1829]
    bits = uniform(0, 0, [4]) * 2.0 ** 24
    assert bits.tolist() == [6005339, 13010706, 840996, 6142703]


# -- statistical suite (numpy reference, bit-identical to the graph as tested above) ---------

SEED = 2026
OTHER_KEY = node_key("/graph/RandomUniformLike:noise")


KS_CRITICAL = 2.2252514     # sqrt(n) * D exceeded with p = 1e-4: scipy.stats.kstwobign.isf(1e-4)
CHI2_CRITICAL_255 = 347.65421  # scipy.stats.chi2.isf(1e-4, 255): 256 cells
_erf = np.frompyfunc(math.erf, 1, 1)


def ks_statistic(sample: np.ndarray, cdf) -> float:
    """sqrt(n) times the Kolmogorov-Smirnov distance between the sample and `cdf`."""
    x = np.sort(sample)
    n = len(x)
    at = cdf(x)
    distance = max((np.arange(1, n + 1) / n - at).max(), (at - np.arange(n) / n).max())
    return float(np.sqrt(n) * distance)


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + _erf(x / np.sqrt(2.0)).astype(np.float64))


def chi_square(counts: np.ndarray) -> float:
    """Pearson's statistic against equal cell probabilities."""
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


@functools.cache
def bits(seed: int = SEED, key: int = KEY, iteration: int | None = None):
    """The two 24-bit integers of 2^20 draws of one stream."""
    return alg.uniform_bits(seed, key, N, iteration)


def draws(**stream) -> np.ndarray:
    return bits(**stream)[0].astype(np.float64) * alg.UNIT


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation in units of its standard error under independence."""
    return float(np.corrcoef(x, y)[0, 1] * np.sqrt(len(x)))


def test_graph_equals_reference_on_a_million_draws():
    model = generator_model(17, "shape", rank=1)
    np.testing.assert_array_equal(run(model, SEED, [N]), uniform(SEED, KEY, [N]))


@pytest.mark.parametrize("seed", [SEED, 0])
def test_uniform_moments_and_ks(seed):
    u = draws(seed=seed)
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / N)
    assert abs(u.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / N)
    assert ks_statistic(u, lambda x: x) < KS_CRITICAL
    assert u.min() >= 0.0 and u.max() < 1.0


@pytest.mark.parametrize("opset", [None, 6])  # 6: the cosine is the float64 polynomial
def test_normal_moments_and_ks(opset):
    z = normal(SEED, KEY, [N], opset=opset).astype(np.float64)
    assert abs(z.mean()) < 5 / np.sqrt(N)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / N)
    centred = (z - z.mean()) / z.std()
    assert abs((centred ** 3).mean()) < 5 * np.sqrt(6 / N)  # skewness
    assert abs((centred ** 4).mean() - 3) < 5 * np.sqrt(24 / N)  # excess kurtosis
    assert ks_statistic(z, normal_cdf) < KS_CRITICAL
    # Box-Muller from 24-bit u1 > 0: finite, and the largest |z| is sqrt(-2 log 2^-24) = 5.77
    assert np.isfinite(z).all() and np.abs(z).max() <= 5.7686


@pytest.mark.parametrize("lag", [1, 2, alg.WORD - 1, alg.WORD])
def test_no_correlation_between_neighbouring_elements(lag):
    """Lag 1 and 2 (the counter's low word), 4096 (its middle word changes instead)."""
    u = draws()
    assert abs(correlation(u[:-lag], u[lag:])) < 5


@pytest.mark.parametrize("other", [dict(seed=SEED + 1), dict(key=OTHER_KEY),
                                   dict(key=KEY + 1), dict(iteration=1)])
def test_no_correlation_between_streams(other):
    """Seeds s and s+1, two node keys (unrelated and adjacent), loop iterations 0 and 1."""
    assert abs(correlation(draws(), draws(**other))) < 5
    assert abs(correlation(draws(iteration=1), draws(iteration=2))) < 5


@pytest.mark.parametrize("half", [0, 1])
@pytest.mark.parametrize("shift", [0, 16])
def test_top_and_bottom_bits_are_uniform(half, shift):
    """Chi-square on the bottom 8 and top 8 bits of both 24-bit halves (256 cells)."""
    counts = np.bincount((bits()[half] >> shift) % 256, minlength=256)
    assert chi_square(counts) < CHI2_CRITICAL_255


@pytest.mark.parametrize("shift", [0, 20])
def test_pairs_of_neighbours_are_uniform(shift):
    """Chi-square on (element 2i, element 2i+1), 4 bits each (bottom or top): 256 cells."""
    a = (bits()[0] >> shift) % 16
    counts = np.bincount(a[0::2] * 16 + a[1::2], minlength=256)
    assert chi_square(counts) < CHI2_CRITICAL_255


@pytest.mark.parametrize("opset", [9, 13, 18])
def test_nested_iterations_graph_equals_reference(opset):
    """One iteration index per enclosing loop, outermost first: the graph's stream for (i, j)
    is the reference's; one index is the single-loop stream, unchanged."""
    model = helper.make_model(helper.make_graph(
        [], "g", [helper.make_tensor_value_info(n, TensorProto.INT64, [])
                  for n in ("seed", "i", "j")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 500])]),
        opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    b = NodeBuilder(NameAllocator(model), opset, "seeded")
    seeded_uniform(b, "seed", KEY, [2, 500], ["i", "j"], output="y")
    model.graph.node.extend(b.nodes)
    onnx.checker.check_model(model, full_check=True)
    for i, j in ((0, 0), (3, 4100), (4100, 3)):
        got = session(model).run(["y"], {"seed": np.array(77), "i": np.array(i),
                                         "j": np.array(j)})[0]
        np.testing.assert_array_equal(got, uniform(77, KEY, [2, 500], iteration=(i, j)))
    np.testing.assert_array_equal(uniform(77, KEY, [9], iteration=(6,)),
                                  uniform(77, KEY, [9], iteration=6))


def test_nested_streams_differ_by_every_index():
    base = uniform(1, KEY, [1000], iteration=(2, 3))
    for other in ((3, 2), (2, 4), (2,), (0, 2, 3), (2, 3, 0)):
        assert np.count_nonzero(uniform(1, KEY, [1000], iteration=other) == base) < 5
    stacked = alg.standard_noise("uniform", 1, KEY, [4], iterations=(2, 3))
    assert stacked.shape == (2, 3, 4)
    np.testing.assert_array_equal(stacked[1, 2], uniform(1, KEY, [4], iteration=(1, 2)))


def test_inside_a_loop_each_iteration_draws_its_own_stream():
    """The body's iteration number is the generator's iteration index: iteration i of the
    Loop equals the reference at iteration=i (scan output stacked over 3 iterations)."""
    opset = 17
    outer = helper.make_graph(
        [], "outer", [helper.make_tensor_value_info("seed", TensorProto.INT64, []),
                      helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("ys", TensorProto.FLOAT, [3, "n"])])
    model = helper.make_model(outer, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    b = NodeBuilder(NameAllocator(model), opset, "body")
    shape = b.op("Shape", ["x"], "shape")
    draw = seeded_uniform(b, "seed", KEY, shape, iteration="i")
    keep = b.op("Identity", ["cond"], "keep")
    body = helper.make_graph(
        b.nodes, "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                          helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(keep, TensorProto.BOOL, []),
         helper.make_tensor_value_info(draw, TensorProto.FLOAT, ["n"])])
    trips = helper.make_tensor("trips", TensorProto.INT64, [], [3])
    model.graph.initializer.append(trips)
    model.graph.node.append(helper.make_node("Loop", ["trips", ""], ["ys"], body=body))
    onnx.checker.check_model(model, full_check=True)
    x = np.zeros(5000, dtype=np.float32)
    ys = session(model).run(["ys"], {"seed": np.array(SEED, dtype=np.int64), "x": x})[0]
    for i in range(3):
        np.testing.assert_array_equal(ys[i], uniform(SEED, KEY, [5000], iteration=i))
    assert not np.array_equal(ys[0], ys[1])


# -- the emit's contract: generator output in place of the noise input ----------------------

def _seeded_from_input_noise(model: onnx.ModelProto, records) -> onnx.ModelProto:
    """Each noise input of an input-noise rewrite replaced by a generator writing the same
    tensor (runtime shape from the graph inputs' dims), so the input-noise transforms are
    applied unchanged to the generator's output; the model gains an int64 `seed` input."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    b = NodeBuilder(NameAllocator(out), 17, "seeded")
    noise = {r.replacement.name for r in records}
    where = {d.dim_param: (i.name, axis) for i in out.graph.input if i.name not in noise
             for axis, d in enumerate(i.type.tensor_type.shape.dim) if d.dim_param}
    for rec in records:
        parts = []
        for dim in rec.replacement.dims:
            if dim["kind"] == "constant":
                parts.append(b.constant(np.array([dim["size"]], dtype=np.int64), "dim"))
            else:
                source, axis = where[dim["name"]]
                starts = b.constant(np.array([axis], dtype=np.int64), "axis")
                ends = b.constant(np.array([axis + 1], dtype=np.int64), "axis_end")
                parts.append(b.op("Slice", [b.op("Shape", [source], "shape"), starts, ends],
                                  "dim"))
        shape = b.op("Concat", parts, "noise_shape", axis=0)
        draw = seeded_normal if rec.distribution["family"] == "normal" else seeded_uniform
        draw(b, "seed", node_key(rec.output), shape, output=rec.replacement.name)
    kept = [i for i in out.graph.input if i.name not in noise]
    del out.graph.input[:]
    out.graph.input.extend(kept + [helper.make_tensor_value_info("seed", TensorProto.INT64, [])])
    nodes = list(b.nodes) + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out, full_check=True)
    return out


@pytest.mark.parametrize("fixture", ["mixed_dynamic_ts.onnx", "ref3_dynamic_dynamo.onnx"])
def test_seeded_model_equals_input_noise_model_fed_the_reference_noise(fixture):
    """What the seeded mode's check will assert: with seed s, the seeded model equals the
    input-noise model fed the noise numpy computes for s (uniforms are bit-identical, so the
    Bernoulli and Multinomial samples are equal; normals differ by the rounding of Log/Cos)."""
    from conftest import fixture_path

    import onnxfix

    noisy, report = onnxfix.rewrite(fixture_path(fixture), mode="input-noise", check=False)
    seeded = _seeded_from_input_noise(noisy, report.nodes)
    names = [o.name for o in noisy.graph.output]
    for batch in (2, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 10)).astype(np.float32)
        feeds = {"x": x}
        for rec in report.nodes:
            shape = [batch if d["kind"] == "input" else d["size"] for d in rec.replacement.dims]
            draw = normal if rec.distribution["family"] == "normal" else uniform
            feeds[rec.replacement.name] = draw(SEED, node_key(rec.output), shape)
        want = session(noisy).run(names, feeds)
        got = session(seeded).run(names, {"x": x, "seed": np.array(SEED, dtype=np.int64)})
        for name, g, w in zip(names, got, want, strict=True):
            if np.issubdtype(w.dtype, np.floating):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(g, w, err_msg=name)


def test_standard_noise_for_feeds():
    from onnxfix.seeded import standard_noise

    np.testing.assert_array_equal(standard_noise("uniform", 3, KEY, [2, 4]),
                                  uniform(3, KEY, [2, 4]))
    np.testing.assert_array_equal(standard_noise("normal", 3, KEY, [5], np.float64),
                                  normal(3, KEY, [5], np.float64))
    stacked = standard_noise("uniform", 3, KEY, [4], iterations=3)
    assert stacked.shape == (3, 4)
    np.testing.assert_array_equal(stacked[2], uniform(3, KEY, [4], iteration=2))
    assert standard_noise("uniform", 3, KEY, [4], iterations=0).shape == (0, 4)
    with pytest.raises(ValueError) as err:
        standard_noise("gamma", 3, KEY, [4])
    assert str(err.value) == ("family='gamma': the seeded generator draws 'normal', 'uniform', "
                              "'gumbel'")


# -- Gumbel noise (Multinomial's Gumbel-max form) -----------------------------------------------

@pytest.mark.parametrize("opset, shape", [(9, [3, 700]), (13, "shape"), (18, "shape")])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_gumbel_graph_matches_reference(opset, shape, dtype):
    np_dtype = np.float32 if dtype == TensorProto.FLOAT else np.float64
    model = generator_model(opset, shape, seeded_gumbel, iteration=True, dtype=dtype, rank=2)
    got = run(model, 42, [3, 700] if shape == "shape" else None, iteration=5)
    want = gumbel(42, KEY, [3, 700], np_dtype, iteration=5)
    assert got.dtype == np_dtype and got.shape == (3, 700)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 if np_dtype == np.float32 else 1e-14)


def test_gumbel_open_unit_never_reaches_0_or_1():
    """v = (a // 2 * 2 + 1) 2^-24: the extremes of the 24-bit integers give finite noise."""
    a = np.array([0, 1, 2 ** 24 - 2, 2 ** 24 - 1], dtype=np.int64)
    v = alg.open_unit(a, a, np.float32)
    assert v.tolist() == [2.0 ** -24, 2.0 ** -24, 1 - 2.0 ** -24, 1 - 2.0 ** -24]
    g = -np.log(-np.log(v))
    assert np.isfinite(g).all() and g.min() > -2.82 and g.max() < 16.64
    v64 = alg.open_unit(a, np.array([0, 1, 0, 2 ** 24 - 1]), np.float64)
    assert (v64 > 0).all() and (v64 < 1).all()


def test_gumbel_moments_and_ks():
    """Gumbel(0, 1): mean the Euler-Mascheroni constant, variance pi^2 / 6, CDF
    exp(-exp(-x)); 2^20 float32 draws."""
    g = gumbel(SEED, KEY, [N]).astype(np.float64)
    assert abs(g.mean() - np.euler_gamma) < 5 * np.sqrt(np.pi ** 2 / 6 / N)
    assert abs(g.var() - np.pi ** 2 / 6) < 5 * np.sqrt((12 * 2.4 + 2) * (np.pi ** 2 / 6) ** 2
                                                       / N)
    assert ks_statistic(g, lambda x: np.exp(-np.exp(-x))) < KS_CRITICAL


# -- float64 cosine without Cos (IREE links no float64 cos) ----------------------------------

def test_float64_normals_use_no_cos_op():
    model = generator_model(13, [4, 6], seeded_normal, dtype=TensorProto.DOUBLE)
    float32 = generator_model(13, [4, 6], seeded_normal)
    assert "Cos" not in {n.op_type for n in model.graph.node}
    assert "Cos" in {n.op_type for n in float32.graph.node}


@pytest.mark.parametrize("opset", [7, 13])
def test_float64_cosine_of_turns_matches_its_reference_and_numpy_cos(opset):
    """The graph's polynomial equals `cosine.reference` bit for bit in onnxruntime (IEEE Mul
    and Add), which is within 1e-15 of numpy's cos(2 pi k / 2^24) at every quadrant edge and
    on a spread of angles (measured over all 2^24: at most 9.0e-16 apart)."""
    from onnxfix.seeded import cosine

    edges = [q * cosine.QUARTER + d for q in range(4) for d in (-1, 0, 1)]
    k = np.array(sorted({e % (1 << 24) for e in edges} | set(range(0, 1 << 24, 4099))),
                 dtype=np.int64)
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info(n, TensorProto.INT64,
                                                                      [len(k)])
                                        for n in ("high", "low")],
                              [helper.make_tensor_value_info("y", TensorProto.DOUBLE,
                                                             [len(k)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    b = NodeBuilder(NameAllocator(model), opset, "cos")
    got_name = cosine.cos_of_turns(b, "high", "low")
    b.op("Identity", [got_name], "out", output="y")
    model.graph.node.extend(b.nodes)
    onnx.checker.check_model(model, full_check=True)
    got = session(model).run(["y"], {"high": k // 4096, "low": k % 4096})[0]
    np.testing.assert_array_equal(got, cosine.reference(k))
    assert np.abs(got - np.cos(k * 2.0 ** -24 * (2 * np.pi))).max() <= 1e-15


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_static_dims_of_a_runtime_shape_are_constants_and_the_draw_is_unchanged(opset):
    """rank=[None, 4, None]: the 4 is a constant (a Range over it, or its positions as a
    constant before opset 11), so inference types axis 1; the draw is the same bits."""
    shape = [2, 4, 5]
    graph = helper.make_graph([], "g", [
        helper.make_tensor_value_info("seed", TensorProto.INT64, []),
        helper.make_tensor_value_info("shape", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4, None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    b = NodeBuilder(NameAllocator(model), opset, "seeded")
    seeded_uniform(b, "seed", KEY, "shape", output="y", rank=[None, 4, None])
    model.graph.node.extend(b.nodes)
    onnx.checker.check_model(model, full_check=True)
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
              for n in model.graph.node if n.op_type == "Constant"}
    read = {int(consts[n.input[1]].reshape(-1)[0]) for n in model.graph.node
            if n.op_type == "Gather" and n.input[0] == "shape"}
    assert read == {0, 2}  # axis 1 is not read from the shape
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    (y,) = [v for v in inferred.graph.value_info if v.name == "y"] or list(inferred.graph.output)
    assert y.type.tensor_type.shape.dim[1].dim_value == 4
    np.testing.assert_array_equal(run(model, 5, shape), uniform(5, KEY, shape))


@pytest.mark.parametrize("opset", [6, 7, 9, 11, 13, 17])
@pytest.mark.parametrize("draw", [seeded_uniform, seeded_normal, seeded_gumbel])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
@pytest.mark.parametrize("runtime_shape", [False, True])
def test_every_node_of_the_generator_is_read(opset, draw, dtype, runtime_shape):
    """A float32 uniform or Gumbel draw reads only the first number of the last Feistel round:
    the second number's word (its Gather, Adds and floor mod) was built and never read."""
    if runtime_shape and opset < 9:
        pytest.skip("a runtime shape needs opset 9")
    model = generator_model(opset, "shape" if runtime_shape else [2, 3], draw, iteration=True,
                            dtype=dtype, rank=2)
    read = {name for n in model.graph.node for name in n.input} | {"y"}
    assert [o for n in model.graph.node for o in n.output if o not in read] == []
