"""The parity check is safe and realistic: caps, limits, real inputs, honest skips and blame.

A runaway model must end as `skipped` (never a killed process), a skip must say what it means
and can be made to fail, real inputs replace synthetic ones, synthetic ones look real, and a
failure of onnxfix's own check models is never blamed on the user's original.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import parse
from typer.testing import CliRunner

import onnxfix
import onnxfix.check.check_guard
import onnxfix.check.conditional
import onnxfix.report
from onnxfix import ParityError
from onnxfix.check.check_guard import CheckLimits, run_guarded
from onnxfix.check.check_setup import CheckSetup
from onnxfix.check.compare import synthetic_feeds
from onnxfix.check.input_roles import Role, input_roles
from onnxfix.check.parity import check_parity
from onnxfix.cli import app
from onnxfix.rewrite import rewrite_model

runner = CliRunner()
MODES = ["input-noise", "constant", "deterministic"]
HINT = "give real inputs with --check-inputs FILE.npz"


def _with_scalar_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The text parser leaves `int64 n` without a shape; declare it a scalar."""
    for vi in model.graph.input:
        if not vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.shape.SetInParent()
    onnx.checker.check_model(model, full_check=True)
    return model


# A Range whose length is an input value times 1e9: gigabytes whatever the value.
RUNAWAY_RANGE = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64 n, float[2] x) => (float[L] y, float[2] z) {
  big = Constant<value=int64 {1000000000}>()
  m = Mul(n, big)
  zero = Constant<value=int64 {0}>()
  one = Constant<value=int64 {1}>()
  r = Range(zero, m, one)
  rf = Cast<to=1>(r)
  y = Relu(rf)
  z = RandomNormalLike(x)
}"""

# A Loop of 4e9 iterations: the check would run for hours.
ENDLESS_LOOP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y) {
  trip = Constant<value=int64 {4000000000}>()
  cond = Constant<value=bool {1}>()
  y = Loop(trip, cond, x) <body = b (int64 i, bool c, float[2] s) => (bool co, float[2] so) {
    co = Identity(c)
    so = RandomNormalLike(s)
  }>
}"""

# onnxruntime has no kernel for the custom op: the original cannot load.
UNLOADABLE = """
<ir_version: 8, opset_import: ["" : 17, "custom.example" : 1]>
g (float[4] x) => (float[4] y) {
  r = RandomUniformLike(x)
  t = custom.example.Twice(r)
  y = Add(x, t)
}"""

DYNAMIC = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[batch,10] x) => (float[batch,10] y) {
  r = RandomNormalLike<mean=2.0, scale=0.5>(x)
  y = Add(x, r)
}"""


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _runaway(tmp_path: Path) -> Path:
    return _save(_with_scalar_inputs(onnx.parser.parse_model(RUNAWAY_RANGE)),
                 tmp_path / "runaway.onnx")


def _no_child_left() -> None:
    """The check's process is gone (killed or ended, and reaped); this one lives on."""
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


# -- memory cap and time limit ---------------------------------------------------------------

def test_a_runaway_range_is_skipped_under_the_memory_cap_not_killed():
    model = _with_scalar_inputs(onnx.parser.parse_model(RUNAWAY_RANGE))
    _, report = onnxfix.rewrite(model, "input-noise", check_memory_mb=256)
    p = report.parity
    assert p.status == "skipped"
    assert p.reason.startswith("the check ran out of memory under its cap of 256 MiB "
                               "(--check-memory-mb): onnxruntime could not allocate ")
    assert p.reason.endswith(f"bytes for a Range node; {HINT}")
    assert "not verified" in p.note
    _no_child_left()


def test_runaway_cli_writes_the_output_exits_0_and_warns(tmp_path):
    out, rep = tmp_path / "out.onnx", tmp_path / "rep.json"
    result = runner.invoke(app, ["rewrite", str(_runaway(tmp_path)), str(out),
                                 "--check-memory-mb", "256", "--report", str(rep)])
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "Parity: SKIPPED (the check ran out of memory under its cap of 256 MiB" in result.stdout
    assert result.stderr == ("onnxfix: warning: parity check skipped: the output was written "
                             "but not verified (--fail-on-skip makes a skip fail)\n")
    parity = json.loads(rep.read_text())["parity"]
    assert parity["status"] == "skipped" and HINT in parity["reason"]
    assert parity["note"].startswith("the rewrite was written but not verified")


def test_given_inputs_that_ask_too_much_memory_are_skipped_with_their_own_hint():
    model = _with_scalar_inputs(onnx.parser.parse_model(RUNAWAY_RANGE))
    feeds = {"n": np.array(5, np.int64), "x": np.zeros(2, np.float32)}
    _, report = onnxfix.rewrite(model, "input-noise", check_memory_mb=256, check_inputs=feeds)
    assert report.parity.status == "skipped"
    assert "could not allocate 40,000,000,000 bytes for a Range node" in report.parity.reason
    assert report.parity.reason.endswith(
        "raise --check-memory-mb / --check-timeout, or give smaller inputs")


def test_an_endless_loop_is_skipped_at_the_time_limit(tmp_path):
    src = _save(onnx.parser.parse_model(ENDLESS_LOOP), tmp_path / "loop.onnx")
    out = tmp_path / "out.onnx"
    result = runner.invoke(app, ["rewrite", str(src), str(out), "--check-timeout", "1.5"])
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert (f"Parity: SKIPPED (the check took longer than its time limit of 1.5 s "
            f"(--check-timeout); {HINT})") in result.stdout
    _no_child_left()


def test_a_check_process_that_dies_is_a_skip_with_how_it_ended():
    limits = CheckLimits(memory_bytes=2**30, timeout_s=60)
    lines = []
    p = run_guarded(lambda emit: os.abort(), limits, lines.append)
    assert p.status == "skipped"
    assert p.reason == ("the check's process ended abnormally (signal 6; memory cap 1024 MiB, "
                        f"--check-memory-mb); {HINT}")
    assert lines == [f"SKIPPED | {p.reason}"]
    _no_child_left()


def test_an_error_in_the_check_process_reaches_the_caller_and_lines_arrive_in_order():
    def check(emit):
        emit("first")
        emit("second")
        raise onnxfix.ModelError("a model error raised in the check")

    lines = []
    with pytest.raises(onnxfix.ModelError, match="a model error raised in the check"):
        run_guarded(check, CheckLimits(memory_bytes=2**30, timeout_s=60), lines.append)
    assert lines == ["first", "second"]
    _no_child_left()


@pytest.mark.parametrize("flag,value,message", [
    ("--check-memory-mb", "10", "--check-memory-mb 10.0: must be a number of MiB, at least 64"),
    ("--check-timeout", "0", "--check-timeout 0.0: must be a positive number of seconds"),
])
def test_bad_limits_are_usage_errors(tmp_path, flag, value, message):
    result = runner.invoke(app, ["rewrite", str(_save(parse(DYNAMIC), tmp_path / "m.onnx")),
                                 str(tmp_path / "o.onnx"), flag, value])
    assert result.exit_code == 2
    assert result.stderr == f"onnxfix: error: {message}\n"


# -- skipped semantics -----------------------------------------------------------------------

def test_fail_on_skip_fails_and_writes_nothing(tmp_path):
    out = tmp_path / "out.onnx"
    result = runner.invoke(app, ["rewrite", str(_runaway(tmp_path)), str(out),
                                 "--check-memory-mb", "256", "--fail-on-skip"])
    assert result.exit_code == 1
    assert not out.exists()
    assert result.stderr.startswith("onnxfix: error: parity check skipped and fail_on_skip is "
                                    "set: the check ran out of memory")
    assert result.stderr.endswith(f"({out} not written)\n")


def test_fail_on_skip_in_the_api_raises_parity_error():
    model = _with_scalar_inputs(onnx.parser.parse_model(RUNAWAY_RANGE))
    with pytest.raises(ParityError) as e:
        onnxfix.rewrite(model, "input-noise", check_memory_mb=256, fail_on_skip=True)
    assert e.value.exit_code == 1 and e.value.report.parity.status == "skipped"


def test_fail_on_skip_with_no_check_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["rewrite", str(_save(parse(DYNAMIC), tmp_path / "m.onnx")),
                                 str(tmp_path / "o.onnx"), "--no-check", "--fail-on-skip"])
    assert result.exit_code == 2
    assert result.stderr == ("onnxfix: error: --fail-on-skip with --no-check: a check that is "
                             "not run would always fail\n")


def test_folder_mode_counts_a_skipped_check_apart(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _save(parse(DYNAMIC), src / "a_good.onnx")
    _runaway(src)
    result = runner.invoke(app, ["rewrite", str(src), str(tmp_path / "out"),
                                 "--check-memory-mb", "256"])
    assert result.exit_code == 0, result.output
    assert "2 model(s): 2 rewritten (1 checked and passed, 1 check skipped), 0 failed" \
        in result.stdout
    assert (tmp_path / "out" / "runaway.onnx").exists()


# -- item 6 of issue 8: an original onnxruntime cannot load is a skip in every mode ----------

@pytest.mark.parametrize("mode", MODES)
def test_an_original_that_does_not_load_is_skipped_in_every_mode(mode):
    _, report = onnxfix.rewrite(parse(UNLOADABLE), mode)
    assert report.parity.status == "skipped"
    assert report.parity.reason.startswith(
        "the original model does not load in onnxruntime: [ONNXRuntimeError] : 1 : FAIL : "
        "Fatal error: custom.example:Twice(-1) is not a registered function/op")


def test_deterministic_cli_on_an_unloadable_original_exits_0(tmp_path):
    out = tmp_path / "out.onnx"
    result = runner.invoke(app, ["rewrite", str(_save(parse(UNLOADABLE), tmp_path / "m.onnx")),
                                 str(out), "--mode", "deterministic"])
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "Parity: SKIPPED (the original model does not load in onnxruntime" in result.stdout


# -- issue 14: the check blames the right model ----------------------------------------------

def _broken_capture(monkeypatch, *nodes: onnx.NodeProto):
    """The check's capture model gets `nodes`, the last one's output exposed."""
    real = onnxfix.check.conditional.capture_model

    def capture(base, records, facts=None):
        captures, model, *rest = real(base, records, facts)
        model.graph.node.extend(nodes)
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(nodes[-1].output[0], 1, None))
        return (captures, model, *rest)

    monkeypatch.setattr(onnxfix.check.conditional, "capture_model", capture)


@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_a_capture_model_that_fails_at_run_time_is_onnxfix_s_problem(monkeypatch, mode):
    shape = onnx.helper.make_node("Constant", [], ["bad_shape"],
                                  value=onnx.helper.make_tensor("s", 7, [1], [7]))
    _broken_capture(monkeypatch, shape,
                    onnx.helper.make_node("Reshape", ["x", "bad_shape"], ["bad"]))
    _, report = onnxfix.rewrite(parse(DYNAMIC), mode, dims={"batch": 2})
    reason = report.parity.reason
    assert report.parity.status == "skipped"
    assert reason.startswith("internal: the capture model (the original with its draws "
                             "exposed as outputs) fails on synthetic inputs the original runs "
                             "(static shapes): ")
    assert "the original model fails" not in reason


def test_a_capture_model_that_does_not_load_is_onnxfix_s_problem(monkeypatch):
    _broken_capture(monkeypatch, onnx.helper.make_node("Twice", ["x"], ["bad"],
                                                       domain="custom.example"))
    _, report = onnxfix.rewrite(parse(DYNAMIC), "input-noise")
    assert report.parity.status == "skipped"
    assert report.parity.reason.startswith(
        "internal: the capture model (the original with its draws exposed as outputs) does "
        "not load in onnxruntime, though the original does: ")


def test_an_input_noise_twin_that_does_not_load_is_onnxfix_s_problem(monkeypatch):
    import onnxfix.api as api_module  # the API emits the twin from its plan

    real = api_module.apply_plan

    def broken_twin(original, model_plan, mode, **kwargs):
        twin, records = real(original, model_plan, mode, **kwargs)
        if mode == "input-noise":
            twin.graph.node.append(onnx.helper.make_node("Twice", ["x"], ["bad"],
                                                         domain="custom.example"))
        return twin, records

    monkeypatch.setattr(api_module, "apply_plan", broken_twin)
    _, report = onnxfix.rewrite(parse(DYNAMIC), "deterministic")
    assert report.parity.status == "skipped"
    assert report.parity.reason.startswith(
        "internal: the input-noise twin the check compares with does not load in onnxruntime: ")


# -- real inputs (--check-inputs) ------------------------------------------------------------

def test_given_inputs_run_once_at_their_own_sizes():
    x = np.random.default_rng(0).standard_normal((5, 10)).astype(np.float32)
    _, report = onnxfix.rewrite(parse(DYNAMIC), "input-noise", check_inputs={"x": x})
    p = report.parity
    assert p.status == "passed"
    assert p.sizes == [{"batch": 5}]
    assert p.inputs == {"x": "given [5, 10]"}
    assert [(c.name, c.shape) for c in p.outputs] == [("y", [5, 10]), ("r", [5, 10])]


@pytest.mark.parametrize("mode", ["constant", "deterministic"])
def test_given_inputs_drive_the_twin_check_too(mode):
    x = np.ones((4, 10), np.float32)
    dims = {"batch": 4} if mode == "constant" else None
    _, report = onnxfix.rewrite(parse(DYNAMIC), mode, dims=dims, check_inputs={"x": x})
    assert report.parity.status == "passed"
    assert all(c.shape == [4, 10] for c in report.parity.outputs)


def test_check_inputs_from_an_npz_file_on_the_command_line(tmp_path):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, x=np.zeros((3, 10), np.float32))
    result = runner.invoke(app, ["rewrite", str(_save(parse(DYNAMIC), tmp_path / "m.onnx")),
                                 str(tmp_path / "o.onnx"), "--check-inputs", str(npz)])
    assert result.exit_code == 0, result.output
    assert "Parity: PASSED (2/2 comparisons at batch=3)" in result.stdout


@pytest.mark.parametrize("arrays,message", [
    ({"x": np.zeros((3, 10), np.float64)},
     "input 'x' is float64, the model wants float32"),
    ({"x": np.zeros((3, 10, 1), np.float32)},
     "input 'x' has rank 3 [3, 10, 1], the model wants rank 2"),
    ({"x": np.zeros((3, 9), np.float32)}, "input 'x' has [3, 9]; its dim 1 must be 10"),
    ({"x": np.zeros((3, 10), np.float32), "y": np.zeros(1)},
     "'y' is not an input of the model (its inputs: x)"),
    ({"z": np.zeros(1)}, "'z' is not an input of the model (its inputs: x)"),
    ({}, "no array for input 'x'"),
])
def test_bad_check_inputs_are_one_usage_error(tmp_path, arrays, message):
    npz = tmp_path / "inputs.npz"
    np.savez(npz, **arrays)
    out = tmp_path / "o.onnx"
    result = runner.invoke(app, ["rewrite", str(_save(parse(DYNAMIC), tmp_path / "m.onnx")),
                                 str(out), "--check-inputs", str(npz)])
    assert result.exit_code == 2
    assert result.stderr == f"onnxfix: error: --check-inputs {npz}: {message}\n"
    assert not out.exists()


def test_check_inputs_that_are_not_an_npz_file(tmp_path):
    bad = tmp_path / "inputs.npz"
    bad.write_text("not a zip")
    model = _save(parse(DYNAMIC), tmp_path / "m.onnx")
    for path, message in [(bad, "cannot be read as an .npz archive"),
                          (tmp_path / "missing.npz", "no such file")]:
        result = runner.invoke(app, ["rewrite", str(model), str(tmp_path / "o.onnx"),
                                     "--check-inputs", str(path)])
        assert result.exit_code == 2
        assert result.stderr.startswith(f"onnxfix: error: --check-inputs {path}: {message}")
        assert len(result.stderr.splitlines()) == 1


def test_check_inputs_must_agree_with_fixed_dims():
    with pytest.raises(onnxfix.UsageError) as e:
        onnxfix.rewrite(parse(DYNAMIC), "constant", dims={"batch": 2},
                        check_inputs={"x": np.zeros((3, 10), np.float32)})
    assert str(e.value) == "check_inputs: dim 'batch' is 3 in the inputs but dims={'batch': 2}"


# -- honest sizes ----------------------------------------------------------------------------

def test_the_second_size_is_dropped_when_the_first_was_costly(monkeypatch):
    import onnxfix.check.check_setup as check_setup

    monkeypatch.setattr(check_setup, "_peak_rss", lambda reset=False: 0 if reset else 2**30)
    model = parse(DYNAMIC)
    new, records = rewrite_model(model, "input-noise")
    lines = []
    setup = CheckSetup(limits=CheckLimits(memory_bytes=2**31, timeout_s=300))
    p = check_parity(model, new, records, "input-noise", size=1, reporter=lines.append,
                     setup=setup)
    assert p.status == "passed" and p.sizes == [{"batch": 1}]
    assert ("NOTE | the check did not run again at size 2: the first size took 1024 MiB, over "
            "a quarter of the memory cap (2048 MiB)") in lines


def test_a_cheap_first_size_runs_the_second_size_too():
    _, report = onnxfix.rewrite(parse(DYNAMIC), "input-noise", check_size=1)
    assert report.parity.sizes == [{"batch": 1}, {"batch": 2}]


# -- realistic synthetic inputs --------------------------------------------------------------

ROLES = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[b,s] input_ids, int64[b,s] attention_mask, int64 steps, float ratio, bool train,
   float[b,s] p, int32[b,s] keep, float[b,s] h, float[3] scales, int64[b] input_lengths)
   => (float[b,s,4] y, float[b,s] z, int64[L] q, float[b,s] k, float[3] w, int64[b] n) {
  table = Constant<value=float[3,4] {1,2,3,4,5,6,7,8,9,10,11,12}>()
  ids = Cast<to=7>(input_ids)
  e = Gather(table, ids)
  y = Dropout(e, ratio, train)
  z = Bernoulli(p)
  zero = Constant<value=int64 {0}>()
  one = Constant<value=int64 {1}>()
  q = Range(zero, steps, one)
  kf = Cast<to=1>(keep)
  k = Mul(h, kf)
  w = Identity(scales)
  n = Identity(input_lengths)
}"""


def test_input_roles_are_read_from_how_the_graph_uses_each_input():
    roles = input_roles(_with_scalar_inputs(onnx.parser.parse_model(ROLES)))
    assert {n: r.role for n, r in roles.items()} == {
        "input_ids": Role.IDS, "attention_mask": Role.MASK, "steps": Role.COUNT,
        "ratio": Role.PROBABILITY, "train": Role.SWITCH, "p": Role.PROBABILITY,
        "keep": Role.MASK, "h": Role.PLAIN, "scales": Role.SCALE, "input_lengths": Role.COUNT}
    assert roles["input_ids"].rows == 3


def test_synthetic_inputs_follow_their_roles():
    model = _with_scalar_inputs(onnx.parser.parse_model(ROLES))
    roles = input_roles(model)
    sess = onnxfix.check.compare.make_session(model)
    feeds = synthetic_feeds(sess.get_inputs(), 8, np.random.default_rng(0), roles=roles)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.min() >= 0 and ids.max() == 2  # rows of the table: 3, not the size 8
    assert set(np.unique(mask)) == {0, 1}
    assert mask[0].all() and (mask.sum(axis=1) >= 4).all()  # the first row full, others half
    assert 1 <= int(feeds["steps"]) <= 8
    assert 0 <= float(feeds["ratio"]) < 1 and bool(feeds["train"]) is True
    assert ((feeds["p"] >= 0) & (feeds["p"] < 1)).all()
    assert set(np.unique(feeds["keep"])) <= {0, 1}
    assert ((feeds["scales"] >= 0.5) & (feeds["scales"] < 1.5)).all()
    assert ((feeds["input_lengths"] >= 1) & (feeds["input_lengths"] <= 8)).all()


def test_a_dropout_ratio_graph_input_is_checked_not_skipped():
    model = _with_scalar_inputs(onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[batch,4] x, float ratio, bool training) => (float[batch,4] y) {
      y = Dropout(x, ratio, training)
    }"""))
    for mode in MODES:
        dims = {"batch": 2} if mode == "constant" else None
        _, report = onnxfix.rewrite(model, mode, dims=dims)
        assert report.parity.status == "passed", (mode, report.parity.reason)
        assert report.parity.inputs["ratio"] == "probability in [0, 1)"


def test_ids_index_within_their_table_at_any_check_size():
    model = parse("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[b] ids) => (float[b,2] y) {
      table = Constant<value=float[3,2] {1,2,3,4,5,6}>()
      e = Gather(table, ids)
      y = RandomNormalLike(e)
    }""")
    _, report = onnxfix.rewrite(model, "input-noise", check_size=9)
    assert report.parity.status == "passed"
    assert report.parity.inputs == {"ids": "ids in [0, 3)"}
