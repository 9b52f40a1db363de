"""Running models in onnxruntime and comparing what they compute (for the parity check)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort

from .report import OutputCheck

# The check refuses to synthesize inputs larger than this (it would not fit a CI machine).
CHECK_INPUT_BYTES = 2**30


class CheckSkipped(Exception):
    """The check cannot be run as asked (an input it cannot make, a draw it cannot use)."""

# Tolerances when the user gives none, by the output's dtype (atol, rtol). The standardized
# noise reproduces each draw bit for bit, so these only absorb kernel-level reordering.
DEFAULT_TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-3),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-10),
}


def input_meta(sess, name: str):
    return next(i for i in sess.get_inputs() if i.name == name)


def input_dtype(sess, name: str) -> np.dtype:
    return np.dtype(ORT_TYPES[input_meta(sess, name).type])


def filler(sess, name: str, n: int, value: float = 0.5) -> np.ndarray:
    meta = input_meta(sess, name)
    shape = [d if isinstance(d, int) and d >= 0 else n for d in (meta.shape or [])]
    return np.full(shape, value, dtype=np.dtype(ORT_TYPES[meta.type]))


def make_session(model: onnx.ModelProto,
                 weights_folder: str | None = None) -> ort.InferenceSession:
    """A session for parity: CPU, one thread, no graph optimizations.

    weights_folder: where the model's external-data weights live (a skeleton's source folder);
    onnxruntime reads them from there, so a model given as bytes needs no copy of them.
    """
    opts = ort.SessionOptions()
    if weights_folder is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                      weights_folder)
    # Parity is about graph semantics: no fusions that could reorder float arithmetic.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4  # fatal only: its error log must not reach our stderr
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def run_all(sess, feeds: dict) -> dict:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def symbolic_dims(inputs) -> list[str]:
    names: list[str] = []
    for i in inputs:
        for k, d in enumerate(i.shape or []):
            if not isinstance(d, int):
                label = d if isinstance(d, str) and d else f"{i.name}[{k}]"
                if label not in names:
                    names.append(label)
    return names


ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def synthetic_feeds(inputs, n: int, rng: np.random.Generator, probabilities=frozenset()) -> dict:
    """Seeded inputs; those read directly as Bernoulli probabilities are drawn in [0, 1)."""
    total = 0
    for i in inputs:
        if i.type in ORT_TYPES and i.shape is not None:
            count = 1
            for d in i.shape:
                count *= d if isinstance(d, int) and d >= 0 else n
            total += count * np.dtype(ORT_TYPES[i.type]).itemsize
    if total > CHECK_INPUT_BYTES:
        raise CheckSkipped(f"the check's synthetic inputs would take {total:,} bytes (over "
                           f"{CHECK_INPUT_BYTES:,}); lower --check-size or fix dims with --dim")
    feeds = {}
    for i in inputs:
        if i.type not in ORT_TYPES:
            raise CheckSkipped(f"input '{i.name}' has type {i.type}, which the check cannot make")
        if i.shape is None:
            raise CheckSkipped(f"input '{i.name}' has no declared shape")
        feeds[i.name] = _synthetic_input(i, n, rng)
        if i.name in probabilities and np.issubdtype(feeds[i.name].dtype, np.floating):
            feeds[i.name] = np.asarray(rng.random(feeds[i.name].shape), feeds[i.name].dtype)
    return feeds


def _synthetic_input(inp, n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded input: symbolic dims take size n; floats N(0,1), integers in [0, n]."""
    shape = [d if isinstance(d, int) and d >= 0 else n for d in inp.shape]
    dt = np.dtype(ORT_TYPES[inp.type])
    if dt == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if np.issubdtype(dt, np.integer):
        return np.asarray(rng.integers(0, n + 1, size=shape), dtype=dt)
    return np.asarray(rng.standard_normal(shape), dtype=dt)


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def compare_arrays(name: str, got: np.ndarray, want: np.ndarray, atol, rtol, dims) -> OutputCheck:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return OutputCheck(name, dims, list(got.shape), math.inf, math.inf, False,
                           f"shape {list(got.shape)} != expected {list(want.shape)}")
    if got.dtype != want.dtype:
        return OutputCheck(name, dims, list(got.shape), math.inf, math.inf, False,
                           f"dtype {got.dtype} != expected {want.dtype}")
    if got.size == 0:
        return OutputCheck(name, dims, list(got.shape), 0.0, 0.0, True)
    if not _is_float(got):
        if got.dtype.kind in "biu":
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            return OutputCheck(name, dims, list(got.shape), float(diff.max()),
                               float((diff / np.maximum(np.abs(want), 1)).max()),
                               bool(np.array_equal(got, want)))
        return OutputCheck(name, dims, list(got.shape), 0.0, 0.0, bool(np.array_equal(got, want)))
    a, r = DEFAULT_TOLERANCES.get(got.dtype, (1e-5, 1e-5))
    atol = a if atol is None else atol
    rtol = r if rtol is None else rtol
    g, w = got.astype(np.float64), want.astype(np.float64)
    same_special = (np.isnan(g) == np.isnan(w)) & (np.isinf(g) == np.isinf(w))
    same_special &= ~np.isinf(g) | (g == w)
    finite = np.isfinite(g) & np.isfinite(w)
    # NaN/Inf in the same places are equal; only finite pairs have an error to measure
    diff = np.where(finite, np.abs(g - w), 0.0)
    scale = np.where(finite, np.abs(w), 0.0)
    rel = diff / np.maximum(scale, np.finfo(np.float64).tiny)
    passed = bool(same_special.all() and (diff <= atol + rtol * scale).all())
    return OutputCheck(name, dims, list(got.shape), float(diff.max()), float(rel.max()), passed,
                       "" if same_special.all() else "NaN/Inf positions differ")


def dims_text(dims: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items()) or "static shapes"


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] if text else type(e).__name__


