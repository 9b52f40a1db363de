"""Issue 14's model kinds (fixtures/edge/, made by scripts/make_edge_fixtures.py), per fixture the
behaviour the issue demands.

The contract, for every fixture and every mode: the rewrite either passes onnxruntime's parity
check with real numbers, or stops with one clear `onnxfix: error:` line (exit 2 or 3) - never a
traceback, never a false "parity failed", never a skipped check that blames an original that runs.
Then the cases the issue names one by one: Loop-varying draws, float16 sampling over 50,257
classes, NaN outputs, 0-d noise, opset-6 Dropout, Loop trip dims, dead draws, local functions.

A case that fails today because another lane must fix it is marked
`xfail(strict=True, reason="needs <lane>: <what>")`; the marks go when that work is merged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, expose, full_check, run, session
from onnx.reference import ReferenceEvaluator
from typer.testing import CliRunner

import onnxfix
from onnxfix.cli import app
from onnxfix.ops import RANDOM_OP_TYPES

EDGE = FIXTURES / "edge"
EDGE_FILES = sorted(p.stem for p in EDGE.glob("*.onnx"))
MODES = ("input-noise", "constant", "deterministic")
RANDOM_OPS = set(RANDOM_OP_TYPES)
runner = CliRunner()


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(EDGE / f"{name}.onnx")


def _symbolic_input_dims(model: onnx.ModelProto) -> list[str]:
    return sorted({d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim
                   if d.dim_param})


def _all_nodes(model: onnx.ModelProto):
    def walk(nodes):
        for node in nodes:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g.node)
                for g in attr.graphs:
                    yield from walk(g.node)

    yield from walk(model.graph.node)
    for function in model.functions:
        yield from walk(function.node)


def _random_ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in _all_nodes(model) if n.op_type in RANDOM_OPS
            and not (n.op_type == "Dropout" and _inference_dropout(n, model))]


def _inference_dropout(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    is_test = {a.name: a.i for a in node.attribute}.get("is_test", 0)
    return (opset < 7 and is_test == 1) or 7 <= opset < 12


# -- the fixture set ---------------------------------------------------------------------------

KINDS = {  # issue 14's model kinds, each at least one committed fixture
    "vits_scales_ts", "vits_scales_dynamo", "ddpm_unrolled_ts", "ddpm_unrolled_dynamo",
    "ddim_unrolled_ts", "ddpm_loop_script", "ddim_loop_script", "topk_32k_ts", "topp_32k_ts",
    "multinomial_50k_fp16_ts", "multinomial_50k_fp32_ts", "autoregressive_loop_script",
    "gan_ts", "gan_dynamo", "stylegan_noise_ts", "stylegan_noise_dynamo", "bayesian_linear_ts",
    "bayesian_linear_dynamo", "mc_dropout_loop_script", "loop_varying_draw", "if_in_scan",
    "dropout_in_loop", "dropout_opset6_is_test0", "nan_outputs", "uniform_0d_paddle",
    "dropout_ratio_input", "dead_draw", "loop_trip_from_timesteps", "function_randn_like",
    "fp16_draw_to_fp32_ts", "old_random_normal_op6", "old_random_uniform_like_op7",
    "old_random_normal_like_op8", "old_random_uniform_op9", "old_multinomial_op7",
    "old_multinomial_op10", "old_dropout_op6_mask",
}


def test_every_kind_is_a_small_legal_fixture_listed_in_the_manifest():
    assert set(EDGE_FILES) == KINDS
    manifest = (EDGE / "MANIFEST.md").read_text()
    for name in EDGE_FILES:
        path = EDGE / f"{name}.onnx"
        assert path.stat().st_size < 3 * 1024 * 1024, name
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        assert _random_ops(model), f"{name} has no random node"
        row = next(line for line in manifest.splitlines() if f"`{name}.onnx`" in line)
        assert all(op in row for op in set(_random_ops(model))), row
    opsets = {next(o.version for o in _load(n).opset_import if o.domain == "") for n in KINDS}
    assert {6, 7, 8, 9, 10} <= opsets


# -- every fixture, every mode: passes the check or refuses with one clear line ----------------

@dataclass(frozen=True)
class Expect:
    """What a (fixture, mode) run may end as. `passes`: exit 0 with parity passed. `refusal`:
    a regex the one error line (exit 2/3) must match. `skip`: a regex a skipped check's reason
    must match (only where onnxruntime cannot run what is being compared). `lane`: who must
    fix it before this holds (strict xfail until then)."""

    passes: bool = True
    refusal: str | None = None
    skip: str | None = None
    lane: str | None = None


PASS = Expect()
TRIP_FROM_VALUE = Expect(passes=False, refusal=r"constant mode needs a concrete shape")
# onnxruntime has no kernels for some opset-6 ops (Dropout-6; Mul-6, Less-1, ...): the check
# cannot run that model, which is a skip with the reason - never a parity failure.
ORIGINAL_NO_KERNEL = Expect(skip=r"the original model does not load in onnxruntime.*"
                                 r"NOT_IMPLEMENTED")
NO_KERNEL = Expect(skip=r"^onnxruntime has no kernel for (Mul-6|Less-1|Greater-1) \(node "
                        r"'onnxfix_")

# Loops whose trip count is an input's value: their iteration axis is data-dependent, so the
# input-noise and constant runs take a bound (without one they refuse; see test_datadep).
TRIP_BOUNDS = {"autoregressive_loop_script": "noise_Multinomial_output_0:0=16",
               "mc_dropout_loop_script": "noise_Dropout_output_0:0=16"}

EXPECTED: dict[str, dict[str, Expect]] = {
    "ddpm_loop_script": {"constant": PASS},  # its iteration axis is timesteps' dim 'steps'

    # trip count Shape(alpha_bars)[0] - 1: a function of an input dim, not the dim itself
    "ddim_loop_script": {"constant": Expect(refusal=TRIP_FROM_VALUE.refusal)},
    "loop_trip_from_timesteps": {"constant": PASS},
    "dropout_opset6_is_test0": {"input-noise": ORIGINAL_NO_KERNEL, "constant": ORIGINAL_NO_KERNEL,
                                "deterministic": ORIGINAL_NO_KERNEL},
    "old_dropout_op6_mask": {"input-noise": ORIGINAL_NO_KERNEL, "constant": ORIGINAL_NO_KERNEL,
                             "deterministic": ORIGINAL_NO_KERNEL},
    "if_in_scan": {"input-noise": Expect(skip=r"^(?!.*the original model fails)"),
                   "constant": Expect(skip=r"^(?!.*the original model fails)")},
    "loop_varying_draw": {
        "input-noise": Expect(refusal=r"eps"),
        "constant": Expect(passes=False, refusal=r"eps.*(vari|chang|data-dependent)"),
        "deterministic": Expect(refusal=r"eps")},
    "old_random_normal_op6": {mode: NO_KERNEL for mode in MODES},
    **{vits: {"input-noise": Expect(passes=False, refusal=r"noise[-_]bound"),
              "constant": Expect(passes=False, refusal=r"data-dependent")}
       for vits in ("vits_scales_ts", "vits_scales_dynamo")},
}


def _expectation(name: str, mode: str) -> Expect:
    return EXPECTED.get(name, {}).get(mode, PASS)


def _cases():
    for name in EDGE_FILES:
        for mode in MODES:
            expect = _expectation(name, mode)
            marks = [pytest.mark.xfail(strict=True, reason=f"needs {expect.lane}")] \
                if expect.lane else []
            yield pytest.param(name, mode, expect, id=f"{name}-{mode}", marks=marks)


def _run_cli(name: str, mode: str, tmp_path: Path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    argv = ["rewrite", str(EDGE / f"{name}.onnx"), str(out), "--mode", mode,
            "--report", str(report), "--quiet"]
    if mode == "constant":
        for dim in _symbolic_input_dims(_load(name)):
            argv += ["--dim", f"{dim}=2"]
    if name in TRIP_BOUNDS and mode != "deterministic":
        argv += ["--noise-bound", TRIP_BOUNDS[name]]
    return runner.invoke(app, argv), out, report


@pytest.mark.parametrize(("name", "mode", "expect"), list(_cases()))
def test_rewrite_passes_the_check_or_refuses_with_one_line(name, mode, expect, tmp_path):
    result, out, report = _run_cli(name, mode, tmp_path)
    assert "Traceback" not in result.stderr and not (
        result.exception and not isinstance(result.exception, SystemExit)), result.exception
    if result.exit_code != 0:
        lines = result.stderr.splitlines()
        assert result.exit_code in (2, 3) and len(lines) == 1, (result.exit_code, lines)
        assert expect.refusal and re.search(expect.refusal, lines[0]), lines[0]
        assert not out.exists()
        return
    parity = json.loads(report.read_text())["parity"]
    if parity["status"] == "skipped" and expect.skip:
        assert re.search(expect.skip, parity["reason"]), parity["reason"]
    else:
        assert expect.passes and parity["status"] == "passed", parity
        assert all(o["passed"] for o in parity["outputs"])
    new = onnx.load(out)
    assert _random_ops(new) == []
    full_check(new)


# -- independent numbers: the original's own draws reproduce its outputs -----------------------

AFFINE_MAIN_GRAPH = ["bayesian_linear_ts", "bayesian_linear_dynamo", "gan_ts", "gan_dynamo",
                     "stylegan_noise_ts", "stylegan_noise_dynamo", "ddpm_unrolled_ts",
                     "ddpm_unrolled_dynamo", "ddim_unrolled_ts", "function_randn_like"]


def _feeds(model: onnx.ModelProto, size: int, rng) -> dict:
    feeds = {}
    for i in model.graph.input:
        t = i.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else size for d in t.shape.dim]
        feeds[i.name] = rng.standard_normal(shape).astype(
            onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
    return feeds


def _standardized(draw: onnx.NodeProto, value: np.ndarray) -> np.ndarray:
    attrs = {a.name: a.f for a in draw.attribute if a.type == onnx.AttributeProto.FLOAT}
    eps = (value.astype(np.float64) - attrs.get("mean", 0.0)) / attrs.get("scale", 1.0)
    return eps.astype(value.dtype)


@pytest.mark.parametrize("name", AFFINE_MAIN_GRAPH)
def test_input_noise_fed_the_originals_draws_reproduces_its_outputs(name, rng):
    model = _load(name)
    new, report = onnxfix.rewrite(model, "input-noise", check=False)
    inlined = onnx.inliner.inline_local_functions(model)
    draws = [n for n in inlined.graph.node if n.op_type == "RandomNormalLike"]
    assert len(draws) == len(report.nodes)
    noise_of = {r.output: r.replacement.name for r in report.nodes}
    captured = expose(inlined, [n.output[0] for n in draws])
    for size in (2, 5):
        feeds = _feeds(model, size, rng)
        want = run(captured, feeds)
        noise = {noise_of[d.output[0]]: _standardized(d, want[d.output[0]]) for d in draws}
        got = run(new, {**feeds, **noise})
        for out in model.graph.output:
            np.testing.assert_allclose(got[out.name], want[out.name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "feeds", "want"), [
    ("dropout_ratio_input", {"x": np.arange(8, dtype=np.float32).reshape(2, 4),
                             "ratio": np.array(0.3, np.float32)},
     {"y": np.arange(8, dtype=np.float32).reshape(2, 4)}),
    ("dropout_in_loop", {"x": np.arange(8, dtype=np.float32).reshape(2, 4)},
     {"acc": 4 * np.arange(8, dtype=np.float32).reshape(2, 4),
      "each": np.stack([np.arange(8, dtype=np.float32).reshape(2, 4)] * 3)}),
])
def test_deterministic_dropout_passes_the_data_through_unmasked(name, feeds, want):
    new, _ = onnxfix.rewrite(_load(name), "deterministic")
    got = run(new, feeds)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value)


# -- a draw whose shape changes between Loop iterations ----------------------------------------

def test_loop_varying_draw_gets_distinct_noise_per_element_or_a_clear_refusal():
    """v doubles each iteration: v' = [v + eps, v + eps + 1], eps ~ N(0, 1) shaped like v. With
    one draw per element, the 8 outputs are distinct; a draw broadcast over v repeats values."""
    try:
        new, _ = onnxfix.rewrite(_load("loop_varying_draw"), "input-noise", check=False)
    except onnxfix.OnnxfixError as exc:
        assert "eps" in str(exc) and "\n" not in str(exc)
        return
    noise = onnxfix.noise_feeds(new, seed=0)  # x is float[1]: nothing else to size
    (y,) = session(new).run(None, {"x": np.zeros(1, np.float32), **noise})
    assert y.shape == (8,) and len(np.unique(y)) == 8, y


# -- float16 sampling over a GPT-2 vocabulary --------------------------------------------------

SAMPLE_RUNS, SAMPLE_BATCH = 8, 64  # 8 runs x 64 rows x 4 samples = 2,048 samples


def _sampled_ids(new: onnx.ModelProto, dtype) -> np.ndarray:
    sess = session(new)
    logits = np.zeros((SAMPLE_BATCH, 50257), dtype)
    ids = [sess.run(None, {"logits": logits,
                           **onnxfix.noise_feeds(new, dims={"batch": SAMPLE_BATCH}, seed=run_)})[0]
           for run_ in range(SAMPLE_RUNS)]
    return np.concatenate(ids).ravel()


@pytest.mark.parametrize(("name", "noise_dtype"), [
    ("multinomial_50k_fp16_ts", "same"),
    ("multinomial_50k_fp32_ts", "float16"),
    ("multinomial_50k_fp32_ts", "same"),
])
def test_multinomial_over_50257_classes_samples_within_sampling_error(name, noise_dtype):
    """All-zero logits: every id has probability 1/50257, so P(id < 5000) = 9.95%. Over 2,048
    samples (fixed seeds: the verdict repeats) the fraction must be within 5 standard errors
    (+-3.3 points); float16 noise gave 97.9%. A clear refusal of the noise dtype is fine too."""
    model = _load(name)
    try:
        new, _ = onnxfix.rewrite(model, "input-noise", noise_dtype=noise_dtype, check=False)
    except onnxfix.OnnxfixError as exc:
        assert "float16" in str(exc) and "\n" not in str(exc)
        return
    dtype = onnx.helper.tensor_dtype_to_np_dtype(model.graph.input[0].type.tensor_type.elem_type)
    ids = _sampled_ids(new, dtype)
    assert ids.size == SAMPLE_RUNS * SAMPLE_BATCH * 4 and ids.min() >= 0 and ids.max() < 50257
    p = 5000 / 50257
    fraction = float(np.mean(ids < 5000))
    assert abs(fraction - p) < 5 * np.sqrt(p * (1 - p) / ids.size), fraction


# -- NaN, 0-d noise, opset-6 Dropout, Loop trip dims, dead draws, local functions --------------

def test_noise_feeds_on_0d_uniform_noise_returns_arrays_onnxruntime_accepts():
    new, report = onnxfix.rewrite(_load("uniform_0d_paddle"), "input-noise")
    assert report.parity.status == "passed"
    noise = onnxfix.noise_feeds(new, dims={"batch": 2}, seed=0)
    assert [type(v) for v in noise.values()] == [np.ndarray] and noise["noise_u"].shape == ()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = session(new).run(None, {"x": x, **noise})
    np.testing.assert_allclose(y, x * (-1.0 + 2.0 * noise["noise_u"]), rtol=1e-6)


@pytest.mark.parametrize("mode", ["input-noise", "constant"])
def test_opset6_dropout_rewrites_to_a_float_mask_the_checker_accepts(mode):
    model = _load("dropout_opset6_is_test0")
    new, _ = onnxfix.rewrite(model, mode, check=False)
    full_check(new)
    assert [o.type.tensor_type.elem_type for o in new.graph.output] == [onnx.TensorProto.FLOAT] * 2
    x = np.arange(1, 11, dtype=np.float32).reshape(2, 5)
    noise = onnxfix.noise_feeds(new, seed=0) if mode == "input-noise" else {}
    # onnxruntime has no opset-6 Less/Mul kernels: onnx's reference evaluator runs it
    y, mask = ReferenceEvaluator(new).run(None, {"x": x, **noise})
    got = {"y": y, "mask": mask}
    assert set(np.unique(got["mask"])) == {0.0, 1.0}
    np.testing.assert_allclose(got["y"], x * got["mask"] / 0.7, rtol=1e-6)


@pytest.mark.parametrize("name", ["loop_trip_from_timesteps", "ddpm_loop_script"])
def test_loop_trip_dim_is_named_after_timesteps_dim(name):
    new, report = onnxfix.rewrite(_load(name), "input-noise", check=False)
    in_loop = [r for r in report.nodes if "body" in r.graph]
    assert in_loop and all(r.replacement.shape[0] == "steps" for r in in_loop), \
        [r.replacement.shape for r in in_loop]
    noise = onnxfix.noise_feeds(new, dims={"steps": 3, "batch": 2}, seed=0)
    assert all(v.shape[0] == 3 for k, v in noise.items()
               if k in {r.replacement.name for r in in_loop})


def test_a_dead_draw_gets_no_noise_input():
    new, report = onnxfix.rewrite(_load("dead_draw"), "input-noise")
    assert [i.name for i in new.graph.input] == ["x", "noise_u"]
    assert report.new_inputs == ["noise_u"] and _random_ops(new) == []
    assert "unused" not in {o for n in new.graph.node for o in n.output}


def test_inspect_reads_a_draw_inside_a_local_function_as_valid():
    info = onnxfix.inspect(EDGE / "function_randn_like.onnx")
    assert [(n.op_type, n.graph) for n in info.nodes] == [("RandomNormalLike",
                                                          "function local::Noisy")]
    assert "invalid" not in info.nodes[0].dtype


@pytest.mark.parametrize("name", [
    "stylegan_noise_ts",
    "stylegan_noise_dynamo",
])
def test_stylegan_noise_is_feedable_from_the_input_dims_alone(name):
    new, _ = onnxfix.rewrite(_load(name), "input-noise", check=False)
    x = np.random.default_rng(0).standard_normal((3, 4, 4, 4)).astype(np.float32)
    noise = onnxfix.noise_feeds(new, dims={"batch": 3}, seed=0)
    assert sorted(v.shape for v in noise.values()) == [(3, 1, 4, 4), (3, 1, 8, 8), (3, 1, 16, 16)]
    (y,) = session(new).run(None, {"x": x, **noise})
    assert y.shape == (3, 4, 16, 16) and np.isfinite(y).all()
