"""A real deployment runtime: OpenVINO (CPU) on the originals and on the rewritten models.

Optional group: every test here is skipped unless `openvino` is installed
(`pip install -e '.[targets]'`, which CI does). Measured with openvino 2026.4.1 on CPU:

- the original either fails to convert (`read_model` raises: Bernoulli has no conversion rule,
  training-mode Dropout is refused, RandomUniform with a double dtype fails validation), or it
  converts and every run draws again (RandomNormal(Like), RandomUniform(Like)), or, for
  Multinomial alone, it converts and returns the same samples on every run, compile and process
  (a fixed internal seed the caller cannot choose);
- the rewritten model (both modes) compiles, repeated runs and a second compilation give
  identical outputs, the noise inputs drive the sample, and the outputs match onnxruntime on the
  same inputs and noise.

Precision: OpenVINO's CPU plugin runs float32 graphs in bfloat16 by default on processors with
bf16 support (AVX512-BF16/AMX), which costs up to ~1e-2 against onnxruntime. The parity runs set
INFERENCE_PRECISION_HINT=f32; then the measured max abs difference is <= 5e-7 for float32 outputs
(tolerance 1e-4 abs + 1e-4 rel), 4.9e-4 for float16 outputs (one fp16 step of an intermediate
near 0.5-1: onnxruntime rounds each fp16 intermediate, OpenVINO computes in f32 and rounds once;
tolerance 2e-3 abs + 2e-3 rel),
3e-8 for float64 outputs (OpenVINO's CPU plugin computes f64 in f32; float32 tolerance), and 0 for
integer outputs (Multinomial samples by inverse CDF): those must be exact. With the default
precision the runs are still checked to be deterministic.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import FIXTURES, REAL_MODELS

import onnxfix

ov = pytest.importorskip("openvino")

F32 = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}

# What OpenVINO does with each ORIGINAL model (measured; see the module docstring).
VARIES = "runs, and every run draws again"
FIXED = "runs, from an internal seed the caller cannot set"


def _rejects(message: str) -> tuple[str, str]:
    return ("rejects", message)


NO_BERNOULLI = "No conversion rule found for operations: Bernoulli-{}"
NO_TRAINING_DROPOUT = "Training mode is not supported for Dropout op"
NO_DOUBLE_UNIFORM = "'min_val' and 'max_val' should have the same type as 'out_type' attribute"

FIXTURE_ORIGINAL = {
    "bernoulli_dynamic_ts.onnx": _rejects(NO_BERNOULLI.format(17)),
    "bernoulli_dynamic_dynamo.onnx": _rejects(NO_BERNOULLI.format(18)),
    "mixed_dynamic_ts.onnx": _rejects(NO_BERNOULLI.format(17)),
    "mixed_dynamic_dynamo.onnx": _rejects(NO_BERNOULLI.format(18)),
    "dropout_train_dynamic_ts.onnx": _rejects(NO_TRAINING_DROPOUT),
    "dropout_train_dynamic_dynamo.onnx": _rejects(NO_TRAINING_DROPOUT),
    "multinomial_dynamic_ts.onnx": FIXED,
    "multinomial_dynamic_dynamo.onnx": FIXED,
    "multinomial3_dynamic_ts.onnx": FIXED,
    "multinomial3_dynamic_dynamo.onnx": FIXED,
    **{f"{stem}_{exp}.onnx": VARIES
       for stem in ("ref1_static", "ref1_dynamic", "ref2_static", "ref2_dynamic", "ref3_static",
                    "ref3_dynamic", "randn_like_static", "randn_like_dynamic",
                    "rand_like_dynamic", "normal_dynamic", "randn_f64_dynamic")
       for exp in ("ts", "dynamo")},
    "fp16_randn_like_static_ts.onnx": VARIES,
}
REAL_ORIGINAL = {  # third-party models in ../shared/real-models (skipped when absent)
    "migraphx_multinomial_autoseed_dyn_test.onnx": FIXED,
    "migraphx_randomnormallike_test.onnx": VARIES,
    "migraphx_randomuniform_test.onnx": _rejects(NO_DOUBLE_UNIFORM),
    "mlagents_3DBallHard.onnx": VARIES,
    "mlagents_BigWallJump.onnx": FIXED,
    "mlagents_hybrid0vis8vec_2c_2_3d_v2_0.onnx": VARIES,
    "onnx_test_bernoulli_seed_expanded_op15.onnx": VARIES,
    "onnx_test_bernoulli_seed_op15.onnx": _rejects(NO_BERNOULLI.format(15)),
}
ORIGINAL = {**FIXTURE_ORIGINAL, **REAL_ORIGINAL}
CASES = ([pytest.param(FIXTURES / n, id=n) for n in sorted(p.name for p in FIXTURES.glob("*.onnx"))]
         + [pytest.param(REAL_MODELS / n, id=f"real/{n}") for n in sorted(REAL_ORIGINAL)])


def _path(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path.name} not available ({path.parent} absent)")
    return path


@pytest.fixture(scope="module")
def core():
    return ov.Core()


def _ov_run(compiled, feeds: dict) -> dict[str, np.ndarray]:
    # OpenVINO drops graph inputs nothing reads (e.g. the input of a RandomNormalLike whose
    # shape is static, once onnxfix rewrote it): feeding them raises, so feed only the known ones.
    known = {n for i in compiled.inputs for n in i.get_names()}
    res = compiled({k: v for k, v in feeds.items() if k in known})
    return {n: np.array(res[o]) for o in compiled.outputs for n in o.get_names()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def _feeds(model: onnx.ModelProto, size: int, rng, noise: dict[str, str] | None = None) -> dict:
    """Seeded inputs: symbolic dims take `size`; noise inputs get N(0,1) or U[0,1) by family;
    other float inputs U[0,1) (valid probabilities for Bernoulli), action masks all ones."""
    noise = noise or {}
    feeds = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else size for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if noise.get(vi.name) == "normal":
            value = rng.standard_normal(shape)
        elif "mask" in vi.name:
            value = np.ones(shape)
        else:
            value = rng.random(shape)
        feeds[vi.name] = value.astype(dtype)
    return feeds


@functools.cache
def _rewritten(path: Path, mode: str) -> tuple:
    if mode == "input-noise":
        return onnxfix.rewrite(path, mode="input-noise")
    # Constant mode needs concrete shapes: fix every symbolic dim of the model's own inputs
    # (unnamed dims are named `<input>_dim<i>` by the rewrite; passing an absent dim is an error).
    noisy, rep = _rewritten(path, "input-noise")
    dims = {d.dim_param: 2 for vi in noisy.graph.input if vi.name not in rep.new_inputs
            for d in vi.type.tensor_type.shape.dim if d.dim_param}
    return onnxfix.rewrite(path, mode="constant", dims=dims)


def _tolerance(dtype: np.dtype) -> tuple[float, float]:
    if dtype == np.float16:
        return 2e-3, 2e-3
    return 1e-4, 1e-4  # float32, and float64 (computed in f32 by OpenVINO's CPU plugin)


@pytest.mark.parametrize("path", CASES)
def test_what_openvino_does_with_the_original(core, path):
    path = _path(path)
    expected = ORIGINAL.get(path.name)
    if expected is None:
        pytest.skip(f"{path.name}: OpenVINO's behaviour not measured yet (add it to ORIGINAL)")
    if expected[0] == "rejects":
        with pytest.raises(RuntimeError, match=re.escape(expected[1])):
            core.read_model(str(path))
        return
    compiled = core.compile_model(core.read_model(str(path)), "CPU", F32)
    feeds = _feeds(onnx.load(path), 3, np.random.default_rng(0))
    first = _ov_run(compiled, feeds)
    again = [_ov_run(compiled, feeds) for _ in range(4)]
    if expected == VARIES:
        assert not all(_same(first, r) for r in again), "OpenVINO repeated the same draw"
    else:
        # OpenVINO's Multinomial draws from an internal seed the caller cannot set: on an idle
        # machine every run and recompile repeated the same samples, but under load they
        # changed once, so only "runs, and the caller has no control" is asserted: the samples
        # are valid class indices, whatever they are.
        for res in [first, *again]:
            for value in res.values():
                if np.issubdtype(value.dtype, np.integer):
                    assert (value >= 0).all()


@pytest.mark.parametrize("mode", ["input-noise", "constant"])
@pytest.mark.parametrize("path", CASES)
def test_rewritten_compiles_is_deterministic_and_matches_onnxruntime(core, path, mode):
    model, report = _rewritten(_path(path), mode)
    assert report.parity.status == "passed"  # onnxruntime: rewritten == original on its draws
    families = {n.replacement.name: n.distribution["family"] for n in report.nodes
                if n.replacement is not None and n.replacement.kind == "input"}
    assert set(families) == set(report.new_inputs)
    assert set(families.values()) <= {"normal", "uniform"}
    blob = model.SerializeToString()
    compiled = core.compile_model(core.read_model(blob, b""), "CPU", F32)
    feeds = _feeds(model, 3, np.random.default_rng(1), families)

    got = _ov_run(compiled, feeds)
    assert _same(got, _ov_run(compiled, feeds)), "two runs with the same noise differ"
    again = core.compile_model(core.read_model(blob, b""), "CPU", F32)
    assert _same(got, _ov_run(again, feeds)), "a second compilation gives other results"
    default = core.compile_model(core.read_model(blob, b""), "CPU")  # bf16 on bf16-capable CPUs
    assert _same(_ov_run(default, feeds), _ov_run(default, feeds))

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for name, want in zip(names, sess.run(names, feeds), strict=True):
        have = got[name]
        assert have.shape == want.shape and have.dtype == want.dtype, name
        if np.issubdtype(want.dtype, np.floating):
            atol, rtol = _tolerance(want.dtype)
            np.testing.assert_allclose(have, want, atol=atol, rtol=rtol, err_msg=name)
        else:  # integer samples (Multinomial) and masks: exact
            np.testing.assert_array_equal(have, want, err_msg=name)

    if families:  # the noise, not a hidden draw, decides the sample
        other = _feeds(model, 3, np.random.default_rng(2), families)
        changed = {**feeds, **{k: other[k] for k in families}}
        assert not _same(got, _ov_run(compiled, changed))


# -- light runtimes beside OpenVINO: tract and MNN, through scripts/targets.py ------------------

def _targets_script():
    import importlib.util

    path = FIXTURES.parent / "scripts" / "targets.py"
    spec = importlib.util.spec_from_file_location("onnxfix_targets_script", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# What a runtime cannot do with a fixture's OWN ops (not onnxfix's): the cell it gets.
MODEL_GAPS = {
    ("tract", "fp16_randn_like_static_ts"): 'converts: no (Translating node #3 "/linear/Gemm" '
                                           'Gemm ToTypedTranslator',
}


@pytest.mark.parametrize("runtime,module", [("tract", "tract"), ("MNN", "MNN")])
def test_every_fixture_rewrite_converts_repeats_and_matches_onnxruntime_on(runtime, module,
                                                                          tmp_path):
    pytest.importorskip(module)
    targets = _targets_script()
    make = targets.RUNTIMES[runtime][1]
    failures = []
    for path in sorted(FIXTURES.glob("*.onnx")):
        new_path, model = targets.rewritten(path, tmp_path)
        feeds = targets.feeds_for(model)
        want = targets._onnxruntime(new_path, model, tmp_path)(feeds)
        ok, cell = targets.verdict(make, new_path, model, feeds, want, tmp_path)
        gap = MODEL_GAPS.get((runtime, path.stem))
        if gap is not None:
            assert not ok and cell.startswith(gap), cell
        elif not ok:
            failures.append(f"{path.stem}: {cell}")
    assert failures == []
