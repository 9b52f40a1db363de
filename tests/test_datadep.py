"""Data-dependent noise dims: traced, bounded (--noise-bound), sliced in-graph, fed, checked."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, input_dims, op_types, parse, run
from typer.testing import CliRunner

import onnxfix
from onnxfix import ModelError, UsageError
from onnxfix.cli import app
from onnxfix.rewrite import NOISE_METADATA_KEY, rewrite_model

# A VITS-like flow: durations come from a first draw, frames = their sum, and the flow noise
# is drawn over [batch, 2, frames] (ConstantOfShape -> RandomNormalLike).
VITS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 2, frames] y) {
  zero1 = Constant<value=int64[1] {0}>()
  one1 = Constant<value=int64[1] {1}>()
  one = Constant<value=float {1.0}>()
  two = Constant<value=int64[1] {2}>()
  e = RandomNormalLike(x)
  a = Abs(e)
  c = Ceil(a)
  d = Add(c, one)
  di = Cast<to=7>(d)
  tot = ReduceSum<keepdims=0>(di)
  total = Reshape(tot, one1)
  xs = Shape(x)
  b = Slice(xs, zero1, one1)
  zs = Concat<axis=0>(b, two, total)
  base = ConstantOfShape(zs)
  z = RandomNormalLike<scale=0.5>(base)
  y = Add(z, one)
}
"""

# A length read from an input's values (Range over it), drawn with a uniform.
RANGE = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64 n, float[batch] x) => (float[L] y) {
  zero = Constant<value=int64 {0}>()
  step = Constant<value=int64 {1}>()
  idx = Range(zero, n, step)
  f = Cast<to=1>(idx)
  u = RandomUniformLike<low=-1.0, high=1.0>(f)
  y = Add(f, u)
}
"""

# The noise size follows from the input dims, but inference leaves it unnamed.
DERIVED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[M, 4] y) {
  xx = Concat<axis=0>(x, x)
  r = RandomNormalLike(xx)
  y = Add(xx, r)
}
"""

BOUND = {"noise_z:2": 64}


def _frames(noise_e: np.ndarray) -> int:
    return int((np.ceil(np.abs(noise_e)) + 1).astype(np.int64).sum())


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    result.returncode = result.exit_code
    return result


def test_without_a_bound_the_rewrite_stops_naming_input_dim_origin_and_flag():
    with pytest.raises(ModelError) as err:
        rewrite_model(parse(VITS), "input-noise")
    assert str(err.value) == (
        "RandomNormalLike -> 'z' (main): axis 2 of its noise 'noise_z' is data-dependent (the "
        "size of 'base' axis 2 comes from the values of 'zs' (the draw RandomNormalLike -> "
        "'e')), so it cannot be sized from the model's inputs; set an upper bound with "
        "noise_bounds={'noise_z:2': N} or use mode='deterministic'")


def test_cli_without_a_bound_exits_3_with_one_line_and_writes_nothing(tmp_path):
    src = tmp_path / "vits.onnx"
    onnx.save(parse(VITS), src)
    out = tmp_path / "out.onnx"
    res = _cli("rewrite", str(src), str(out))
    assert res.returncode == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--noise-bound noise_z:2=N" in lines[0]
    assert not out.exists()
    res = _cli("rewrite", str(src), str(out), "--noise-bound", "noise_z:2=64", "--report",
               str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stderr
    assert "=>  input 'noise_z' float[batch, 2, 64 (bound of noise_z:2)]" in res.stdout
    dims = json.loads((tmp_path / "r.json").read_text())["nodes"][1]["replacement"]["dims"]
    assert dims[2] == {"axis": 2, "kind": "bounded", "size": 64, "name": "noise_z:2",
                       "source": "base", "source_axis": 2,
                       "origin": "the values of 'zs' (the draw RandomNormalLike -> 'e')"}


def test_bounded_noise_is_declared_at_the_bound_and_the_check_covers_it():
    lines = []
    new, report = onnxfix.rewrite(parse(VITS), "input-noise", noise_bounds=BOUND,
                                  on_line=lines.append)
    assert input_dims(new, "noise_z") == ["batch", 2, 64]
    assert input_dims(new, "noise_e") == ["batch", 4]
    # the original's draw fills the first frames, filler the rest: outputs equal exactly
    assert report.parity.status == "passed"
    assert [c.max_abs_err for c in report.parity.outputs] == [0.0] * 6
    shapes = [p.shape for p in report.parity.outputs if p.name == "z"]
    # onnxruntime draws the durations afresh: frames vary, at least one per duration
    assert [s[:2] for s in shapes] == [[2, 2], [3, 2]]
    assert 8 <= shapes[0][2] <= 64 and 12 <= shapes[1][2] <= 64
    # Shape of the node's input -> the frames it needs -> Slice -> Reshape (the guard)
    assert op_types(new)[-11:] == ["ConstantOfShape", "Shape", "Constant", "Gather", "Constant",
                                   "Constant", "Slice", "Reshape", "Constant", "Mul", "Add"]
    meta = json.loads({p.key: p.value for p in new.metadata_props}[NOISE_METADATA_KEY])
    kinds = {e["name"]: [(d["kind"], d.get("size") or d.get("name")) for d in e["dims"]]
             for e in meta}
    assert kinds == {"noise_e": [("input", "batch"), ("constant", 4)],
                     "noise_z": [("input", "batch"), ("constant", 2), ("bounded", 64)]}


@pytest.mark.parametrize("batch", [1, 3])
def test_noise_feeds_from_the_input_dims_alone_run_the_bounded_model(batch):
    new, _ = onnxfix.rewrite(parse(VITS), "input-noise", noise_bounds=BOUND, check=False)
    feeds = onnxfix.noise_feeds(new, dims={"batch": batch}, seed=batch)
    assert {k: v.shape for k, v in feeds.items()} == {"noise_e": (batch, 4),
                                                      "noise_z": (batch, 2, 64)}
    y = run(new, {"x": np.zeros((batch, 4), np.float32), **feeds})["y"]
    frames = _frames(feeds["noise_e"])
    prefix = feeds["noise_z"][:, :, :frames]
    np.testing.assert_array_equal(y, prefix * np.float32(0.5) + np.float32(1.0))


def test_a_run_needing_more_than_the_bound_fails_in_onnxruntime():
    new, _ = onnxfix.rewrite(parse(VITS), "input-noise", noise_bounds={"noise_z:2": 10},
                             check=False)
    feeds = onnxfix.noise_feeds(new, dims={"batch": 2}, seed=0)
    feeds["noise_e"] = np.full((2, 4), 2.5, np.float32)  # 8 durations of 4 frames: 32 > 10
    with pytest.raises(Exception, match=r"cannot be reshaped to the requested shape\. Input "
                                        r"shape:\{2,2,10\}, requested shape:\{2,2,32\}"):
        run(new, {"x": np.zeros((2, 4), np.float32), **feeds})


def test_a_bound_for_a_dim_that_is_not_data_dependent_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match=r"^noise_bounds: no data-dependent noise dim "
                                         r"'noise_e:1' \(data-dependent dims: noise_z:2\)$"):
        rewrite_model(parse(VITS), "input-noise", noise_bounds={"noise_e:1": 4, **BOUND})
    src = tmp_path / "vits.onnx"
    onnx.save(parse(VITS), src)
    res = _cli("rewrite", str(src), str(tmp_path / "o.onnx"), "--noise-bound", "noise_z:2")
    assert res.returncode == 2
    assert res.stderr.strip().endswith("expected NAME=N, e.g. --noise-bound noise_z:2=400")


def test_constant_mode_names_the_data_dependent_dim_not_a_dim_flag():
    with pytest.raises(ModelError) as err:
        rewrite_model(parse(VITS), "constant", dims={"batch": 1})
    text = str(err.value)
    assert "is data-dependent" in text and "noise_bounds={'noise_z:2': N}" in text
    assert "dims=" not in text and "unk__" not in text
    new, report = onnxfix.rewrite(parse(VITS), "constant", dims={"batch": 1},
                                  noise_bounds=BOUND)
    assert report.parity.status == "passed"
    frozen = {t.name: onnx.numpy_helper.to_array(t) for t in new.graph.initializer}
    assert frozen["noise_z"].shape == (1, 2, 64)
    y = run(new, {"x": np.zeros((1, 4), np.float32)})["y"]
    frames = _frames(frozen["e"])  # the first draw is frozen itself
    np.testing.assert_array_equal(y, frozen["noise_z"][:, :, :frames] * np.float32(0.5) + 1)


def test_range_over_an_input_value_is_data_dependent_and_bounded():
    with pytest.raises(ModelError, match=r"the size of 'f' axis 0 comes from the values of "
                                         r"'n' \(the values of input 'n'\)"):
        rewrite_model(parse(RANGE), "input-noise")
    new, report = onnxfix.rewrite(parse(RANGE), "input-noise", noise_bounds={"noise_u:0": 8})
    assert input_dims(new, "noise_u") == [8]
    assert report.parity.status == "passed"
    u = np.linspace(0, 0.875, 8, dtype=np.float32)
    y = run(new, {"n": np.array(5), "x": np.zeros(2, np.float32), "noise_u": u})["y"]
    f = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(y, f + (u[:5] * np.float32(2.0) + np.float32(-1.0)))


def test_a_derived_dim_is_sized_by_noise_feeds_and_checked_in_graph():
    new, report = onnxfix.rewrite(parse(DERIVED), "input-noise")
    assert report.parity.status == "passed"
    assert input_dims(new, "noise_r") == ["noise_r_d0", 4]
    assert report.nodes[0].replacement.dims[0] == {
        "axis": 0, "kind": "derived", "name": "noise_r_d0", "source": "xx", "source_axis": 0}
    feeds = onnxfix.noise_feeds(new, dims={"batch": 3}, seed=0)
    assert feeds["noise_r"].shape == (6, 4)
    x = np.ones((3, 4), np.float32)
    y = run(new, {"x": x, **feeds})["y"]
    np.testing.assert_array_equal(y, np.concatenate([x, x]) + feeds["noise_r"])
    # a guessed size fails loudly instead of broadcasting one row over all
    with pytest.raises(Exception, match=r"cannot be reshaped.*Input shape:\{1,4\}, requested "
                                        r"shape:\{6,4\}"):
        run(new, {"x": x, "noise_r": np.zeros((1, 4), np.float32)})


# A while-loop: the iteration count comes from the condition, not from any input dim.
WHILE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch] x) => (float[batch] acc) {
  cond = Constant<value=bool {1}>()
  acc = Loop ("", cond, x) <
    body = b (int64 i, bool c_in, float[batch] a_in) => (bool c_out, float[batch] a_out) {
      four = Constant<value=int64 {4}>()
      c_out = Less(i, four)
      r = RandomNormalLike<mean=0.25>(a_in)
      a_out = Add(a_in, r)
    }
  >
}
"""


def test_deterministic_check_sizes_its_twin_noise_from_the_real_shapes():
    # no bound needed: deterministic mode has no noise input; its check's twin is sized from
    # the shapes the deterministic model really computes (frames from the mean durations)
    new, report = onnxfix.rewrite(parse(VITS), "deterministic")
    assert report.parity.status == "passed"
    assert not [i.name for i in new.graph.input if i.name.startswith("noise_")]
    y = run(new, {"x": np.zeros((2, 4), np.float32)})["y"]
    np.testing.assert_array_equal(y, np.ones((2, 2, 8), np.float32))  # 8 durations of 1


def test_deterministic_check_of_a_while_loop_sizes_the_iteration_axis():
    new, report = onnxfix.rewrite(parse(WHILE), "deterministic")
    assert report.parity.status == "passed"
    acc = run(new, {"x": np.zeros(3, np.float32)})["acc"]
    np.testing.assert_allclose(acc, np.full(3, 1.25, np.float32))  # 5 iterations of the mean


# Per-iteration draws whose shape changes between iterations: over [i + 1], and over a loop
# state that doubles each iteration.
LOOP_BY_ITERATION = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1] x) => (float acc_out) {
  trips = Constant<value=int64 {3}>()
  cond = Constant<value=bool {1}>()
  z = Constant<value=float {0.0}>()
  acc_out = Loop (trips, cond, z) <
    body = b (int64 i, bool c_in, float a_in) => (bool c_out, float a_out) {
      c_out = Identity(c_in)
      one = Constant<value=int64 {1}>()
      n = Add(i, one)
      ax = Constant<value=int64[1] {0}>()
      nn = Unsqueeze(n, ax)
      base = ConstantOfShape(nn)
      r = RandomNormalLike<dtype=1>(base)
      s = ReduceSum<keepdims=0>(r)
      a_out = Add(a_in, s)
    }
  >
}
"""

LOOP_GROWING_STATE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1] x) => (float acc_out) {
  trips = Constant<value=int64 {3}>()
  cond = Constant<value=bool {1}>()
  z = Constant<value=float {0.0}>()
  acc_out, grown = Loop (trips, cond, z, x) <
    body = b (int64 i, bool c_in, float a_in, float[L0] g_in) => (bool c_out, float a_out,
                                                                  float[L1] g_out) {
      c_out = Identity(c_in)
      r = RandomUniformLike(g_in)
      s = ReduceSum<keepdims=0>(r)
      a_out = Add(a_in, s)
      g_out = Concat<axis=0>(g_in, g_in)
    }
  >
}
"""


def test_a_loop_draw_whose_shape_changes_per_iteration_is_refused_without_a_bound():
    with pytest.raises(ModelError, match=r"axis 1 of its noise 'noise_r' is data-dependent "
                                         r"\(the size of 'base' axis 0 comes from the values "
                                         r"of 'nn' \(the iteration number of Loop -> "
                                         r"'acc_out'\)\).*noise_bounds=\{'noise_r:1': N\}"):
        rewrite_model(parse(LOOP_BY_ITERATION), "input-noise")
    with pytest.raises(ModelError, match=r"comes from loop state 'g_in' of Loop -> 'acc_out', "
                                         r"whose shape can change between iterations"):
        rewrite_model(parse(LOOP_GROWING_STATE), "input-noise")


def test_a_bounded_per_iteration_draw_reads_its_own_prefix_each_iteration():
    new, report = onnxfix.rewrite(parse(LOOP_BY_ITERATION), "input-noise",
                                  noise_bounds={"noise_r:1": 5})
    assert input_dims(new, "noise_r") == [3, 5]
    assert report.parity.status == "passed"  # the capture pads each iteration's draw
    eps = np.arange(15, dtype=np.float32).reshape(3, 5)
    acc = run(new, {"x": np.zeros(1, np.float32), "noise_r": eps})["acc_out"]
    # iteration i draws i + 1 values: row i's prefix, never one draw broadcast over all
    assert acc == eps[0, :1].sum() + eps[1, :2].sum() + eps[2, :3].sum()


def test_a_bounded_growing_loop_state_draw_is_checked_and_fails_loudly_past_its_bound():
    new, report = onnxfix.rewrite(parse(LOOP_GROWING_STATE), "input-noise",
                                  noise_bounds={"noise_r:1": 4})
    assert report.parity.status == "passed"
    u = np.linspace(0, 0.9, 12, dtype=np.float32).reshape(3, 4)
    acc = run(new, {"x": np.zeros(1, np.float32), "noise_r": u})["acc_out"]
    np.testing.assert_allclose(acc, u[0, :1].sum() + u[1, :2].sum() + u[2, :4].sum(),
                               rtol=1e-6)
    small, _ = onnxfix.rewrite(parse(LOOP_GROWING_STATE), "input-noise",
                               noise_bounds={"noise_r:1": 3}, check=False)
    with pytest.raises(Exception, match=r"cannot be reshaped to the requested shape\. Input "
                                        r"shape:\{3\}, requested shape:\{4\}"):
        run(small, {"x": np.zeros(1, np.float32), "noise_r": u[:, :3]})


# A DDPM-style sampler: the Loop runs once per entry of `timesteps` (trip = Shape(t)[0]).
TIMESTEP_LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[T] timesteps, float[batch, 4] x) => (float[batch, 4] y) {
  sh = Shape(timesteps)
  zero = Constant<value=int64 {0}>()
  n = Gather<axis=0>(sh, zero)
  cond = Constant<value=bool {1}>()
  y = Loop (n, cond, x) <
    body = b (int64 i, bool c_in, float[batch, 4] a_in) => (bool c_out, float[batch, 4] a_out) {
      c_out = Identity(c_in)
      r = RandomNormalLike(a_in)
      a_out = Add(a_in, r)
    }
  >
}
"""


def test_a_loop_over_shape_of_timesteps_takes_the_timesteps_dim_as_iteration_axis():
    new, report = onnxfix.rewrite(parse(TIMESTEP_LOOP), "input-noise")
    assert input_dims(new, "noise_r") == ["T", "batch", 4]
    assert report.nodes[0].replacement.dims[0] == {"axis": 0, "kind": "iterations", "name": "T"}
    assert report.parity.status == "passed"
    feeds = onnxfix.noise_feeds(new, dims={"T": 5, "batch": 2}, seed=0)
    assert feeds["noise_r"].shape == (5, 2, 4)
    x = np.ones((2, 4), np.float32)
    y = run(new, {"timesteps": np.zeros(5, np.float32), "x": x, **feeds})["y"]
    expected = x.copy()
    for eps in feeds["noise_r"]:
        expected = expected + eps
    np.testing.assert_array_equal(y, expected)


def test_inspect_names_dims_like_the_rewrite_and_marks_data_dependent_ones(tmp_path):
    info = onnxfix.inspect(parse(VITS))
    z = info.nodes[1]
    assert z.shape == ["batch", 2, "noise_z:2"]
    assert z.noise["input"] == "noise_z"
    assert [(d["kind"], d.get("name", d.get("size"))) for d in z.noise["dims"]] == [
        ("input", "batch"), ("constant", 2), ("data-dependent", "noise_z:2")]
    src = tmp_path / "vits.onnx"
    onnx.save(parse(VITS), src)
    res = _cli("inspect", str(src))
    assert res.returncode == 0
    assert res.stdout.splitlines()[3].endswith("noise_z [batch, 2, noise_z:2 (data-dependent)]")


# TorchScript declares a Loop body's outputs with fresh names; the state still keeps its shape.
LOOP_FRESH_DECLARED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x, int64 steps) => (float[batch, 4] h) {
  cond = Constant<value=bool {1}>()
  h = Loop (steps, cond, x) <
    body = b (int64 i, bool c_in, float[batch, 4] h_in) => (bool c_out, float[Lh0, Lh1] h_out) {
      c_out = Identity(c_in)
      t = Tanh(h_in)
      r = RandomNormalLike(t)
      h_out = Add(t, r)
    }
  >
}
"""


def test_a_loop_state_that_keeps_its_shape_needs_no_bound_whatever_the_body_declares():
    # its trip count is input `steps`' value: the iteration axis takes a bound, no other axis
    new, report = onnxfix.rewrite(parse(LOOP_FRESH_DECLARED), "input-noise",
                                  noise_bounds={"noise_r:0": 8})
    assert input_dims(new, "noise_r") == [8, "batch", 4]
    assert report.parity.status == "passed"


@pytest.mark.parametrize(("name", "bound"), [
    ("arch/transformers_vits_ts17.onnx", "noise_vits_RandomNormalLike_output_0:2"),
    ("edge/vits_scales_ts.onnx", "noise_RandomNormalLike_1_output_0:2"),
])
def test_exported_vits_rewrites_with_a_bound_and_runs_on_feeds_from_input_dims(name, bound):
    from conftest import FIXTURES, session

    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"{name} is not in this checkout")
    with pytest.raises(ModelError, match=re.escape(f"noise_bounds={{'{bound}': N}}")):
        onnxfix.rewrite(path, "input-noise", check=False)
    new, report = onnxfix.rewrite(path, "input-noise", noise_bounds={bound: 2048})
    assert report.parity.status == "passed"
    sess = session(new)
    data = [i for i in sess.get_inputs() if not i.name.startswith("noise_")]
    for n in (1, 3):
        dims = {d: n + 4 if k else n for i in data for k, d in enumerate(i.shape)
                if isinstance(d, str)}
        feeds = onnxfix.noise_feeds(new, dims=dims, seed=n)
        rng = np.random.default_rng(n)
        for i in data:
            shape = [dims[d] if isinstance(d, str) else d for d in i.shape]
            feeds[i.name] = (np.ones(shape, np.int64) if "mask" in i.name else
                             rng.integers(0, 10, shape).astype(np.int64) if "int" in i.type
                             else np.abs(rng.standard_normal(shape)).astype(np.float32))
        first = sess.run(None, feeds)
        assert all(np.isfinite(o).all() for o in first)
        assert all(np.array_equal(a, b) for a, b in zip(first, sess.run(None, feeds),
                                                         strict=True))


def test_readme_tts_recipe_runs(tmp_path, monkeypatch):
    """The README's TTS recipe (its `sh` and `py` blocks, which test_readme does not run because
    they need the exported VITS fixture) runs whenever that fixture is present."""
    import re
    import shlex

    from conftest import FIXTURES, ROOT

    if not (FIXTURES / "arch" / "transformers_vits_ts17.onnx").exists():
        pytest.skip("fixtures/arch/transformers_vits_ts17.onnx is not in this checkout")
    text = (ROOT / "README.md").read_text()
    blocks = dict((lang, body) for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S)
                  if lang in ("sh", "py"))
    (tmp_path / "fixtures").symlink_to(FIXTURES, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    res = _cli(*shlex.split(blocks["sh"].strip())[1:])
    assert res.returncode == 0, res.stderr
    scope: dict = {}
    exec(compile(blocks["py"], "README.md", "exec"), scope)
    assert scope["waveform"].shape[0] == 1 and np.isfinite(scope["waveform"]).all()


def test_constant_mode_with_a_derived_dim_asks_for_the_input_dims_only():
    with pytest.raises(ModelError, match=r"^RandomNormalLike -> 'r' \(main\): constant mode "
                                         r"needs a concrete shape, but its shape "
                                         r"\[noise_r_d0, 4\] has a dim that shape inference "
                                         r"cannot compute from the input dims; fix the model's "
                                         r"input dims with dims=\{'NAME': N\} "
                                         r"\(its dims: batch\)$"):
        rewrite_model(parse(DERIVED), "constant")
    new, report = onnxfix.rewrite(parse(DERIVED), "constant", dims={"batch": 2})
    assert report.nodes[0].replacement.shape == [4, 4]
    assert report.parity.status == "passed"


def test_an_autoregressive_loop_whose_state_keeps_its_shape_needs_no_bound():
    # the body's logits lose `batch` under onnx inference; onnxruntime's follows the state
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, 1] start, int64 steps) => (float[batch, 1] last) {
      cond = Constant<value=bool {1}>()
      w = Constant<value=float[1, 5] {0.1, 0.2, 0.3, 0.2, 0.2}>()
      last = Loop (steps, cond, start) <
        body = b (int64 i, bool c_in, float[batch, 1] tok) => (bool c_out, float[Lt0, Lt1] nxt) {
          c_out = Identity(c_in)
          logits = MatMul(tok, w)
          flat = Flatten<axis=1>(logits)
          idx = Multinomial<sample_size=1, dtype=7>(flat)
          nxt = Cast<to=1>(idx)
        }
      >
    }""")
    # its trip count is input `steps`' value: the iteration axis takes a bound, no other axis
    new, report = onnxfix.rewrite(model, "input-noise", noise_bounds={"noise_idx:0": 8})
    assert input_dims(new, "noise_idx") == [8, "batch", 1]
    assert report.parity.status == "passed"


def test_bounds_before_opset_10_take_the_prefix_with_a_gather():
    model = parse(VITS.replace('"" : 17', '"" : 9').replace(
        "Slice(xs, zero1, one1)", "Slice<starts=[0], ends=[1], axes=[0]>(xs)"))
    # at opset 9 inference ties nothing: every axis of the flow noise needs a bound
    bounds = {f"noise_z:{k}": 64 for k in range(3)}
    new, report = onnxfix.rewrite(model, "input-noise", noise_bounds=bounds)
    assert report.parity.status == "passed"
    assert "Slice" not in op_types(new)[-12:] and op_types(new).count("NonZero") == 3
    feeds = {"x": np.zeros((2, 4), np.float32), "noise_e": np.full((2, 4), 0.5, np.float32),
             "noise_z": np.arange(64**3, dtype=np.float32).reshape(64, 64, 64)}
    y = run(new, feeds)["y"]  # 8 durations of 2 frames
    np.testing.assert_array_equal(y, feeds["noise_z"][:2, :2, :16] * np.float32(0.5) + 1)
    feeds["noise_e"] = np.full((2, 4), 9.5, np.float32)  # 8 durations of 11: 88 > 64
    with pytest.raises(Exception, match=r"indices element out of data bounds"):
        run(new, feeds)


def test_a_bound_too_small_for_the_check_inputs_fails_the_check_saying_so():
    with pytest.raises(onnxfix.ParityError, match=r"parity check failed: at batch=2 the check's "
                                                  r"inputs need \d+ on noise_z:2, over its "
                                                  r"bound 4; raise the bound or give the check "
                                                  r"smaller inputs$"):
        onnxfix.rewrite(parse(VITS), "input-noise", noise_bounds={"noise_z:2": 4})


def test_a_data_dependent_dim_that_only_broadcasts_with_an_input_dim_is_not_claimed():
    # onnxruntime's auto-merge equates u's length with `batch` because they meet in an Add;
    # n = 1 broadcasts one draw over the batch, so `batch` noise would change the distribution
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch] x, int64 n) => (float[batch] y) {
      zero = Constant<value=int64 {0}>()
      step = Constant<value=int64 {1}>()
      idx = Range(zero, n, step)
      f = Cast<to=1>(idx)
      u = RandomNormalLike(f)
      y = Add(x, u)
    }""")
    with pytest.raises(ModelError, match=r"axis 0 of its noise 'noise_u' is data-dependent"):
        rewrite_model(model, "input-noise")


def test_deterministic_check_falls_back_when_a_draw_shape_cannot_be_exposed():
    # an If inside a Scan: the shape probe cannot expose the draw; the check still runs
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[T, 3] xs, bool c) => (float[3] last) {
      init = Constant<value=float[3] {0.0, 0.0, 0.0}>()
      last = Scan (init, xs) <
        num_scan_inputs = 1,
        body = b (float[3] s_in, float[3] x_t) => (float[3] s_out) {
          y = If (c) <
            then_branch = t () => (float[3] ty) {
              r = RandomNormalLike<mean=1.0>(x_t)
              ty = Add(x_t, r)
            },
            else_branch = e () => (float[3] ey) { ey = Neg(x_t) }
          >
          s_out = Add(s_in, y)
        }
      >
    }""")
    new, report = onnxfix.rewrite(model, "deterministic")
    assert report.parity.status in ("passed", "skipped")
    xs = np.ones((2, 3), np.float32)
    last = run(new, {"xs": xs, "c": np.array(True)})["last"]
    np.testing.assert_array_equal(last, np.full(3, 4.0, np.float32))  # 2 steps of 1 + mean 1


# A TorchScript Loop whose trip count is the value of input `steps`: its per-iteration noise
# has an iteration axis no input dim can size.
LOOP_TS = FIXTURES / "arch" / "torch_script_loop_if_ts16.onnx"
LOOP_NOISE = "noise_RandomNormalLike_output_0"


def _loop_reference(model: onnx.ModelProto, x: np.ndarray, noise: np.ndarray, steps: int):
    """The loop body in numpy: tanh(Gemm), then + 0.1 * noise[i] on even i, * 0.5 on odd."""
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    h = x
    for i in range(steps):
        t = np.tanh(h @ init["cell.weight"].T + init["cell.bias"])
        h = t + noise[i] * np.float32(0.1) if i % 2 == 0 else t * np.float32(0.5)
    return h


def test_a_loop_over_an_input_value_refuses_its_iteration_axis_without_a_bound():
    with pytest.raises(ModelError) as err:
        rewrite_model(onnx.load(LOOP_TS), "input-noise")
    assert str(err.value) == (
        f"RandomNormalLike '/RandomNormalLike' -> '/RandomNormalLike_output_0' "
        f"(main//Loop.body//If.then_branch): axis 0 of its noise '{LOOP_NOISE}' is "
        f"data-dependent (the iterations of Loop '/Loop' come from the values of input "
        f"'steps'), so it cannot be sized from the model's inputs; "
        f"set an upper bound with noise_bounds={{'{LOOP_NOISE}:0': N}} or use "
        f"mode='deterministic'")
    with pytest.raises(ModelError, match=r"axis 0 of its noise .* is data-dependent \(the "
                                         r"iterations of Loop '/Loop' come from the values of "
                                         r"input 'steps'\)"):
        rewrite_model(onnx.load(LOOP_TS), "constant", dims={"batch": 2})


def test_a_bounded_loop_iteration_axis_is_declared_at_the_bound_and_checked():
    new, report = onnxfix.rewrite(onnx.load(LOOP_TS), "input-noise",
                                  noise_bounds={f"{LOOP_NOISE}:0": 8})
    assert input_dims(new, LOOP_NOISE) == [8, "batch", 4]
    assert report.parity.status == "passed"
    dims = report.nodes[0].replacement.dims
    assert dims[0] == {"axis": 0, "kind": "bounded", "size": 8, "name": f"{LOOP_NOISE}:0",
                       "origin": "the iterations of Loop '/Loop' come from the values of "
                                 "input 'steps'"}


def test_noise_feeds_size_a_bounded_loop_from_the_input_dims_and_past_it_fail_loudly():
    model = onnx.load(LOOP_TS)
    new, _ = onnxfix.rewrite(model, "input-noise", noise_bounds={f"{LOOP_NOISE}:0": 6},
                             check=False)
    feeds = onnxfix.noise_feeds(new, dims={"batch": 2}, seed=1)
    assert {k: v.shape for k, v in feeds.items()} == {LOOP_NOISE: (6, 2, 4)}
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    for steps in (3, 6):
        h = run(new, {"x": x, "steps": np.array(steps), **feeds})["h"]
        np.testing.assert_allclose(h, _loop_reference(model, x, feeds[LOOP_NOISE], steps),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match=r"Gather node.*indices element out of data bounds, "
                                        r"idx=6 must be within the inclusive range \[-6,5\]"):
        run(new, {"x": x, "steps": np.array(7), **feeds})
