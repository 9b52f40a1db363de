"""Seeded mode end to end (issue 13): every random node becomes the in-graph generator; the
check proves the seeded model equals its input-noise twin fed the numpy reference's draws."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, expose, full_check, parse, real_model_path, run
from test_seeded_scan import SCAN_IN_LOOP

import onnxfix
from onnxfix.errors import ModelError, ParityError, UsageError
from onnxfix.passes import emit_seeded
from onnxfix.seeded import algorithm as alg
from onnxfix.seeded.metadata import seed_metadata

ALL_FIXTURES = sorted(p.relative_to(FIXTURES).as_posix()
                      for folder in (FIXTURES, FIXTURES / "edge", FIXTURES / "arch")
                      for p in folder.glob("*.onnx"))

# fixtures onnxruntime cannot run (opset 6): checked on copies converted to opset 7, which
# ends as a skip naming what was verified (tests/test_seeded_opset6.py)
CONVERTED = {"edge/dropout_opset6_is_test0.onnx", "edge/old_dropout_op6_mask.onnx",
             "edge/old_random_normal_op6.onnx"}

REAL = ["migraphx_multinomial_autoseed_dyn_test.onnx", "migraphx_randomnormallike_test.onnx",
        "migraphx_randomuniform_test.onnx", "mlagents_3DBallHard.onnx",
        "mlagents_BigWallJump.onnx", "mlagents_hybrid0vis8vec_2c_2_3d_v2_0.onnx",
        "onnx_test_bernoulli_seed_expanded_op15.onnx", "onnx_test_bernoulli_seed_op15.onnx"]

NORMAL_LIKE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 3] x) => (float[batch, 3] y) {
  r = RandomNormalLike<mean = 2.0, scale = 0.5>(x)
  y = Add(x, r)
}"""

# a Loop whose i-th pass draws i + 1 uniforms (its trip count is an input: data-dependent)
VARYING_LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64 n) => (float[m] out) {
  t = Constant<value = bool {1}>()
  init = Constant<value = float[1] {0.0}>()
  out = Loop(n, t, init) <body = body (int64 i, bool c, float[k] acc) => (bool c2, float[j] acc2) {
      c2 = Identity(c)
      one = Constant<value = int64 {1}>()
      i1 = Add(i, one)
      axes = Constant<value = int64[1] {0}>()
      len = Unsqueeze(i1, axes)
      zeros = ConstantOfShape(len)
      u = RandomUniformLike(zeros)
      acc2 = Concat<axis = 0>(acc, u)
  }>
}"""


def _seed_feed(model: onnx.ModelProto, seed: int) -> dict:
    return {seed_metadata(model)["name"]: np.array(seed, dtype=np.int64)}


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_every_fixture_rewrites_seeded_and_passes_the_check(name):
    path = FIXTURES / name
    new, report = onnxfix.rewrite(str(path), "seeded")
    if name in CONVERTED:
        assert report.parity.status == "skipped"
        assert report.parity.reason.startswith("verified only on copies converted to opset 7")
    else:
        assert report.parity.status == "passed", report.parity.reason
    assert onnxfix.inspect(new).nodes == []
    assert report.seed_input == "seed" and "seed" in report.new_inputs
    seed_input = next(i for i in new.graph.input if i.name == "seed")
    assert seed_input.type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert len(seed_input.type.tensor_type.shape.dim) == 0
    assert any(c.name.endswith("(seed 1)") for c in report.parity.outputs)


def test_a_static_axis_of_a_runtime_shaped_draw_is_a_constant_that_inference_types():
    """x is [batch, 3]: the draw's 3 is a constant (its batch is read from x's shape), so
    inference types the noise [batch', 3] and every tensor after it keeps its axis."""
    new, _ = onnxfix.rewrite(parse(NORMAL_LIKE), "seeded")
    (draw,) = seed_metadata(new)["draws"]
    inferred = onnx.shape_inference.infer_shapes(new, strict_mode=True, data_prop=True)
    (noise,) = [v for v in inferred.graph.value_info if v.name == draw["noise"]]
    dims = noise.type.tensor_type.shape.dim
    assert len(dims) == 2 and not dims[0].HasField("dim_value") and dims[1].dim_value == 3


def test_seeded_rewrite_corrects_a_multinomial_output_declared_with_the_wrong_size():
    """The MIGraphX test model declares its Multinomial output [?, 10], sample_size 12: the
    draw's 12 is a constant, so inference proves [?, 12] and the declaration is corrected
    (IREE trusted the declaration: "'tensor.cast' op operand type 'tensor<?x12xi32>' and
    result type 'tensor<?x10xi32>' are cast incompatible"), with no dims given."""
    path = real_model_path("migraphx_multinomial_autoseed_dyn_test.onnx")
    new, report = onnxfix.rewrite(str(path), "seeded", check=False)
    (fix,) = report.redeclared_outputs
    assert (fix.output, fix.declared, fix.inferred[1]) == ("output", [None, 10], 12)
    assert new.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 12


@pytest.mark.parametrize("name", REAL)
def test_real_models_rewrite_seeded_and_pass(name):
    path = real_model_path(name)
    new, report = onnxfix.rewrite(str(path), "seeded")
    assert report.parity.status == "passed", report.parity.reason
    assert onnxfix.inspect(new).nodes == []
    original = onnx.load(str(path))
    assert new.opset_import[0].version == original.opset_import[0].version


def test_seeded_random_normal_like_ops_and_bits():
    new, report = onnxfix.rewrite(parse(NORMAL_LIKE), "seeded")
    full_check(new)
    assert [i.name for i in new.graph.input] == ["x", "seed"]
    ops = [n.op_type for n in new.graph.node]
    # the counter is built in the input's runtime shape (rank 2: a Range and a Reshape to a
    # constant shape per axis, of the batch dim read from the shape, of the static 3 as a
    # constant), so nothing is reshaped to a runtime shape (an Expand to x's shape, a no-op,
    # ties the draw's dims to x's for TVM); the seed's two words are floor mods made from Div,
    # Mul and Sub
    assert collections.Counter(ops) == {
        "Add": 108, "Mod": 62, "Constant": 51, "Gather": 41, "Mul": 13, "Div": 7, "Sub": 5,
        "Cast": 2, "Range": 2, "Reshape": 2, "Shape": 1, "Log": 1, "Sqrt": 1, "Cos": 1,
        "Expand": 1}
    # Box-Muller, the Expand to x's shape, the node's transform, the model's Add
    assert ops[-14:] == ["Constant", "Log", "Mul", "Sqrt", "Constant", "Mul", "Cos", "Mul",
                         "Expand", "Constant", "Mul", "Constant", "Add", "Add"]
    x = np.zeros([4, 3], dtype=np.float32)
    got = run(new, {"x": x, **_seed_feed(new, 11)})["y"]
    key = seed_metadata(new)["draws"][0]["key"]
    want = np.float32(2.0) + np.float32(0.5) * alg.normal(11, key, [4, 3])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert report.parity.status == "passed"


def test_same_seed_same_outputs_next_seed_differs():
    new, _ = onnxfix.rewrite(str(FIXTURES / "mixed_dynamic_dynamo.onnx"), "seeded", check=False)
    x = np.random.default_rng(0).standard_normal([3, 10]).astype(np.float32)
    a, b, c = (run(new, {"x": x, **_seed_feed(new, s)}) for s in (5, 5, 6))
    for name in a:
        assert np.array_equal(a[name], b[name])
    assert any(not np.array_equal(a[name], c[name]) for name in a)


def test_loop_draw_whose_shape_varies_per_iteration():
    model = parse(VARYING_LOOP)
    with pytest.raises(ModelError, match="data-dependent"):  # input-noise needs a bound
        onnxfix.rewrite(model, "input-noise")
    new, report = onnxfix.rewrite(model, "seeded")
    assert report.parity.status == "passed"
    key = seed_metadata(new)["draws"][0]["key"]
    got = run(new, {"n": np.array(4, dtype=np.int64), **_seed_feed(new, 9)})["out"]
    want = np.concatenate([[0.0]] + [alg.uniform(9, key, [i + 1], iteration=i)
                                     for i in range(4)]).astype(np.float32)
    assert np.array_equal(got, want)  # uniforms: bit for bit


def test_data_dependent_vits_length_needs_no_noise_bound():
    path = str(FIXTURES / "arch" / "transformers_vits_ts17.onnx")
    with pytest.raises(ModelError, match="noise_bounds"):
        onnxfix.rewrite(path, "input-noise", check=False)
    new, report = onnxfix.rewrite(path, "seeded")
    assert report.parity.status == "passed"
    assert len(report.parity.sizes) == 2  # both check sizes: frames differ per run


def test_noise_feeds_seeded_reproduces_the_seeded_model():
    path = str(FIXTURES / "mixed_dynamic_dynamo.onnx")
    seeded, _ = onnxfix.rewrite(path, "seeded", check=False)
    noisy, _ = onnxfix.rewrite(path, "input-noise", check=False)
    x = np.random.default_rng(1).standard_normal([3, 10]).astype(np.float32)
    assert onnxfix.noise_feeds(seeded, seed=21) == {"seed": np.array(21)}
    feeds = onnxfix.noise_feeds(noisy, dims={"batch": 3}, seed=21, generator="seeded")
    draws = ["randn_like", "rand_like", "bernoulli"]
    want = run(expose(seeded, draws), {"x": x, **onnxfix.noise_feeds(seeded, seed=21)})
    got = run(expose(noisy, draws), {"x": x, **feeds})
    assert sorted(got) == sorted(want) == ["bernoulli", "idx", "rand_like", "randn_like", "y"]
    for name in ("rand_like", "bernoulli", "idx"):  # built from uniforms: bit for bit
        assert np.array_equal(got[name], want[name])
    for name in ("randn_like", "y"):  # Log / Cos / Sqrt: onnxruntime's against numpy's
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
    other = onnxfix.noise_feeds(noisy, dims={"batch": 3}, seed=22, generator="seeded")
    assert not np.array_equal(other["noise_rand_like"], feeds["noise_rand_like"])


def test_noise_feeds_seeded_in_a_loop():
    path = str(FIXTURES / "edge" / "ddpm_loop_script.onnx")
    seeded, _ = onnxfix.rewrite(path, "seeded", check=False)
    noisy, _ = onnxfix.rewrite(path, "input-noise", check=False)
    rng = np.random.default_rng(2)
    inputs = {"cond": rng.standard_normal([2, 2, 4, 4]).astype(np.float32),
              "timesteps": np.arange(3, dtype=np.float32)}
    feeds = onnxfix.noise_feeds(noisy, dims={"batch": 2, "steps": 3}, seed=4,
                                generator="seeded")
    want = run(seeded, {**inputs, **_seed_feed(seeded, 4)})
    got = run(noisy, {**inputs, **feeds})
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_noise_feeds_seeded_errors():
    noisy, _ = onnxfix.rewrite(parse(NORMAL_LIKE), "input-noise", check=False)
    with pytest.raises(UsageError) as e:
        onnxfix.noise_feeds(noisy, dims={"batch": 2}, seed=1, generator="pcg")
    assert str(e.value) == "generator='pcg': choose one of numpy, seeded"
    with pytest.raises(UsageError) as e:
        onnxfix.noise_feeds(noisy, dims={"batch": 2}, generator="seeded")
    assert str(e.value) == ("seed=None with generator='seeded': the seeded generator needs a "
                            "non-negative integer seed")
    with pytest.raises(UsageError) as e:
        onnxfix.noise_feeds(noisy, dims={"batch": 2}, seed=1, rng=np.random.default_rng(),
                            generator="seeded")
    assert str(e.value) == ("rng with generator='seeded': the seeded generator draws from "
                            "seed alone")


def test_check_fails_when_the_graph_draws_another_stream(monkeypatch):
    real = emit_seeded.seeded_normal

    def off_by_one(b, seed, key, *args, **kwargs):
        return real(b, seed, key ^ 1, *args, **kwargs)

    monkeypatch.setattr(emit_seeded, "seeded_normal", off_by_one)
    with pytest.raises(ParityError) as e:
        onnxfix.rewrite(parse(NORMAL_LIKE), "seeded")
    assert e.value.report.parity.status == "failed"
    assert any(not c.passed and c.name.startswith("y (seed") for c in
               e.value.report.parity.outputs)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxfix", *args], capture_output=True,
                          text=True)


def test_cli_seeded_prints_the_seed_input_and_inspect_reports_it(tmp_path: Path):
    out = tmp_path / "seeded.onnx"
    done = _cli("rewrite", str(FIXTURES / "ref1_static_ts.onnx"), str(out), "--mode", "seeded")
    assert done.returncode == 0, done.stderr
    assert "  seed input: 'seed' (int64 scalar; the same seed gives the same draws on every " \
           "runtime)" in done.stdout.splitlines()
    shown = _cli("inspect", str(out))
    assert shown.returncode == 0
    assert shown.stdout.splitlines() == [f"{out}: no random nodes",
                                         f"{out}: seed input 'seed' (int64 scalar) drives 1 "
                                         f"seeded draw(s)"]


def test_cli_seeded_refusal_is_one_line_exit_3(tmp_path: Path):
    """Below opset 6 Add, Sub, Mul and Div take floats only: no integer generator."""
    model = onnx.load(FIXTURES / "edge" / "old_random_normal_op6.onnx")
    model.opset_import[0].version = 5
    src, out = tmp_path / "op5.onnx", tmp_path / "x.onnx"
    onnx.save(model, src)
    done = _cli("rewrite", str(src), str(out), "--mode", "seeded")
    assert done.returncode == 3
    assert done.stderr == ("onnxfix: error: RandomNormal -> 'd' (main): the seeded generator "
                           "needs opset 6 or later (integer Add, Sub, Mul and Div); the model "
                           "uses opset 5: use --mode input-noise\n")
    assert not out.exists()
    assert _cli("rewrite", str(src), str(out), "--no-check").returncode == 0  # as it says


def test_seed_input_name_is_made_unique():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] seed) => (float[2] y) {
      r = RandomUniformLike(seed)
      y = Add(seed, r)
    }""")
    new, report = onnxfix.rewrite(model, "seeded")
    assert report.seed_input == "seed_1"
    assert [i.name for i in new.graph.input] == ["seed", "seed_1"]
    assert report.parity.status == "passed"


def test_options_that_do_not_apply_to_seeded_mode_are_refused(tmp_path: Path):
    with pytest.raises(UsageError) as e:
        onnxfix.rewrite(parse(NORMAL_LIKE), "seeded", noise_dtype="float16")
    assert str(e.value) == ("noise_dtype='float16' with mode='seeded': a seeded model has no "
                            "noise inputs (its draws are made in-graph)")
    done = _cli("rewrite", str(FIXTURES / "ref1_static_ts.onnx"), str(tmp_path / "x.onnx"),
                "--mode", "seeded", "--noise-bound", "noise_x:1=4")
    assert done.returncode == 2
    assert done.stderr == ("onnxfix: error: --noise-bound with --mode seeded: a seeded draw "
                           "takes the size each run computes, so it needs no bound\n")


def test_gumbel_multinomial_in_seeded_mode(tmp_path: Path):
    """The Gumbel-max form draws its [batch, samples, classes] Gumbel noise in-graph as
    -log(-log v), v in (0, 1) open; the check feeds the twin the reference Gumbel noise, and
    noise_feeds(generator="seeded") gives an input-noise Gumbel model the same samples."""
    path = str(FIXTURES / "multinomial3_dynamic_dynamo.onnx")
    seeded, report = onnxfix.rewrite(path, "seeded", multinomial="gumbel")
    assert report.parity.status == "passed", report.parity.reason
    assert [c.name for c in report.parity.outputs].count("y (seed 1)") == 2  # both sizes
    entry = seed_metadata(seeded)["draws"][0]
    assert (entry["family"], entry["op_type"]) == ("gumbel", "Multinomial")
    noisy, _ = onnxfix.rewrite(path, "input-noise", multinomial="gumbel", check=False)
    ops = collections.Counter(n.op_type for n in seeded.graph.node)
    ops.subtract(n.op_type for n in noisy.graph.node)
    assert (ops["ArgMax"], ops["Log"], ops["Neg"]) == (0, 2, 2)  # -log(-log v) in front
    x = {"x": np.random.default_rng(5).standard_normal([4, 10]).astype(np.float32)}
    want = run(seeded, {**x, **_seed_feed(seeded, 8)})
    feeds = onnxfix.noise_feeds(noisy, dims={"batch": 4}, seed=8, generator="seeded")
    (noise,) = feeds.values()
    assert noise.shape[:2] == (4, 3) and np.isfinite(noise).all()  # [batch, samples, classes]
    got = run(noisy, {**x, **feeds})
    assert want["y"].shape == (4, 3)
    np.testing.assert_array_equal(got["y"], want["y"])
    other = run(seeded, {**x, **_seed_feed(seeded, 9)})
    assert not np.array_equal(other["y"], want["y"])
    done = _cli("rewrite", path, str(tmp_path / "y.onnx"), "--mode", "seeded",
                "--multinomial", "gumbel")
    assert done.returncode == 0, done.stderr


def test_scan_body_draws_count_passes_with_an_extra_state():
    path = str(FIXTURES / "edge" / "if_in_scan.onnx")
    seeded, report = onnxfix.rewrite(path, "seeded")
    assert report.parity.status == "passed"
    scan = next(n for n in seeded.graph.node if n.op_type == "Scan")
    body = next(a.g for a in scan.attribute if a.name == "body")
    # the first new state (tests/test_seeded_scan.py: then the carried seed and S-box)
    assert (scan.input[1], scan.output[1]) == ("onnxfix_scan_pass_start", "onnxfix_scan_passes")
    assert (body.input[1].name, body.output[1].name) == ("onnxfix_scan_pass",
                                                         "onnxfix_scan_pass_next")
    noisy, _ = onnxfix.rewrite(path, "input-noise", check=False)
    xs = np.array([[1, 2, 3], [-1, -2, -3], [4, 5, 6], [0.5, 0.5, 0.5]], dtype=np.float32)
    inputs = {"acc0": np.zeros(3, dtype=np.float32), "xs": xs}
    feeds = onnxfix.noise_feeds(noisy, dims={"T": 4}, seed=3, generator="seeded")
    want = run(seeded, {**inputs, **_seed_feed(seeded, 3)})
    got = run(noisy, {**inputs, **feeds})
    for name in ("acc", "ys"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
    assert not np.array_equal(want["ys"][0], xs[0])  # pass 0 drew noise
    assert np.array_equal(want["ys"][1], xs[1])  # pass 1 took the else branch


NESTED_LOOPS = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64 n, int64 m, float[2] x) => (float[2] y) {
      t = Constant<value = bool {1}>()
      y = Loop(n, t, x) <body = outer (int64 i, bool c, float[2] a) => (bool c1, float[2] a1) {
          c1 = Identity(c)
          a1 = Loop(m, c, a) <body = inner (int64 j, bool d, float[2] b) => (bool d1, float[2] b1) {
              d1 = Identity(d)
              r = RandomUniformLike(b)
              b1 = Add(b, r)
          }>
      }>
    }"""


def test_draw_in_nested_loops_counts_every_enclosing_iteration():
    """Pass (i, j) of a Loop in a Loop draws the stream of iterations (i, j): y = x + the sum
    of those 12 draws; the check (against the twin fed the reference) passes, and
    noise_feeds(generator="seeded") fills a bounded input-noise twin with the same draws."""
    model = parse(NESTED_LOOPS)
    seeded, report = onnxfix.rewrite(model, "seeded")
    assert report.parity.status == "passed", report.parity.reason
    entry = seed_metadata(seeded)["draws"][0]
    assert (entry["graph"], entry["loops"]) == ("main/Loop#1.body/Loop#1.body", 2)
    x = np.array([0.5, -1.0], dtype=np.float32)
    trips = {"n": np.array(3), "m": np.array(4), "x": x}
    y = run(seeded, {**trips, **_seed_feed(seeded, 5)})["y"]
    want = x.copy()
    for i in range(3):
        for j in range(4):
            want = want + alg.uniform(5, entry["key"], [2], iteration=(i, j))
    np.testing.assert_array_equal(y, want)
    noisy, _ = onnxfix.rewrite(model, "input-noise", check=False,
                               noise_bounds={"noise_r:0": 3, "noise_r:1": 4})
    feeds = onnxfix.noise_feeds(noisy, seed=5, generator="seeded")
    assert feeds["noise_r"].shape == (3, 4, 2)
    np.testing.assert_array_equal(run(noisy, {**trips, **feeds})["y"], y)


def test_draw_in_a_scan_inside_a_loop():
    model = parse(SCAN_IN_LOOP)  # tests/test_seeded_scan.py runs it on OpenVINO and IREE
    seeded, report = onnxfix.rewrite(model, "seeded")
    assert report.parity.status == "passed", report.parity.reason
    key = seed_metadata(seeded)["draws"][0]["key"]
    xs = np.zeros([3, 2], dtype=np.float32)
    y = run(seeded, {"n": np.array(2), "xs": xs, **_seed_feed(seeded, 6)})["y"]
    want = sum(np.stack([alg.normal(6, key, [2], iteration=(i, j)) for j in range(3)])
               for i in range(2))
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["old_random_uniform_like_op7", "old_random_normal_like_op8",
                                  "old_multinomial_op7"])
def test_a_static_draw_before_opset_9_has_a_shape_that_inference_knows(name):
    # before opset 9 a Constant holds floats only, so an int64 shape is a Cast of a double
    # constant, which onnx inference cannot read: a Reshape to it had no rank, and IREE typed
    # the draw as a scalar ("number of elements must be preserved: 6 != 1")
    model, report = onnxfix.rewrite(FIXTURES / "edge" / f"{name}.onnx", "seeded")
    assert report.parity.status == "passed", report.parity.reason
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    typed = {v.name: v.type.tensor_type for v in [*inferred.graph.value_info,
                                                   *inferred.graph.output]}
    draws = [r.output for r in report.nodes if r.status == "rewritten"]
    assert draws
    for draw in draws:
        assert typed[draw].HasField("shape"), draw
        assert all(d.HasField("dim_value") for d in typed[draw].shape.dim), draw
    assert "Reshape" not in {n.op_type for n in model.graph.node}


KEPT = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[2, 3] x) => (float[2, 3] y, float[2, 3] z) {
  a = RandomNormal<shape = [2, 3]>()
  b = RandomNormal<shape = [2, 3]>()
  y = Add(x, a)
  z = Add(x, b)
}"""


def test_an_output_of_a_draw_left_random_is_not_compared_in_seeded_mode():
    """`b` is excluded, so `z` stays random in both the seeded model and its twin: comparing
    it failed the check ("two runs with the same seed differ"); input-noise mode leaves such
    outputs out, and so does the seeded check now."""
    new, report = onnxfix.rewrite(parse(KEPT), "seeded", exclude=["b"])
    assert [(r.output, r.status) for r in report.nodes] == [("a", "rewritten"), ("b", "kept")]
    assert report.parity.status == "passed", report.parity.reason
    assert [c.name for c in report.parity.outputs] == ["y", "a", "y (seed 0)", "y (seed 1)"]
    assert [n.op_type for n in new.graph.node].count("RandomNormal") == 1


def test_a_seeded_check_with_every_output_left_random_is_a_skip():
    model = parse(KEPT.replace("  y = Add(x, a)\n", "").replace("z = Add(x, b)",
                                                                  "z = Add(x, b)\n  y = Add(z, a)"))
    _, report = onnxfix.rewrite(model, "seeded", exclude=["b"])
    assert report.parity.status == "skipped"
    assert report.parity.reason == ("every output of the seeded model depends on a random node "
                                    "left in place (b), so no output can be compared")
