"""The numbered small fixes of issue 8, each pinned by the model that showed it."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import onnx
import pytest
from conftest import FIXTURES, parse
from onnx import TensorProto
from typer.testing import CliRunner

import onnxfix
from onnxfix.check.tolerance import narrowest_float_on_paths, path_tolerances
from onnxfix.cli import app
from onnxfix.ops import OP_TABLE

MIXED = FIXTURES / "mixed_dynamic_ts.onnx"
MIXED_NODES = ("the random nodes are: '/RandomNormalLike' -> '/RandomNormalLike_output_0', "
               "'/RandomUniformLike' -> '/RandomUniformLike_output_0', '/Bernoulli' -> "
               "'/Bernoulli_output_0', '/Multinomial' -> 'idx'")


@pytest.mark.parametrize("flags, missed", [
    (["--only", "/Bernouli*"], "--only '/Bernouli*'"),
    (["--exclude", "idx_typo"], "--exclude 'idx_typo'"),
    (["--only", "idx", "--only", "nope", "--exclude", "zz"], "--only 'nope', --exclude 'zz'"),
])
def test_a_glob_matching_no_random_node_is_a_usage_error_listing_them(flags, missed,
                                                                       tmp_path: Path):
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(app, ["rewrite", str(MIXED), str(out), *flags])
    assert result.exit_code == 2
    assert result.stderr == (f"onnxfix: error: {missed} matches no random node (globs match "
                             f"node or output names); {MIXED_NODES}\n")
    assert not out.exists()


def test_the_api_raises_the_same_usage_error():
    with pytest.raises(onnxfix.UsageError, match=r"^only='x' matches no random node"):
        onnxfix.rewrite(MIXED, only=["x"], check=False)


def test_globs_on_a_model_without_random_nodes_still_copy_it(tmp_path: Path):
    clean = tmp_path / "clean.onnx"
    onnxfix.rewrite(MIXED, output=clean, check=False)
    _, report = onnxfix.rewrite(clean, only=["anything"])
    assert report.nodes == [] and report.parity.reason == "the model has no random nodes"


INLINED_ONLY_FUNCTION = """
<ir_version: 8, opset_import: ["" : 17, "local" : 1, "com.unused": 1]>
g (float[N] x) => (float[N] y) {
  y = local.noisy<s=2.0>(x)
}
<domain: "local", opset_import: ["" : 17]>
noisy <s> (x) => (y) {
  r = RandomNormalLike<scale: float = @s>(x)
  y = Add(x, r)
}
"""


@pytest.mark.parametrize("mode", ["input-noise", "constant", "deterministic"])
def test_an_inlined_functions_domain_is_no_longer_imported(mode):
    model = parse(INLINED_ONLY_FUNCTION)
    out, report = onnxfix.rewrite(model, mode, dims={"N": 3})
    # OpenVINO refuses a model importing a domain it does not know, even an unused one
    assert [(i.domain, i.version) for i in out.opset_import] == [("", 17), ("com.unused", 1)]
    assert out.ir_version == 8 and len(out.functions) == 0
    assert report.parity.status == "passed"


def test_a_function_still_called_keeps_its_domain():
    model = parse(INLINED_ONLY_FUNCTION.replace(
        "  y = local.noisy<s=2.0>(x)\n", "  a = local.noisy<s=2.0>(x)\n  y = local.plain(a)\n")
        + '<domain: "local", opset_import: ["" : 17]>\nplain (x) => (y) {\n  y = Relu(x)\n}\n')
    out, _ = onnxfix.rewrite(model, "input-noise")
    assert [i.domain for i in out.opset_import] == ["", "local", "com.unused"]
    assert [f.name for f in out.functions] == ["plain"]


def _zip_checkpoint(path: Path) -> None:
    """What torch.save writes since PyTorch 1.6: a zip holding <name>/data.pkl."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/data.pkl", pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
        z.writestr("model/version", "3\n")


def _legacy_checkpoint(path: Path) -> None:
    """Before PyTorch 1.6: a bare pickle (0x80, then the protocol number)."""
    path.write_bytes(pickle.dumps({"state_dict": {"w": [0.5]}}, protocol=2))


@pytest.mark.parametrize("command", ["rewrite", "inspect"])
@pytest.mark.parametrize("make", [_zip_checkpoint, _legacy_checkpoint])
def test_a_pytorch_checkpoint_named_onnx_gets_one_clear_line(make, command, tmp_path: Path):
    src = tmp_path / "model.onnx"
    make(src)
    args = [command, str(src)] + ([str(tmp_path / "out.onnx")] if command == "rewrite" else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3
    assert result.stderr == (f"onnxfix: error: {src} is a PyTorch checkpoint, not an ONNX "
                             f"model; export it with torch.onnx.export\n")
    assert not (tmp_path / "out.onnx").exists()


def test_other_zips_are_still_just_not_onnx(tmp_path: Path):
    src = tmp_path / "model.onnx"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(onnxfix.ModelError, match=r"not a valid ONNX protobuf"):
        onnxfix.inspect(src)


def test_the_folder_tally_counts_passed_skipped_and_failed_apart(tmp_path: Path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(FIXTURES / "ref1_static_ts.onnx", src / "a_checked.onnx")
    onnx.save(parse(NO_CHECK_POSSIBLE), src / "b_skipped.onnx")
    (src / "c_broken.onnx").write_bytes(b"\x00garbage")
    result = CliRunner().invoke(app, ["rewrite", str(src), str(tmp_path / "out")])
    assert result.exit_code == 3
    assert result.output.splitlines()[-1] == (
        "3 model(s): 2 rewritten (1 checked and passed, 1 check skipped), 1 failed")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_checked.onnx",
                                                                    "b_skipped.onnx"]


# onnxruntime aborts on scale = 0, so the check is skipped (and says why)
NO_CHECK_POSSIBLE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) {
  r = RandomNormalLike<scale=0.0>(x)
  y = Add(x, r)
}
"""


# (mu.half() + randn_like(mu.half()) * s).float(), plus an output no draw reaches
HALF_DRAW_FLOAT_OUTPUT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,64] mu, float[batch,64] s) => (float[batch,64] y, float[batch,64] w) {
  mu16 = Cast<to=10>(mu)
  s16 = Cast<to=10>(s)
  eps = RandomNormalLike(mu16)
  t = Mul(eps, s16)
  z = Add(mu16, t)
  y = Cast<to=1>(z)
  w = Cast<to=1>(mu16)
}
"""


def test_the_narrowest_float_on_the_path_from_a_draw_is_found():
    narrow = narrowest_float_on_paths(parse(HALF_DRAW_FLOAT_OUTPUT), ["eps"])
    assert narrow == {
        "eps": TensorProto.FLOAT16, "t": TensorProto.FLOAT16, "z": TensorProto.FLOAT16,
        "y": TensorProto.FLOAT16}
    assert path_tolerances(parse(HALF_DRAW_FLOAT_OUTPUT), ["eps"], ["y", "w"]) == {
        "y": (1e-3, 1e-3, "float16")}


@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_a_float16_draw_in_a_float32_output_is_compared_at_float16_tolerance(mode):
    # onnxruntime drops the Cast pairs around its float32-only kernels, so the original runs
    # the float16 chain in float32: ~5e-4-1e-3 off a float32 tolerance of 1e-5
    _, report = onnxfix.rewrite(parse(HALF_DRAW_FLOAT_OUTPUT), mode, dims={"batch": 3})
    assert report.parity.status == "passed"
    y = next(c for c in report.parity.outputs if c.name == "y")
    assert y.note == "float16 tolerance: a float16 tensor lies between a draw and it"
    assert 1e-5 < y.max_abs_err < 5e-3  # what the float32 tolerance refused before
    w = next(c for c in report.parity.outputs if c.name == "w")
    assert w.note == "" and w.max_abs_err == 0.0


def test_user_tolerances_still_win_over_the_path_default():
    with pytest.raises(onnxfix.ParityError):
        onnxfix.rewrite(parse(HALF_DRAW_FLOAT_OUTPUT), "input-noise", atol=1e-6, rtol=1e-6)


def _if_in_loop(go: str, trips: str = "trips = Constant<value=int64 {4}>()",
                inputs: str = "float[batch,3] x") -> onnx.ModelProto:
    """A Loop whose body draws only in one branch of an If (decided by `go`)."""
    return parse(f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g ({inputs}) => (float[batch,3] acc) {{
      {trips}
      cond = Constant<value=bool {{1}}>()
      acc = Loop (trips, cond, x) <
        body = b (int64 i, bool c_in, float[batch,3] a_in) => (bool c_out,
                                                               float[batch,3] a_out) {{
          c_out = Identity(c_in)
          two = Constant<value=int64 {{2}}>()
          m = Mod(i, two)
          zero = Constant<value=int64 {{0}}>()
          {go}
          a_out = If (go) <
            then_branch = t () => (float[batch,3] ty) {{
              r = RandomNormalLike<mean=1.0, scale=0.5>(a_in)
              ty = Add(a_in, r)
            }},
            else_branch = e () => (float[batch,3] ey) {{
              ey = Sin(a_in)
            }}
          >
        }}
      >
    }}""")


@pytest.mark.parametrize("go", ["go = Equal(m, zero)",             # every other iteration
                                "go = Constant<value=bool {0}>()",  # never (was: rank 2 != 3)
                                "go = Constant<value=bool {1}>()"])  # always
@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_a_draw_under_an_if_inside_a_loop_is_checked_exactly(go, mode):
    _, report = onnxfix.rewrite(_if_in_loop(go), mode, dims={"batch": 2})
    assert report.parity.status == "passed", report.parity.reason
    assert [(c.name, c.passed, c.max_abs_err) for c in report.parity.outputs][0] == (
        "acc", True, 0.0)


def test_a_dynamic_trip_count_under_an_if_is_checked_at_two_sizes():
    model = _if_in_loop("go = Equal(m, zero)", trips="", inputs="int64 trips, float[batch,3] x")
    # the trip count is input `trips`' value: its iteration axis takes a bound
    _, report = onnxfix.rewrite(model, "input-noise", noise_bounds={"noise_r:0": 16})
    assert report.parity.status == "passed", report.parity.reason
    assert [c.name for c in report.parity.outputs] == ["acc", "acc"]


def test_a_wrong_transform_under_an_if_in_a_loop_fails(monkeypatch):
    spec = OP_TABLE["RandomNormalLike"]
    real = type(spec).transform

    def off_by_one(self, b, noise, output, attrs, dtype):
        real(self, b, noise, output, {**attrs, "mean": attrs.get("mean", 0.0) + 1.0}, dtype)

    monkeypatch.setattr(type(spec), "transform", off_by_one)
    with pytest.raises(onnxfix.ParityError, match="parity check failed"):
        onnxfix.rewrite(_if_in_loop("go = Equal(m, zero)"), "input-noise")


NESTED_LOOPS_IF_BERNOULLI = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] acc) {
  n = Constant<value=int64 {3}>()
  cond = Constant<value=bool {1}>()
  acc = Loop (n, cond, x) <
    body = ob (int64 i, bool c_in, float[2,3] a_in) => (bool c_out, float[2,3] a_out) {
      c_out = Identity(c_in)
      k = Constant<value=int64 {2}>()
      a_out = Loop (k, c_in, a_in) <
        body = ib (int64 j, bool d_in, float[2,3] b_in) => (bool d_out, float[2,3] b_out) {
          d_out = Identity(d_in)
          ij = Add(i, j)
          two = Constant<value=int64 {2}>()
          odd = Mod(ij, two)
          one = Constant<value=int64 {1}>()
          go = Equal(odd, one)
          b_out = If (go) <
            then_branch = t () => (float[2,3] ty) {
              p = Sigmoid(b_in)
              r = Bernoulli(p)
              ty = Add(b_in, r)
            },
            else_branch = e () => (float[2,3] ey) {
              ey = Neg(b_in)
            }
          >
        }
      >
    }
  >
}
"""


@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_a_bernoulli_under_an_if_in_nested_loops_is_checked(mode):
    # its probability is captured the same way, only in the iterations that drew
    _, report = onnxfix.rewrite(parse(NESTED_LOOPS_IF_BERNOULLI), mode)
    assert report.parity.status == "passed", report.parity.reason
    assert report.parity.outputs[0].name == "acc" and report.parity.outputs[0].max_abs_err == 0


def test_the_cli_writes_an_if_in_loop_model_that_never_takes_the_branch(tmp_path: Path):
    # the report: "Invalid rank for input: noise_r Got: 2 Expected: 3", exit 1
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(_if_in_loop("go = Constant<value=bool {0}>()"), src)
    result = CliRunner().invoke(app, ["rewrite", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert "Parity: PASSED (2/2 comparisons at batch=2; batch=3)" in result.output
    assert out.exists()
