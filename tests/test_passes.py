"""Each pass of the rewrite alone (prepare, plan, emit, splice, tidy, validate), the plan
computed once for a rewrite and its check, typed options and the reporter."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, op_types, parse, run

import onnxfix
import onnxfix.passes.plan as plan_module
import onnxfix.passes.prepare as prepare_module
from onnxfix.cli import _flag_words
from onnxfix.errors import ModelError, UsageError
from onnxfix.options import CheckSettings, RewriteOptions
from onnxfix.passes.emit import emit
from onnxfix.passes.plan import plan
from onnxfix.passes.prepare import prepare
from onnxfix.passes.splice import splice
from onnxfix.passes.tidy import tidy
from onnxfix.passes.validate import validate
from onnxfix.reporter import Reporter
from onnxfix.rewrite import apply_plan, plan_model, rewrite_model

rewrite_module = importlib.import_module("onnxfix.rewrite")  # onnxfix.rewrite: the API function

UNNAMED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[?, 4] x) => (float[?, 4] y) {
  r = RandomNormalLike<mean=1.0, scale=2.0>(x)
  y = Add(x, r)
}
"""

LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[3] x) => (float[3] acc) {
  trips = Constant<value=int64 {4}>()
  cond = Constant<value=bool {1}>()
  acc = Loop (trips, cond, x) <
    body = b (int64 i, bool c_in, float[3] a_in) => (bool c_out, float[3] a_out) {
      c_out = Identity(c_in)
      r = RandomUniformLike<low=0.0, high=1.0>(a_in)
      a_out = Add(a_in, r)
    }
  >
}
"""

VITS_LIKE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 2, ?] y) {
  e = RandomNormalLike(x)
  d = Abs(e)
  c = Ceil(d)
  n = ReduceSum<keepdims=0>(c)
  ni = Cast<to=7>(n)
  zero = Constant<value=float {0.0}>()
  b = Shape<start=0, end=1>(x)
  two = Constant<value=int64[1] {2}>()
  one = Constant<value=int64[1] {1}>()
  nr = Reshape(ni, one)
  shp = Concat<axis=0>(b, two, nr)
  base = ConstantOfShape(shp)
  z = RandomNormalLike(base)
  y = Add(base, z)
}
"""


def _ref3() -> onnx.ModelProto:
    return onnx.load(FIXTURES / "ref3_dynamic_ts.onnx")


# -- prepare ---------------------------------------------------------------------------------

def test_prepare_names_unnamed_input_dims_on_a_copy():
    model = parse(UNNAMED)
    before = model.SerializeToString()
    prepared = prepare(model)
    dim = prepared.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert prepared.random and dim.dim_param == "x_dim0"
    assert model.SerializeToString() == before


def test_prepare_fixes_dims_and_leaves_a_model_without_draws_alone():
    model = parse(UNNAMED.replace("r = RandomNormalLike<mean=1.0, scale=2.0>(x)", "r = Neg(x)"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    prepared = prepare(model, {"batch": 3})
    assert not prepared.random
    assert prepared.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


# -- plan ------------------------------------------------------------------------------------

def test_plan_describes_each_site_without_changing_the_model():
    prepared = prepare(_ref3())
    before = prepared.model.SerializeToString()
    model_plan = plan(prepared)
    assert [p.noise for p in model_plan.sites] == [
        "noise_RandomNormalLike_output_0", "noise_RandomNormalLike_1_output_0",
        "noise_RandomNormalLike_2_output_0"]
    assert [[d.kind for d in p.dims] for p in model_plan.sites] == [["input", "constant"]] * 3
    assert prepared.model.SerializeToString() == before


class _Calls:
    """Counts calls of a module-level function in a file: the check runs in a forked child."""

    def __init__(self, monkeypatch, tmp_path: Path, module, name: str):
        self.log = tmp_path / f"{module.__name__}.{name}.calls"
        self.log.write_text("")
        real = getattr(module, name)

        def counted(*args, **kwargs):
            with open(self.log, "a") as f:
                f.write("x")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    @property
    def count(self) -> int:
        return len(self.log.read_text())


@pytest.mark.parametrize("mode", ["constant", "deterministic"])
def test_the_plan_is_computed_once_for_a_rewrite_and_its_check(monkeypatch, tmp_path, mode):
    counters = [_Calls(monkeypatch, tmp_path, plan_module, "infer_for_plan"),
                _Calls(monkeypatch, tmp_path, prepare_module, "find_sites"),
                _Calls(monkeypatch, tmp_path, plan_module, "find_sites"),
                _Calls(monkeypatch, tmp_path, plan_module, "trace"),
                _Calls(monkeypatch, tmp_path, prepare_module, "inline_random_functions")]
    _, report = onnxfix.rewrite(_ref3(), mode, dims={"batch": 2})
    assert report.parity.status == "passed"
    # the sites are found once, by prepare (which inlines nothing here), and the plan reuses
    # them; with --dim batch=2 every noise dim is a constant, so the trace is not needed
    # (test_perfgraph: it runs once when a dim is not known from the inputs)
    assert [c.count for c in counters] == [1, 1, 0, 0, 1]


@pytest.mark.parametrize("mode", ["constant", "deterministic"])
def test_the_check_never_calls_the_rewrite(monkeypatch, mode):
    def refuse(*args, **kwargs):
        raise AssertionError("the check re-ran the rewrite")

    model_plan = plan_model(_ref3(), RewriteOptions(mode=mode, dims={"batch": 2}))
    monkeypatch.setattr(rewrite_module, "rewrite_model", refuse)
    monkeypatch.setattr(rewrite_module, "rewrite_with", refuse)
    monkeypatch.setattr(prepare_module, "inline_random_functions", refuse)
    monkeypatch.setattr(plan_module, "infer_for_plan", refuse)
    new, records = apply_plan(_ref3(), model_plan, mode)
    from onnxfix.check.parity import check_parity

    twin_calls = []

    def twin(measured):
        twin_calls.append(measured)
        return apply_plan(_ref3(), model_plan.with_bounds(measured), "input-noise")

    parity = check_parity(_ref3(), new, records, mode, twin=twin)
    assert parity.status == "passed" and twin_calls


def test_the_check_package_imports_neither_the_rewrite_nor_its_passes():
    check = Path(onnxfix.__file__).parent / "check"
    imported = set()
    for path in check.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
    assert not {m for m in imported
                if m.startswith(("onnxfix.rewrite", "onnxfix.passes", "onnxfix.api"))}


def test_with_bounds_reclassifies_without_inference(monkeypatch):
    model_plan = plan(prepare(parse(VITS_LIKE)))
    z = model_plan.sites[1]
    assert [d.kind for d in z.dims] == ["input", "constant", "data-dependent"]
    with pytest.raises(ModelError, match=r"noise_bounds=\{'noise_z:2': N\}"):
        emit(model_plan, "input-noise")

    def refuse(*args, **kwargs):
        raise AssertionError("inference ran again")

    for name in ("infer_for_plan", "trace", "ort_symbolic_facts"):
        monkeypatch.setattr(plan_module, name, refuse)
    bounded = model_plan.with_bounds({"noise_z:2": 16})
    assert [d.kind for d in bounded.sites[1].dims] == ["input", "constant", "bounded"]
    assert [p.noise for p in bounded.sites] == [p.noise for p in model_plan.sites]
    assert [d.kind for d in model_plan.sites[1].dims][2] == "data-dependent"  # unchanged
    new, records = apply_plan(parse(VITS_LIKE), bounded, "input-noise")
    assert records[1].replacement.shape == ["batch", 2, 16]


# -- emit ------------------------------------------------------------------------------------

def test_emitting_twice_from_one_plan_gives_identical_models():
    model = _ref3()
    model_plan = plan_model(model, RewriteOptions(dims={"batch": 2}))
    prepared = model_plan.model.SerializeToString()
    one, records_one = apply_plan(model, model_plan, "input-noise")
    constant, _ = apply_plan(model, model_plan, "constant", seed=3)
    two, records_two = apply_plan(model, model_plan, "input-noise")
    assert one.SerializeToString() == two.SerializeToString()
    assert records_one == records_two
    assert model_plan.model.SerializeToString() == prepared
    fresh, _ = rewrite_model(model, "input-noise", dims={"batch": 2})
    assert one.SerializeToString() == fresh.SerializeToString()
    assert "RandomNormalLike" not in op_types(constant)


def test_emit_gives_typed_records_and_leaves_the_prepared_model_alone():
    with pytest.raises(ModelError, match=r"dim x_dim0 is symbolic; fix it with "
                                         r"dims=\{'x_dim0': N\}$"):
        emit(plan(prepare(parse(UNNAMED))), "constant", seed=1)
    emitted = emit(plan(prepare(parse(UNNAMED), {"x_dim0": 2})), "constant", seed=1)
    [site] = emitted.sites
    [frozen] = site.frozen
    assert frozen.name == "r" and frozen.elem_type == onnx.TensorProto.FLOAT
    assert frozen.array.shape == (2, 4) and frozen.array.dtype == np.float32
    assert site.nodes == [] and emitted.records[0].replacement.dtype == "float"


# -- splice ----------------------------------------------------------------------------------

def test_splice_routes_noise_into_a_loop_body():
    emitted = emit(plan(prepare(parse(LOOP))), "input-noise")
    new = splice(emitted)
    noise = new.graph.input[-1]
    assert noise.name == "noise_r"
    assert [d.dim_value for d in noise.type.tensor_type.shape.dim] == [4, 3]
    body = next(a.g for a in new.graph.node[-1].attribute if a.name == "body")
    gather = body.node[0]
    assert gather.op_type == "Gather" and list(gather.input) == ["noise_r", "i"]
    assert "RandomUniformLike" not in op_types(new)
    u = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    got = run(new, {"x": np.zeros(3, np.float32), "noise_r": u})
    np.testing.assert_allclose(got["acc"], u.sum(axis=0), rtol=1e-6)


# -- tidy ------------------------------------------------------------------------------------

def test_tidy_drops_an_opset_import_only_removed_nodes_used():
    before = parse("""
<ir_version: 8, opset_import: ["" : 17, "custom.example" : 1]>
g (float[2] x) => (float[2] y) {
  t = custom.example.Twice(x)
  y = Identity(x)
}
""")
    after = onnx.ModelProto()
    after.CopyFrom(before)
    del after.graph.node[0]
    tidy(before, after, [{"name": "noise_y"}])
    assert [i.domain for i in after.opset_import] == [""]
    assert {p.key for p in after.metadata_props} == {"onnxfix.noise_inputs"}
    untouched = onnx.ModelProto()
    untouched.CopyFrom(before)
    tidy(before, untouched)
    assert [i.domain for i in untouched.opset_import] == ["", "custom.example"]


# -- validate --------------------------------------------------------------------------------

def test_validate_rejects_an_output_that_fails_the_checker():
    original = parse(UNNAMED)
    broken = onnx.ModelProto()
    broken.CopyFrom(original)
    broken.graph.node[1].input[1] = "nowhere"
    with pytest.raises(ModelError, match=r"^internal error: the rewritten model fails the onnx "
                                         r"checker \(full check\): "):
        validate(original, broken)
    assert validate(original, original) is original


# -- options and reporter --------------------------------------------------------------------

@pytest.mark.parametrize(("make", "api", "cli"), [
    (lambda: RewriteOptions(mode="noisy"),
     "mode='noisy': choose one of input-noise, constant, deterministic, seeded",
     "--mode 'noisy': choose one of input-noise, constant, deterministic, seeded"),
    (lambda: RewriteOptions(noise_dtype="int8"),
     "noise_dtype='int8': choose one of same, float32, float16",
     "--noise-dtype 'int8': choose one of same, float32, float16"),
    (lambda: RewriteOptions(seed=-1),
     "seed=-1: the seed must be a non-negative integer",
     "--seed -1: the seed must be a non-negative integer"),
    (lambda: CheckSettings(size=0),
     "check_size=0: must be an integer from 1 to 65536",
     "--check-size 0: must be an integer from 1 to 65536"),
    (lambda: CheckSettings(enabled=False, fail_on_skip=True),
     "fail_on_skip=True with check=False: a check that is not run would always fail",
     "--fail-on-skip with --no-check: a check that is not run would always fail"),
    (lambda: rewrite_model(parse(UNNAMED), "input-noise", dims={"batch": 2}),
     "dims: the model has no symbolic dim 'batch' (its dims: x_dim0)",
     "--dim: the model has no symbolic dim 'batch' (its dims: x_dim0)"),
])
def test_options_errors_name_api_parameters_and_the_cli_flags(make, api, cli):
    with pytest.raises(UsageError) as err:
        make()
    assert str(err.value) == api
    assert err.value.render(_flag_words) == cli


def test_the_reporter_takes_one_line_and_drops_details_unless_asked():
    lines, details = [], []
    Reporter.of(lines.append)("PASSED | x")
    reporter = Reporter(lines.append, details.append)
    reporter.detail("d")
    Reporter.of(None)("dropped")
    assert Reporter.of(reporter) is reporter
    assert lines == ["PASSED | x"] and details == ["d"]


def test_prepare_says_a_model_whose_random_function_was_inlined_is_not_the_input():
    # facts inferred on the prepared copy hold for the input only when nothing was inlined
    body = onnx.helper.make_node("RandomNormalLike", ["x"], ["y"], dtype=1)
    fn = onnx.helper.make_function("local", "noisy", ["x"], ["y"], [body],
                                   [onnx.helper.make_opsetid("", 17)])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("noisy", ["x"], ["z"], domain="local")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [2, 3])])
    model = onnx.helper.make_model(graph, functions=[fn], ir_version=8, opset_imports=[
        onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("local", 1)])
    prepared = prepare(model)
    assert [n.op_type for n in prepared.model.graph.node] == ["RandomNormalLike"]
    assert prepared.as_input is False
    model.ClearField("functions")
    model.graph.node[0].CopyFrom(body)
    model.graph.node[0].output[0] = "z"
    assert prepare(model).as_input is True


_FLAT_DRAW = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch, 4] x) => (float[batch, 4] y) {
  a = Relu(x)
  r = RandomNormalLike<scale = 2.0>(a)
  y = Add(a, r)
}
"""


def test_prepare_shares_a_model_it_would_only_copy_and_the_rewrite_leaves_it_as_it_was():
    """Issue 10: no copy of a 100k-node graph when nothing is inlined, named or fixed; the
    passes after prepare only read the model (the plan's inference clears the outputs'
    shapes and restores them)."""
    model = parse(_FLAT_DRAW)
    before = model.SerializeToString()
    prepared = prepare(model)
    assert prepared.model is model and prepared.as_input
    assert prepare(model, {"batch": 2}).model is not model  # a dim to fix: a copy
    unnamed = parse(_FLAT_DRAW)
    unnamed.graph.input[0].type.tensor_type.shape.dim[0].ClearField("dim_param")
    assert prepare(unnamed).model is not unnamed  # a dim to name: a copy
    for mode in ("input-noise", "deterministic", "seeded"):
        _, report = onnxfix.rewrite(model, mode)  # the parity check plans on it too
        assert report.parity.status == "passed"
    onnxfix.rewrite(model, "constant", dims={"batch": 2}, check=False)
    assert model.SerializeToString() == before


def test_the_api_never_lets_the_plan_touch_the_callers_model(monkeypatch):
    """The plan clears the outputs' declared shapes around its inference: on the API's own
    copy, never on the caller's model, which another thread may be reading meanwhile."""
    model = parse(_FLAT_DRAW)
    before = model.SerializeToString()
    seen = []
    real = onnx.shape_inference.infer_shapes

    def spy(m, *args, **kwargs):
        seen.append((m is model, model.SerializeToString() == before))
        return real(m, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", spy)
    onnxfix.rewrite(model, "input-noise", check=False)
    assert seen and all(not same_object and intact for same_object, intact in seen)
