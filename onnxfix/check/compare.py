"""Running models in onnxruntime and comparing what they compute (for the parity check)."""

from __future__ import annotations

import contextlib
import math
import weakref

import numpy as np
import onnx
import onnxruntime as ort

from onnxfix.check.feed_validation import validate_in_linear_time
from onnxfix.check.input_roles import plain_sample
from onnxfix.errors import one_line
from onnxfix.report import OutputCheck

# The check refuses to synthesize inputs larger than this (it would not fit a CI machine).
CHECK_INPUT_BYTES = 2**30


class CheckSkipped(Exception):
    """The check cannot be run as asked (an input it cannot make, a draw it cannot use)."""


class CheckLimit(BaseException):  # noqa: N818 - not an error of the model: a limit of the check
    """onnxruntime ran out of memory (under the check's cap).

    A BaseException on purpose: the check's `except Exception` handlers turn a failing run
    into a verdict on the model ("the rewritten model fails"), which this must never become.
    """


_ALLOCATION_FAILURES = ("Failed to allocate memory", "bad_alloc", "bad allocation",
                        "std::length_error")


def _allocation_failure(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or any(t in str(e) for t in _ALLOCATION_FAILURES)


@contextlib.contextmanager
def _out_of_memory_is_a_limit():
    """onnxruntime running out of memory (under the cap) raises CheckLimit, not its error."""
    try:
        yield
    except Exception as e:
        if _allocation_failure(e):
            raise CheckLimit(one_line(e, limit=None)) from None  # parsed further
        raise

# Tolerances when the user gives none, by the output's dtype (atol, rtol). The standardized
# noise reproduces each draw bit for bit, so these only absorb kernel-level reordering.
DEFAULT_TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-3),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-10),
}


# session -> {input name: its NodeArg}: the check looks an input up once per noise input, and
# a scan of get_inputs() per lookup made a check over N random nodes cost N^2.
_INPUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def input_meta(sess, name: str):
    """The session's NodeArg for input `name` (StopIteration if it has none)."""
    try:
        index = _INPUTS.get(sess)
    except TypeError:  # not weak-referenceable (a stand-in for a session): no index
        return next(i for i in sess.get_inputs() if i.name == name)
    if index is None:
        index = _INPUTS[sess] = {i.name: i for i in sess.get_inputs()}
    if name not in index:
        raise StopIteration(name)
    return index[name]


def input_dtype(sess, name: str) -> np.dtype:
    return _DTYPES[input_meta(sess, name).type]


def filler(sess, name: str, n: int, value: float = 0.5) -> np.ndarray:
    meta = input_meta(sess, name)
    shape = [size_of(d, n) for d in (meta.shape or [])]
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
    with _out_of_memory_is_a_limit():
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    validate_in_linear_time(sess)  # a run fed thousands of noise inputs: see the module
    return sess


def run_all(sess, feeds: dict) -> dict:
    names = [o.name for o in sess.get_outputs()]
    with _out_of_memory_is_a_limit():
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

_DTYPES = {name: np.dtype(t) for name, t in ORT_TYPES.items()}


def synthetic_feeds(inputs, n: int, rng: np.random.Generator, probabilities=frozenset(),
                    roles: dict | None = None) -> dict:
    """Seeded inputs, each by its role (input_roles); Bernoulli probabilities in [0, 1)."""
    total = 0
    for i in inputs:
        if i.type in ORT_TYPES and i.shape is not None:
            count = 1
            for d in i.shape:
                count *= size_of(d, n)
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
        shape = [size_of(d, n) for d in i.shape]
        dt = np.dtype(ORT_TYPES[i.type])
        role = (roles or {}).get(i.name)
        if role is not None:
            feeds[i.name] = role.sample(shape, dt, n, rng)
        else:
            feeds[i.name] = plain_sample(shape, dt, n, rng)
        if i.name in probabilities and np.issubdtype(dt, np.floating):
            feeds[i.name] = np.asarray(rng.random(shape), dt)
    return feeds


def size_of(dim, n) -> int:
    """A declared dim's size in the check: its own value, else the size the check gives it
    (a CheckSize knows the sizes of named dims when the user gave the inputs)."""
    if isinstance(dim, int) and dim >= 0:
        return dim
    named = getattr(n, "dims", None) or {}
    return int(named.get(dim, n))


class CheckSize(int):
    """The size of one pass of the check, with the sizes the given inputs fix per dim name."""

    dims: dict

    def __new__(cls, value: int, dims: dict):
        self = super().__new__(cls, value)
        self.dims = dict(dims)
        return self


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
    if atol >= 0 and rtol >= 0 and (_same_bits(got, want)
                                    or np.array_equal(got, want, equal_nan=True)):
        # the usual outcome (each draw reproduced bit for bit): nothing to measure
        return OutputCheck(name, dims, list(got.shape), 0.0, 0.0, True)
    flat_got, flat_want = got.reshape(-1), want.reshape(-1)
    max_abs = max_rel = 0.0
    specials_agree = within = True
    for start in range(0, got.size, COMPARE_CHUNK):
        part = _float_errors(flat_got[start:start + COMPARE_CHUNK],
                             flat_want[start:start + COMPARE_CHUNK], atol, rtol)
        max_abs, max_rel = max(max_abs, part[0]), max(max_rel, part[1])
        specials_agree &= part[2]
        within &= part[3]
    return OutputCheck(name, dims, list(got.shape), max_abs, max_rel, specials_agree and within,
                       "" if specials_agree else "NaN/Inf positions differ")


def _same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    """Small arrays of one shape and dtype holding the same bytes (so equal, NaN where NaN):
    one memcmp instead of array_equal's half-dozen numpy calls, per draw of a check over
    thousands. False only means "look closer" (-0.0 == 0.0, NaN payloads)."""
    return got.size <= SAME_BITS_LIMIT and got.tobytes() == want.tobytes()


SAME_BITS_LIMIT = 1 << 12  # elements: above it, array_equal's fixed cost no longer matters

# Elements compared at a time: the float64 temporaries of a comparison stay ~2 MB however
# large the output (whole-array temporaries were ~7 doubles per element of a draw).
COMPARE_CHUNK = 1 << 15


def _float_errors(got: np.ndarray, want: np.ndarray, atol: float,
                  rtol: float) -> tuple[float, float, bool, bool]:
    """(max abs error, max rel error, NaN/Inf in the same places, every finite pair within
    atol + rtol * |want|) of two float arrays."""
    g, w = got.astype(np.float64), want.astype(np.float64)
    same_special = (np.isnan(g) == np.isnan(w)) & (np.isinf(g) == np.isinf(w))
    same_special &= ~np.isinf(g) | (g == w)
    finite = np.isfinite(g) & np.isfinite(w)
    # NaN/Inf in the same places are equal; only finite pairs have an error to measure
    diff = np.where(finite, np.abs(g - w), 0.0)
    scale = np.where(finite, np.abs(w), 0.0)
    rel = diff / np.maximum(scale, np.finfo(np.float64).tiny)
    return (float(diff.max()), float(rel.max()), bool(same_special.all()),
            bool((diff <= atol + rtol * scale).all()))


def dims_text(dims: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items()) or "static shapes"
def identical(a, b) -> bool:
    """Two runs' values are the same array (NaN equal to NaN where the dtype has NaN)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.array_equal(
        a, b, equal_nan=np.issubdtype(a.dtype, np.floating))


