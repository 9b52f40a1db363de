"""Conditional parity in onnxruntime: the rewritten model must compute what the original did.

Outputs downstream of a draw cannot be compared with a fresh run of the original, so the
check conditions on the draws: onnxruntime runs the original with every random node's outputs
(and the inputs its distribution depends on) exposed, which captures the draws it made.
- input-noise: each captured draw is turned back into standard noise consistent with it and
  fed to the rewritten model; every output, and every draw, must match.
- constant: the model is also rewritten in input-noise mode and checked as above; then the
  constant model must equal that model fed with the frozen noise, and two runs must agree.
Symbolic dims take `size`, and the check runs again at size + 1 when the model is dynamic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from .capture import Exposer
from .find import Site, find_sites
from .ops import AffineOp, Inconsistent, attrs_of, np_dtype, spec_for
from .report import NodeRecord, OutputCheck, Parity
from .shapes import infer_facts

# Tolerances when the user gives none, by the output's dtype (atol, rtol). The standardized
# noise reproduces each draw bit for bit, so these only absorb kernel-level reordering.
DEFAULT_TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-3),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-10),
}


class _Skip(Exception):
    pass


@dataclass
class _Captured:
    record: NodeRecord
    node: onnx.NodeProto
    lead: int  # leading iteration axes (enclosing Loop/Scan levels)
    outputs: dict[int, str] = field(default_factory=dict)  # output index -> exposed name
    inputs: dict[int, str] = field(default_factory=dict)   # input index -> exposed name
    # (exposed If condition, value under which the node's branch runs), for If levels that
    # are not inside a loop: when the branch did not run, there is no draw to condition on.
    branches: list[tuple[str, bool]] = field(default_factory=list)


def check_parity(original: onnx.ModelProto, rewritten: onnx.ModelProto,
                 records: list[NodeRecord], mode: str, *, size: int = 2,
                 atol: float | None = None, rtol: float | None = None, seed: int = 0,
                 dims: dict | None = None, select: Callable[[Site], bool] | None = None,
                 on_line: Callable[[str], None] | None = None,
                 weights_folder: str | None = None) -> Parity:
    """weights_folder: where external-data weights live (a skeleton's source folder)."""
    global _WEIGHTS_FOLDER
    _WEIGHTS_FOLDER = weights_folder
    emit = on_line or (lambda _line: None)
    parity = Parity(status="passed", atol=atol, rtol=rtol)
    done = [r for r in records if r.status == "rewritten"]
    if not done:
        parity.status, parity.reason = "skipped", "no random node was rewritten"
        return parity
    try:
        if mode == "input-noise":
            _conditional(parity, original, rewritten, records, size, seed, emit)
        else:
            from .rewrite import rewrite_model

            noise_model, noise_records = rewrite_model(original, "input-noise", dims=dims,
                                                       select=select)
            if mode == "constant":
                _conditional(parity, original, noise_model, noise_records, size, seed, emit)
            if parity.status != "failed":
                _twin_check(parity, rewritten, done, noise_model, noise_records, mode, size,
                            seed, emit)
    except _Skip as e:
        parity.status, parity.reason = "skipped", str(e)
        emit(f"SKIPPED | {e}")
    if parity.status == "failed" and not parity.reason:
        bad = [c for c in parity.outputs if not c.passed]
        parity.reason = f"{len(bad)} comparison(s) out of tolerance"
    return parity


# -- input-noise: condition on the original's draws --------------------------------------

def _conditional(parity: Parity, original, noise_model, records, size, seed, emit) -> None:
    from .rewrite import _inline_random_functions

    base = onnx.ModelProto()
    base.CopyFrom(original)
    base = _inline_random_functions(base)
    captures, capture_model = _capture_model(base, records)
    try:
        orig_sess = _session(capture_model)
    except Exception as e:  # noqa: BLE001 - ORT raises several types
        raise _Skip(f"the original model does not load in onnxruntime: {_line(e)}") from None
    out_set = {o.name for o in original.graph.output}
    lossy = _narrowed(records)
    draws = [c.record.output for c in captures if c.lead == 0
             and c.record.output in _main_names(noise_model)
             and (lossy or c.record.output not in out_set)]
    cut_sess = None
    if lossy:
        if any(c.lead or c.branches or c.record.graph != "main" for c in captures):
            raise _Skip("--noise-dtype narrower than a draw inside a subgraph: the draws "
                        "cannot be fed back to the original")
        cut_sess = _session(_cut_model(base, draws))
    probe = _with_outputs(noise_model, draws)
    try:
        new_sess = _session(probe)
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the rewritten model does not load in onnxruntime: {_line(e)}", emit)
        return
    noise_inputs = {r.replacement.name: r for r in records if r.replacement
                    and r.replacement.kind == "input"}
    data_inputs = [i for i in new_sess.get_inputs() if i.name not in noise_inputs]
    probabilities = {c.node.input[0] for c in captures if c.node.op_type == "Bernoulli"}
    symbols = _symbols(data_inputs)
    tainted = _tainted_outputs(base, [r.output for r in records if r.status == "kept"])
    out_names = [o.name for o in original.graph.output if o.name not in tainted]
    if tainted:
        emit(f"NOTE | outputs downstream of unselected random nodes are not compared: "
             f"{', '.join(sorted(tainted))}")
    for k, n in enumerate([size, size + 1] if symbols else [size]):
        dims = {s: n for s in symbols}
        parity.sizes.append(dims)
        feeds = _feeds(data_inputs, n, np.random.default_rng([seed, k]), probabilities)
        try:
            got = _run(orig_sess, feeds)
        except Exception as e:  # noqa: BLE001
            raise _Skip(f"the original model fails on synthetic inputs ({_dims_text(dims)}): "
                        f"{_line(e)}") from None
        noise = {}
        for c in captures:
            fed = _input_dtype(new_sess, c.record.replacement.name)
            noise[c.record.replacement.name] = _standard_noise(c, got, new_sess, n).astype(fed)
        for name in noise_inputs:
            if name not in noise:  # e.g. its node was in an If branch not taken
                noise[name] = _filler(new_sess, name, n)
        expected = {**{o: got[o] for o in out_names},
                    **{d: got[_draw_capture(captures, d)] for d in draws}}
        if lossy:
            ok = _lossy_compare(parity, new_sess, cut_sess, feeds, noise, expected, out_names,
                                draws, dims, emit)
        else:
            ok = _run_and_compare(parity, new_sess, {**feeds, **noise}, expected,
                                  out_names + draws, dims, emit)
        if not ok:
            parity.status = "failed"


def _narrowed(records) -> bool:
    """Some noise is fed in a narrower dtype than its draw needs (--noise-dtype)."""
    order = {"float16": 0, "bfloat16": 0, "float": 1, "double": 2}
    return any(r.replacement is not None and r.replacement.cast_to
               and order.get(r.replacement.dtype, 1) < order.get(r.replacement.cast_to, 1)
               for r in records)


def _lossy_compare(parity, new_sess, cut_sess, feeds, noise, expected, out_names, draws, dims,
                   emit) -> bool:
    """Noise fed in a narrower dtype reproduces the draws only to that dtype's precision.

    The draws are compared with the original's at that precision; every output is compared,
    at the usual tolerance, with the original graph fed the draws the rewritten model made.
    """
    try:
        got = _run(new_sess, {**feeds, **noise})
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the rewritten model fails at {_dims_text(dims)}: {_line(e)}", emit)
        return False
    ok = True
    for d in draws:
        check = _compare(f"{d} (narrowed noise)", got[d], expected[d], 4e-3, 4e-3, dims)
        _record(parity, check, emit)
        ok &= check.passed
    try:
        want = _run(cut_sess, {**feeds, **{d: got[d] for d in draws}})
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the original fed the rewritten draws fails: {_line(e)}", emit)
        return False
    for name in out_names:
        check = _compare(name, got[name], want[name], parity.atol, parity.rtol, dims)
        _record(parity, check, emit)
        ok &= check.passed
    return ok


def _cut_model(base: onnx.ModelProto, draws: list[str]) -> onnx.ModelProto:
    """The original with its main-graph random nodes cut out and their draws fed as inputs."""
    m = onnx.ModelProto()
    m.CopyFrom(base)
    facts = infer_facts(m)
    cut = set(draws)
    keep = [n for n in m.graph.node if not (n.output and n.output[0] in cut)]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    for d in draws:
        f = facts.get(d)
        elem = f.elem_type if f and f.elem_type else onnx.TensorProto.FLOAT
        m.graph.input.append(onnx.helper.make_tensor_value_info(d, elem, None))
    return m


def _main_names(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node for o in n.output} | {
        t.name for t in model.graph.initializer}


def _draw_capture(captures: list[_Captured], output: str) -> str:
    return next(c.outputs[0] for c in captures if c.record.output == output)


def _capture_model(base: onnx.ModelProto, records) -> tuple[list[_Captured], onnx.ModelProto]:
    model = onnx.ModelProto()
    model.CopyFrom(base)
    facts = infer_facts(model)
    sites = {s.output: s for s in find_sites(model)}
    exposer = Exposer(model)
    captures = []
    for rec in records:
        site = sites.get(rec.output)
        if site is None or rec.replacement is None:
            continue
        node = site.node
        spec = spec_for(node)
        if node.op_type == "Dropout" and (len(node.output) < 2 or not node.output[1]):
            while len(node.output) < 2:
                node.output.append("")
            node.output[1] = exposer.names.fresh(f"{node.output[0]}_mask")
        lead = sum(1 for s in site.scopes if s.owner.op_type in ("Loop", "Scan"))
        cap = _Captured(rec, node, lead)
        for k, scope in enumerate(site.scopes):
            if scope.owner.op_type in ("Loop", "Scan"):
                break
            if scope.owner.op_type == "If":
                cond = exposer.expose(scope.owner.input[0], onnx.TensorProto.BOOL,
                                      site.scopes[:k])
                cap.branches.append((cond, scope.attr == "then_branch"))
        for i, out in enumerate(node.output):
            if out:
                elem = onnx.TensorProto.BOOL if (node.op_type == "Dropout" and i == 1) else \
                    _elem(facts, out, rec)
                cap.outputs[i] = exposer.expose(out, elem, site.scopes)
        wanted = set(spec.capture_inputs(node))
        for i, inp in enumerate(node.input):
            if inp and inp in wanted:
                cap.inputs[i] = exposer.expose(inp, _elem(facts, inp, rec), site.scopes)
        captures.append(cap)
    return captures, model


def _elem(facts, name: str, rec: NodeRecord) -> int:
    f = facts.get(name)
    if f is not None and f.elem_type:
        return f.elem_type
    return onnx.TensorProto.DataType.Value(rec.replacement.dtype.upper())


def _standard_noise(c: _Captured, got: dict, sess, n: int) -> np.ndarray:
    spec = spec_for(c.node)
    attrs = attrs_of(c.node)
    outs = {i: got[name] for i, name in c.outputs.items()}
    ins = {i: got[name] for i, name in c.inputs.items()}
    repl = c.record.replacement
    fed = _input_dtype(sess, repl.name)
    noise_dtype = fed
    if repl.cast_to:
        natural = np_dtype(onnx.TensorProto.DataType.Value(repl.cast_to.upper()))
        # discrete draws: build the noise within the narrower dtype, so it survives the cast
        noise_dtype = fed if fed.itemsize < natural.itemsize else natural
    if any(bool(np.asarray(got[cond]).reshape(-1)[0]) != want for cond, want in c.branches):
        return _filler(sess, c.record.replacement.name, n)  # its If branch did not run
    return _fit(_standardized(c, spec, attrs, outs, ins, noise_dtype), sess,
                c.record.replacement.name)


def _fit(noise: np.ndarray, sess, name: str) -> np.ndarray:
    """Pad to a declared iteration axis longer than the loop ran (the rest is never read)."""
    declared = _input_meta(sess, name).shape or []
    if len(declared) != noise.ndim:
        return noise
    pad = [(0, d - have) if isinstance(d, int) and d > have else (0, 0)
           for d, have in zip(declared, noise.shape, strict=True)]
    if any(after for _, after in pad):
        noise = np.pad(noise, pad, constant_values=0.5)
    return noise


def _standardized(c: _Captured, spec, attrs, outs, ins, noise_dtype) -> np.ndarray:
    try:
        if c.lead and c.node.op_type == "Multinomial":
            lead_shape = outs[0].shape[:c.lead]
            flat_outs = {0: outs[0].reshape(-1, outs[0].shape[-1])}
            flat_ins = {0: ins[0].reshape(-1, ins[0].shape[-1])}
            u = spec.standardize(flat_outs, attrs, flat_ins, noise_dtype)
            batch = outs[0].shape[c.lead]
            return u.reshape(*lead_shape, batch, *u.shape[1:])
        if isinstance(spec, AffineOp):
            return spec.standardize(outs, attrs)
        return spec.standardize(outs, attrs, ins, noise_dtype)
    except Inconsistent as e:
        raise _Skip(f"cannot condition on the draw of {c.record.op_type} "
                    f"'{c.record.output}': {e}") from None


def _input_meta(sess, name: str):
    return next(i for i in sess.get_inputs() if i.name == name)


def _input_dtype(sess, name: str) -> np.dtype:
    return np.dtype(_ORT_TYPES[_input_meta(sess, name).type])


def _filler(sess, name: str, n: int, value: float = 0.5) -> np.ndarray:
    meta = _input_meta(sess, name)
    shape = [d if isinstance(d, int) and d >= 0 else n for d in (meta.shape or [])]
    return np.full(shape, value, dtype=np.dtype(_ORT_TYPES[meta.type]))


def _tainted_outputs(model: onnx.ModelProto, sources: list[str]) -> set[str]:
    """Main-graph outputs that depend on any of `sources` (draws left random)."""
    if not sources:
        return set()
    from .rewrite import _reads

    tainted = set(sources)
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if _reads(node) & tainted and not set(node.output) <= tainted:
                tainted.update(o for o in node.output if o)
                changed = True
    return {o.name for o in model.graph.output if o.name in tainted}


# -- constant / deterministic: compare with the input-noise twin ------------------------------

def _twin_check(parity, model, records, noise_model, noise_records, mode, size, seed,
                emit) -> None:
    """The model must equal its input-noise twin fed the noise it stands for; two runs agree.

    constant: the frozen noise (a frozen draw is standardized back to noise).
    deterministic: the noise whose transform gives the representative value (0 for normal
    draws, 0.5 for uniform ones); Dropout has none, so outputs it reaches are not compared.
    """
    try:
        sess = _session(model)
        noise_sess = _session(noise_model)
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the rewritten model does not load in onnxruntime: {_line(e)}", emit)
        return
    noise_name = {r.output: r.replacement.name for r in noise_records if r.replacement}
    wanted = {r.replacement.name for r in records}
    frozen = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer
              if t.name in wanted}  # the new, in-memory ones: model weights stay unread
    data_inputs = list(sess.get_inputs())
    symbols = _symbols(data_inputs)
    skip = set()
    if mode == "deterministic":
        skip = _tainted_outputs(model, [r.output for r in records if r.op_type == "Dropout"])
        if skip:
            emit(f"NOTE | outputs reached by a Dropout are not compared with the noise twin "
                 f"(no noise means 'no mask'): {', '.join(sorted(skip))}")
    out_names = [o.name for o in model.graph.output]
    for k, n in enumerate([size, size + 1] if symbols else [size]):
        dims = {s: n for s in symbols}
        if mode == "deterministic":
            parity.sizes.append(dims)
        feeds = _feeds(data_inputs, n, np.random.default_rng([seed, 100 + k]))
        first = _run(sess, feeds)
        second = _run(sess, feeds)
        for name in out_names:
            if not np.array_equal(first[name], second[name],
                                  equal_nan=np.issubdtype(first[name].dtype, np.floating)):
                _record(parity, OutputCheck(name, dims, list(first[name].shape), math.inf,
                                            math.inf, False, f"two runs of the {mode} model "
                                                             f"differ"), emit)
                parity.status = "failed"
        noise = {}
        for rec in records:
            target = noise_name[rec.output]
            if mode == "deterministic":
                fam = rec.distribution["family"]
                noise[target] = _filler(noise_sess, target, n, 0.0 if fam == "normal" else 0.5)
                continue
            value = frozen[rec.replacement.name]
            if rec.replacement.name == rec.output:  # the frozen draw itself: standardize it
                spec, attrs = _affine_of(rec)
                value = spec.standardize({0: value}, attrs)
            noise[target] = value
        try:
            want = _run(noise_sess, {**feeds, **noise})
        except Exception as e:  # noqa: BLE001
            _fail(parity, f"the input-noise twin rejects the {mode} noise: {_line(e)}", emit)
            return
        for name in out_names:
            if name in skip:
                continue
            check = _compare(f"{name} ({mode})", first[name], want[name], parity.atol,
                             parity.rtol, dims)
            _record(parity, check, emit)
            if not check.passed:
                parity.status = "failed"


def _affine_of(rec: NodeRecord):
    from .ops import OP_TABLE

    spec = OP_TABLE[rec.op_type]
    d = rec.distribution
    attrs = ({"mean": d["mean"], "scale": d["scale"]} if d["family"] == "normal"
             else {"low": d["low"], "high": d["high"]})
    return spec, attrs


# -- running and comparing -------------------------------------------------------------

def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    facts = infer_facts(m)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            f = facts.get(name)
            elem = f.elem_type if f and f.elem_type else onnx.TensorProto.FLOAT
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return m


_WEIGHTS_FOLDER: str | None = None


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if _WEIGHTS_FOLDER is not None:  # weights stay in the source file (external data)
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                      _WEIGHTS_FOLDER)
    # Parity is about graph semantics: no fusions that could reorder float arithmetic.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _run(sess, feeds: dict) -> dict:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


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


def _feeds(inputs, n: int, rng: np.random.Generator, probabilities=frozenset()) -> dict:
    """Seeded inputs; those read directly as Bernoulli probabilities are drawn in [0, 1)."""
    feeds = {}
    for i in inputs:
        if i.type not in _ORT_TYPES:
            raise _Skip(f"input '{i.name}' has type {i.type}, which the check cannot make")
        if i.shape is None:
            raise _Skip(f"input '{i.name}' has no declared shape")
        feeds[i.name] = _synthetic(i, n, rng)
        if i.name in probabilities and np.issubdtype(feeds[i.name].dtype, np.floating):
            feeds[i.name] = np.asarray(rng.random(feeds[i.name].shape), feeds[i.name].dtype)
    return feeds


def _synthetic(inp, n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded input: symbolic dims take size n; floats N(0,1), integers in [0, n]."""
    shape = [d if isinstance(d, int) and d >= 0 else n for d in inp.shape]
    dt = np.dtype(_ORT_TYPES[inp.type])
    if dt == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if np.issubdtype(dt, np.integer):
        return np.asarray(rng.integers(0, n + 1, size=shape), dtype=dt)
    return np.asarray(rng.standard_normal(shape), dtype=dt)


def _run_and_compare(parity: Parity, sess, feeds: dict, expected: dict, names: list[str],
                     dims: dict, emit) -> bool:
    try:
        got = _run(sess, feeds)
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the rewritten model fails at {_dims_text(dims)}: {_line(e)}", emit)
        return False
    ok = True
    for name in names:
        check = _compare(name, got[name], expected[name], parity.atol, parity.rtol, dims)
        _record(parity, check, emit)
        ok &= check.passed
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


def _fail(parity: Parity, reason: str, emit) -> None:
    parity.status, parity.reason = "failed", reason
    emit(f"FAILED | {reason}")


def _line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] if text else type(e).__name__


__all__ = ["DEFAULT_TOLERANCES", "check_parity", "np_dtype"]
