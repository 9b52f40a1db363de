"""Conditional parity in onnxruntime: the rewritten model must compute what the original did.

Outputs downstream of a draw cannot be compared with a fresh run of the original, so the
check conditions on the draws: run the original with its random outputs exposed, then
- input-noise: standardize each captured draw and feed it to the rewritten model;
- constant: feed the frozen draw to the original (random nodes cut out) and compare it
  with the rewritten model, whose two runs must also be identical.
Every output must match within tolerance, at two sizes of the symbolic dims when there are any.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .ops import attrs_of, is_random_node, np_dtype, spec_for
from .report import NodeRecord, OutputCheck, Parity

# Tolerances when the user gives none, by the output's dtype (atol, rtol). The standardized
# noise reproduces each draw bit for bit, so these only absorb kernel-level reordering.
DEFAULT_TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-3),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-10),
}


@dataclass
class _Draw:
    output: str
    record: NodeRecord
    node: onnx.NodeProto


def check_parity(original: onnx.ModelProto, rewritten: onnx.ModelProto,
                 records: list[NodeRecord], mode: str, *, size: int = 2,
                 atol: float | None = None, rtol: float | None = None, seed: int = 0,
                 on_line: Callable[[str], None] | None = None) -> Parity:
    emit = on_line or (lambda _line: None)
    parity = Parity(status="passed", atol=atol, rtol=rtol)
    draws = _draws(original, records)
    if not draws:
        parity.status, parity.reason = "skipped", "no random node was rewritten"
        return parity
    capture = _with_outputs(original, [(d.output, _elem_type(d)) for d in draws])
    try:
        orig_sess = _session(capture)
    except Exception as e:  # noqa: BLE001 - ORT raises several types
        return _skip(parity, f"the original model does not load in onnxruntime: {_line(e)}")
    try:
        new_sess = _session(_with_outputs(rewritten, [(d.output, _elem_type(d)) for d in draws]))
    except Exception as e:  # noqa: BLE001
        return _fail(parity, f"the rewritten model does not load in onnxruntime: {_line(e)}",
                     emit)
    frozen_sess = None
    if mode == "constant":
        try:
            frozen_sess = _session(_frozen(original, draws))
        except Exception as e:  # noqa: BLE001
            return _skip(parity, f"the original with frozen draws does not load: {_line(e)}")

    noise_inputs = {r.replacement.name for r in records if r.replacement
                    and r.replacement.kind == "input"}
    data_inputs = [i for i in new_sess.get_inputs() if i.name not in noise_inputs]
    symbols = _symbols(data_inputs)
    sizes = [size, size + 1] if symbols else [size]
    out_names = [o.name for o in original.graph.output]
    for k, n in enumerate(sizes):
        dims = {s: n for s in symbols}
        parity.sizes.append(dims)
        rng = np.random.default_rng([seed, k])
        try:
            feeds = {i.name: _synthetic(i, n, rng) for i in data_inputs}
        except ValueError as e:
            return _skip(parity, str(e))
        try:
            orig = dict(zip([o.name for o in orig_sess.get_outputs()],
                            orig_sess.run(None, feeds), strict=True))
        except Exception as e:  # noqa: BLE001
            return _skip(parity, f"the original model fails on synthetic inputs "
                                 f"({_dims_text(dims)}): {_line(e)}")
        if mode == "input-noise":
            noise = {d.record.replacement.name: _standardize(d, orig[d.output]) for d in draws}
            ok = _run_and_compare(parity, new_sess, {**feeds, **noise}, orig,
                                  out_names + [d.output for d in draws], dims, emit)
        else:
            ok = _check_constant(parity, new_sess, frozen_sess, feeds, orig, draws, rewritten,
                                 out_names, dims, emit)
        if not ok:
            parity.status = "failed"
    if parity.status == "failed" and not parity.reason:
        bad = [c for c in parity.outputs if not c.passed]
        parity.reason = f"{len(bad)} comparison(s) out of tolerance"
    return parity


def _draws(original: onnx.ModelProto, records: list[NodeRecord]) -> list[_Draw]:
    by_output = {n.output[0]: n for n in original.graph.node if n.output and is_random_node(n)}
    return [_Draw(r.output, r, by_output[r.output]) for r in records
            if r.status == "rewritten" and r.output in by_output]


def _elem_type(d: _Draw) -> int:
    return onnx.TensorProto.DataType.Value(d.record.replacement.dtype.upper())


def _with_outputs(model: onnx.ModelProto, extra: list[tuple[str, int]]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name, elem in extra:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return m


def _frozen(original: onnx.ModelProto, draws: list[_Draw]) -> onnx.ModelProto:
    """The original with its random nodes cut out and their outputs fed from outside."""
    m = onnx.ModelProto()
    m.CopyFrom(original)
    cut = {d.output for d in draws}
    keep = [n for n in m.graph.node if not (n.output and n.output[0] in cut
                                            and is_random_node(n))]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    for d in draws:
        m.graph.input.append(helper.make_tensor_value_info(d.output, _elem_type(d), None))
    return m


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    # Parity is about graph semantics: no fusions that could reorder float arithmetic.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _symbols(inputs) -> list[str]:
    names: list[str] = []
    for i in inputs:
        for k, d in enumerate(i.shape or []):
            if not isinstance(d, int):
                label = d if isinstance(d, str) and d else f"{i.name}[{k}]"
                if label not in names:
                    names.append(label)
    return names


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def _synthetic(inp, n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded input: symbolic dims take size n; floats N(0,1), integers in [0, n]."""
    if inp.type not in _ORT_TYPES:
        raise ValueError(f"input '{inp.name}' has type {inp.type}, which the check cannot make")
    if inp.shape is None:
        raise ValueError(f"input '{inp.name}' has no declared shape")
    shape = [d if isinstance(d, int) and d >= 0 else n for d in inp.shape]
    dt = np.dtype(_ORT_TYPES[inp.type])
    if dt == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dt, np.integer):
        return rng.integers(0, n + 1, size=shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


def _standardize(d: _Draw, draw: np.ndarray) -> np.ndarray:
    return spec_for(d.node).standardize(draw, attrs_of(d.node))


def _run_and_compare(parity: Parity, sess, feeds: dict, expected: dict, names: list[str],
                     dims: dict, emit) -> bool:
    try:
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the rewritten model fails at {_dims_text(dims)}: {_line(e)}", emit)
        return False
    ok = True
    for name in names:
        check = _compare(name, got[name], expected[name], parity.atol, parity.rtol, dims)
        _record(parity, check, emit)
        ok &= check.passed
    return ok


def _check_constant(parity, new_sess, frozen_sess, feeds, orig, draws, rewritten, out_names,
                    dims, emit) -> bool:
    frozen_values = {t.name: onnx.numpy_helper.to_array(t) for t in rewritten.graph.initializer
                     if t.name in {d.output for d in draws}}
    ok = True
    for d in draws:
        want = orig[d.output].shape
        have = frozen_values[d.output].shape
        if want != have:
            check = OutputCheck(d.output, dims, list(have), math.inf, math.inf, False,
                                f"frozen draw has shape {list(have)}, the original draws "
                                f"{list(want)}")
            _record(parity, check, emit)
            ok = False
    if not ok:
        return False
    try:
        ref = dict(zip([o.name for o in frozen_sess.get_outputs()],
                       frozen_sess.run(None, {**feeds, **frozen_values}), strict=True))
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the original with frozen draws fails at {_dims_text(dims)}: {_line(e)}",
              emit)
        return False
    ok = _run_and_compare(parity, new_sess, feeds, ref, out_names, dims, emit)
    first = new_sess.run(out_names, feeds)
    second = new_sess.run(out_names, feeds)
    for name, a, b in zip(out_names, first, second, strict=True):
        same = np.array_equal(a, b, equal_nan=_is_float(a))
        if not same:
            check = OutputCheck(name, dims, list(a.shape), math.inf, math.inf, False,
                                "two runs of the rewritten model differ")
            _record(parity, check, emit)
            ok = False
    return ok


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating)


def _compare(name: str, got: np.ndarray, want: np.ndarray, atol, rtol, dims) -> OutputCheck:
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
    diff = np.where(finite, np.abs(g - w), 0.0)
    rel = diff / np.maximum(np.abs(w), np.finfo(np.float64).tiny)
    passed = bool(same_special.all() and (diff <= atol + rtol * np.abs(w)).all())
    return OutputCheck(name, dims, list(got.shape), float(diff.max()), float(rel.max()), passed,
                       "" if same_special.all() else "NaN/Inf positions differ")


def _record(parity: Parity, check: OutputCheck, emit) -> None:
    parity.outputs.append(check)
    word = "PASSED" if check.passed else "FAILED"
    note = f" | {check.note}" if check.note else ""
    emit(f"{word} | {_dims_text(check.dims)} | Output: '{check.name}' {check.shape} | "
         f"max abs err {check.max_abs_err:.3g} | max rel err {check.max_rel_err:.3g}{note}")


def _dims_text(dims: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in dims.items()) or "static shapes"


def _skip(parity: Parity, reason: str) -> Parity:
    parity.status, parity.reason = "skipped", reason
    return parity


def _fail(parity: Parity, reason: str, emit) -> Parity:
    parity.status, parity.reason = "failed", reason
    emit(f"FAILED | {reason}")
    return parity


def _line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] if text else type(e).__name__


__all__ = ["DEFAULT_TOLERANCES", "check_parity", "np_dtype"]
