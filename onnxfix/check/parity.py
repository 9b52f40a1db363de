"""Conditional parity in onnxruntime: the rewritten model must compute what the original did.

Outputs downstream of a draw cannot be compared with a fresh run of the original, so the
check conditions on the draws: onnxruntime runs the original with every random node's outputs
(and the inputs its distribution depends on) exposed, which captures the draws it made.
- input-noise: each captured draw is turned back into standard noise consistent with it and
  fed to the rewritten model; every output, and every draw, must match.
- constant: the model is also rewritten in input-noise mode and checked as above; then the
  constant model must equal that model fed with the frozen noise, and two runs must agree.
The inputs and sizes of the passes come from check_setup: real inputs, or synthetic ones by
role at `size` (and size + 1 when the model is dynamic and the first size was cheap).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxfix.check.capture import Exposer
from onnxfix.check.capture_threaded import RAN
from onnxfix.check.check_blame import (
    capture_does_not_load,
    capture_fails,
    no_kernel,
    original_loads,
    twin_fails,
)
from onnxfix.check.check_setup import (
    CheckSetup,
    active,
    check_dims,
    check_feeds,
    check_sizes,
    inputs_word,
    prepare,
)
from onnxfix.check.compare import (
    CHECK_INPUT_BYTES,
    CheckLimit,
    CheckSkipped,
    compare_arrays,
    dims_text,
    filler,
    input_dtype,
    input_meta,
    make_session,
    run_all,
    symbolic_dims,
)
from onnxfix.check.tolerance import path_tolerances
from onnxfix.check.twin_noise import TwinSizes, measured_sizes, shape_probe, sized_fill
from onnxfix.errors import ModelError, one_line
from onnxfix.graph.find import default_opset, find_sites
from onnxfix.graph.shapes import infer_facts
from onnxfix.ops import AffineOp, Inconsistent, attrs_of, np_dtype, spec_for
from onnxfix.report import NodeRecord, OutputCheck, Parity
from onnxfix.reporter import Reporter


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


# measured bounds of data-dependent noise dims -> the input-noise twin and its records
TwinMaker = Callable[[dict[str, int]], tuple[onnx.ModelProto, list[NodeRecord]]]


def check_parity(original: onnx.ModelProto, rewritten: onnx.ModelProto,
                 records: list[NodeRecord], mode: str, *, size: int = 2,
                 atol: float | None = None, rtol: float | None = None, seed: int = 0,
                 twin: TwinMaker | None = None, reporter: Reporter | None = None,
                 weights_folder: str | None = None, setup: CheckSetup | None = None) -> Parity:
    """weights_folder: where external-data weights live (a skeleton's source folder).
    twin: makes the input-noise twin of the rewrite from the same plan (constant and
    deterministic checks need it), given extra bounds for data-dependent noise dims.
    reporter: where the PASSED / FAILED lines go. setup: the check's inputs (given or
    synthetic by role) and limits."""
    def opener(model: onnx.ModelProto):
        _refuse_aborting_draws(model)
        return make_session(model, weights_folder)

    emit = Reporter.of(reporter)
    parity = Parity(status="passed", atol=atol, rtol=rtol)
    done = [r for r in records if r.status == "rewritten"]
    if not done:
        parity.status, parity.reason = "skipped", "no random node was rewritten"
        return parity
    setup = prepare(setup, original, emit)
    try:
        # numpy's warnings on odd values (inf - inf, ...) must not reach the user's stderr
        with warnings.catch_warnings(), np.errstate(all="ignore"), active(setup):
            warnings.simplefilter("ignore")
            _run_checks(parity, opener, original, rewritten, records, done, mode, size, seed,
                        twin, emit)
    except CheckSkipped as e:
        parity.status, parity.reason = "skipped", str(e)
        emit(f"SKIPPED | {e}")
    except (CheckLimit, MemoryError) as e:  # the check's own limit, not a verdict
        parity.status, parity.reason = "skipped", setup.out_of_memory(e)
        emit(f"SKIPPED | {parity.reason}")
    finally:
        parity.inputs = dict(setup.described)
    if parity.status == "failed" and not parity.reason:
        bad = [c for c in parity.outputs if not c.passed]
        parity.reason = f"{len(bad)} comparison(s) out of tolerance"
    return parity


def _run_checks(parity, opener, original, rewritten, records, done, mode, size, seed,
                make_twin: TwinMaker | None, emit) -> None:
    if mode == "input-noise":
        _conditional(parity, opener, original, rewritten, records, size, seed, emit)
        return
    if make_twin is None:
        raise ValueError(f"a {mode} check needs its input-noise twin (twin=...)")
    if mode == "deterministic":  # it is not run below: whether it runs decides skip or verdict
        original_loads(opener, _inlined(original))
    twin = make_twin({}) if mode == "constant" else None
    if mode == "constant":
        _conditional(parity, opener, original, *twin, size, seed, emit)
    if parity.status != "failed":
        _twin_check(parity, opener, rewritten, done, twin, make_twin, mode, size, seed, emit)


def _inlined(original: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with local functions holding random nodes inlined (their draws become visible)."""
    from onnxfix.graph.functions import inline_random_functions

    base = onnx.ModelProto()
    base.CopyFrom(original)
    return inline_random_functions(base)


def _refuse_aborting_draws(model: onnx.ModelProto) -> None:
    """onnxruntime aborts the whole process on some parameters (scale <= 0, low >= high)."""
    for site in find_sites(model):
        why = spec_for(site.node).ort_can_draw(site.node)
        if why:
            raise CheckSkipped(f"onnxruntime aborts the process drawing from {why}, so the "
                               f"model cannot be run")


# -- input-noise: condition on the original's draws --------------------------------------

def _conditional(parity: Parity, opener, original, noise_model, records, size, seed,
                 emit) -> None:

    base = _inlined(original)
    captures, capture_model, exposer = _capture_model(base, records)
    try:
        orig_sess = opener(capture_model)
    except CheckSkipped:
        raise
    except Exception as e:  # noqa: BLE001 - ORT raises several types
        raise capture_does_not_load(opener, base, e) from None
    out_set = {o.name for o in original.graph.output}
    lossy = _narrowed(records)
    exposed = _main_draws(captures, _main_names(noise_model), out_set, lossy)
    draws = list(exposed)
    cut_sess = None
    if lossy:
        if any(c.lead or c.branches or c.record.graph != "main" for c in captures):
            raise CheckSkipped("--noise-dtype narrower than a draw inside a subgraph: the draws "
                        "cannot be fed back to the original")
        cut_sess = opener(_cut_model(base, draws))
    own_logits = _own_logits(captures, noise_model)
    probe = _with_outputs(noise_model, draws + sorted(set(own_logits.values())))
    try:
        new_sess = opener(probe)
    except Exception as e:  # noqa: BLE001
        if no_kernel(e):
            raise no_kernel(e) from None
        _fail(parity, f"the rewritten model does not load in onnxruntime: {one_line(e)}", emit)
        return
    noise_inputs = {r.replacement.name: r for r in records if r.replacement
                    and r.replacement.kind == "input"}
    data_inputs = [i for i in new_sess.get_inputs() if i.name not in noise_inputs]
    probabilities = {c.node.input[0] for c in captures if c.node.op_type == "Bernoulli"}
    symbols = symbolic_dims(data_inputs)
    tainted = _tainted_outputs(base, [r.output for r in records if r.status == "kept"])
    out_names = [o.name for o in original.graph.output if o.name not in tainted]
    if tainted:
        emit(f"NOTE | outputs downstream of unselected random nodes are not compared: "
             f"{', '.join(sorted(tainted))}")
    tolerances = path_tolerances(base, [c.record.output for c in captures], out_names)
    for k, n in enumerate(check_sizes(size, symbols)):
        dims = check_dims(data_inputs, n)
        parity.sizes.append(dims)
        feeds = check_feeds(data_inputs, n, np.random.default_rng([seed, k]), probabilities)
        try:
            got = run_all(orig_sess, feeds)
        except Exception as e:  # noqa: BLE001
            raise capture_fails(opener, base, feeds, dims, e) from None
        exposer.decode(got)
        noise = {}
        for c in captures:
            fed = input_dtype(new_sess, c.record.replacement.name)
            # np.asarray: numpy arithmetic turns 0-d arrays into scalars ORT does not take
            noise[c.record.replacement.name] = np.asarray(
                _standard_noise(c, got, new_sess, n), dtype=fed)
            over = _over_bound(c.record, noise[c.record.replacement.name])
            if over:
                _fail(parity, f"at {dims_text(dims)} the check's inputs need {over}; raise the "
                              f"bound or give the check smaller inputs", emit)
                return
        for name in noise_inputs:
            if name not in noise:  # e.g. its node was in an If branch not taken
                noise[name] = filler(new_sess, name, n)
        _recondition(captures, own_logits, got, {**feeds, **noise}, noise, new_sess, n)
        expected = {**{o: got[o] for o in out_names},
                    **{d: got[exposed[d]] for d in draws}}
        if lossy:
            ok = _lossy_compare(parity, new_sess, cut_sess, feeds, noise, expected, out_names,
                                draws, dims, emit)
        else:
            ok = _run_and_compare(parity, new_sess, {**feeds, **noise}, expected,
                                  out_names + draws, dims, emit, tolerances)
        if k == 0 and not _distributions(parity, captures, got, base, seed, emit):
            ok = False
        if not ok:
            parity.status = "failed"


def _distributions(parity, captures, got, base, seed, emit) -> bool:
    """The distribution test of each draw whose transform is not the identity on its noise."""
    from onnxfix.check.distribution_check import check_distributions, wants_test
    from onnxfix.graph.find import default_opset

    ran = []
    for c in captures:
        if all(bool(np.asarray(got[cond]).reshape(-1)[0]) == want for cond, want in c.branches) \
                and all(got[name] is not None for name in c.inputs.values()):
            ran.append(c)  # (None: under an If in a Loop, the branch ran in no iteration)
        elif wants_test(c.node.op_type, c.record.replacement):
            emit(f"NOTE | distribution | {c.node.op_type} '{c.record.output}': not tested, "
                 f"its If branch did not run on the check's inputs")
    draws = [(c.node, c.lead, {i: got[name] for i, name in c.inputs.items()},
              c.record.replacement) for c in ran]
    return check_distributions(parity, draws, default_opset(base), base.ir_version, seed, emit)


def _over_bound(record: NodeRecord, noise: np.ndarray) -> str:
    """'N on <bound name>, over its bound B' when a captured draw outgrows a bounded dim."""
    for d in record.replacement.dims:
        if (d["kind"] == "bounded" and d["axis"] < noise.ndim
                and noise.shape[d["axis"]] > d["size"]):
            return f"{noise.shape[d['axis']]} on {d['name']}, over its bound {d['size']}"
    return ""


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
        got = run_all(new_sess, {**feeds, **noise})
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the rewritten model fails at {dims_text(dims)}: {one_line(e)}", emit)
        return False
    ok = True
    for d in draws:
        check = compare_arrays(f"{d} (narrowed noise)", got[d], expected[d], 4e-3, 4e-3, dims)
        _record(parity, check, emit)
        ok &= check.passed
    try:
        want = run_all(cut_sess, {**feeds, **{d: got[d] for d in draws}})
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the original fed the rewritten draws fails: {one_line(e)}", emit)
        return False
    for name in out_names:
        check = compare_arrays(name, got[name], want[name], parity.atol, parity.rtol, dims)
        _record(parity, check, emit)
        ok &= check.passed
    return ok


def _cut_model(base: onnx.ModelProto, draws: list[str]) -> onnx.ModelProto:
    """The original with its main-graph random nodes cut out and their draws fed as inputs.

    Graph surgery of the textbook kind, so onnx-graphsurgeon does it: each draw tensor becomes
    a graph input, its producer loses it, and cleanup drops what only fed the cut nodes.
    Weights are not touched: graphsurgeon reads initializer values only on demand and exports
    the original tensors (external-data references included) as they were.
    """
    import onnx_graphsurgeon as gs

    facts = infer_facts(base)
    graph = gs.import_onnx(base)
    tensors = graph.tensors()
    cut = set(draws)
    for node in graph.nodes:
        if node.outputs and node.outputs[0].name in cut:
            node.outputs.clear()
    for d in draws:
        f = facts.get(d)
        elem = f.elem_type if f and f.elem_type else onnx.TensorProto.FLOAT
        feed = tensors[d]
        feed.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        graph.inputs.append(feed)
    graph.cleanup(remove_unused_graph_inputs=False)
    cut_model = gs.export_onnx(graph, do_type_check=False)
    cut_model.ir_version = base.ir_version
    del cut_model.opset_import[:]
    cut_model.opset_import.extend(base.opset_import)
    return cut_model


def _main_names(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node for o in n.output} | {
        t.name for t in model.graph.initializer}


def _main_draws(captures: list[_Captured], main: set[str], out_set: set[str],
                lossy: bool) -> dict[str, str]:
    """Main-graph draw tensors of the rewritten model -> their captures from the original.

    A Dropout's mask is a draw too: cutting the node out of the original must feed it.
    """
    exposed = {}
    for c in captures:
        if c.lead or c.record.output not in main:
            continue
        for i, out in enumerate(c.node.output):
            if out in main and i in c.outputs and (lossy or out not in out_set):
                exposed[out] = c.outputs[i]
    return exposed


def _capture_model(base: onnx.ModelProto, records) -> tuple[list[_Captured], onnx.ModelProto,
                                                             Exposer]:
    model = onnx.ModelProto()
    model.CopyFrom(base)
    facts = infer_facts(model)
    sites = {s.output: s for s in find_sites(model)}
    opset = default_opset(model)
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
        pad = _bounds_padder(model, site, rec, lead, facts, exposer.names)
        for i, out in enumerate(node.output):
            if out:
                elem = _elem(facts, out, rec)
                if node.op_type == "Dropout" and i == 1:  # float before Dropout-10
                    elem = onnx.TensorProto.BOOL if opset >= 10 else _elem(facts, node.output[0],
                                                                           rec)
                cap.outputs[i] = exposer.expose(pad(out, "draw"), elem, site.scopes)
        wanted = set(spec.capture_inputs(node))
        for i, inp in enumerate(node.input):
            if inp and inp in wanted:
                cap.inputs[i] = exposer.expose(pad(inp, "source" if i == 0 else ""),
                                               _elem(facts, inp, rec), site.scopes)
        captures.append(cap)
    return captures, model, exposer


def _bounds_padder(model, site, rec, lead: int, facts, names):
    """name, role -> name padded to the bounds of a per-iteration draw (see pad_to_bounds)."""
    from onnxfix.check.twin_noise import draw_axis
    from onnxfix.graph.builder import NodeBuilder
    from onnxfix.graph.find import default_opset
    from onnxfix.graph.noisedims import BOUNDED, pad_to_bounds

    bounded = [d for d in rec.replacement.dims if d["kind"] == BOUNDED and d["axis"] >= lead]
    if not lead or not bounded:
        return lambda name, role: name

    def pad(name: str, role: str) -> str:
        f = facts.get(name)
        if not role or f is None or f.shape is None:
            return name
        axes = {}
        for d in bounded:
            a = (draw_axis(rec.op_type, d["axis"] - lead) if role == "draw"
                 else d.get("source_axis"))
            if a is not None and a < len(f.shape):
                axes[a] = d["size"]
        if not axes:
            return name
        b = NodeBuilder(names, default_opset(model), f"onnxfix_check_{name}")
        try:
            padded = pad_to_bounds(b, name, len(f.shape), axes)
        except ModelError as e:
            raise CheckSkipped(str(e)) from None
        site.container.node.extend(b.nodes)
        return padded

    return pad


def _elem(facts, name: str, rec: NodeRecord) -> int:
    f = facts.get(name)
    if f is not None and f.elem_type:
        return f.elem_type
    return onnx.TensorProto.DataType.Value(rec.replacement.dtype.upper())


def _own_logits(captures: list[_Captured], noise_model: onnx.ModelProto) -> dict[int, str]:
    """Capture index -> the normalized-cdf tensor of each main-graph Multinomial's transform
    in the rewritten model."""
    from onnxfix.ops import MultinomialOp

    found = {}
    for k, c in enumerate(captures):
        if c.node.op_type == "Multinomial" and not c.lead and not c.branches \
                and c.record.graph == "main":
            name = MultinomialOp.cdf_tensor(noise_model.graph.node, c.record.replacement.name)
            if name:
                found[k] = name
    return found


def _recondition(captures, own_logits: dict[int, str], got: dict, feeds: dict, noise: dict,
                 sess, n: int) -> None:
    """Standardize each Multinomial draw against the cdf the rewritten model computes.

    An inverse CDF over many classes turns an ulp of difference anywhere in its weights into
    a shift of its class boundaries (50k classes: ~1e-5, half a class), and onnxruntime
    rounds them an ulp apart from one graph (or memory plan) to another. The sample is what
    is conditioned on; the boundaries it is reproduced between are the rewritten model's own,
    read from the same session that is then compared.
    """
    if not own_logits:
        return
    try:
        seen = run_all(sess, feeds)
    except Exception:  # noqa: BLE001 - the comparison run reports it
        return
    for k, name in own_logits.items():
        c = captures[k]
        fed = input_dtype(sess, c.record.replacement.name)
        picks = got[c.outputs[0]]
        try:
            u = spec_for(c.node).noise_for(picks, seen[name], fed, safe_ulps=0)
        except Inconsistent as e:
            raise CheckSkipped(f"cannot condition on the draw of {c.record.op_type} "
                               f"'{c.record.output}': {e}") from None
        noise[c.record.replacement.name] = np.asarray(u, dtype=fed)


def _standard_noise(c: _Captured, got: dict, sess, n: int) -> np.ndarray:
    spec = spec_for(c.node)
    attrs = attrs_of(c.node)
    outs = {i: got[name] for i, name in c.outputs.items()}
    ins = {i: got[name] for i, name in c.inputs.items()}
    repl = c.record.replacement
    fed = input_dtype(sess, repl.name)
    noise_dtype = fed
    if repl.cast_to:
        natural = np_dtype(onnx.TensorProto.DataType.Value(repl.cast_to.upper()))
        # discrete draws: build the noise within the narrower dtype, so it survives the cast
        noise_dtype = fed if fed.itemsize < natural.itemsize else natural
    if any(bool(np.asarray(got[cond]).reshape(-1)[0]) != want for cond, want in c.branches) \
            or any(v is None for v in (*outs.values(), *ins.values())):
        return filler(sess, c.record.replacement.name, n)  # its If branch did not run
    if outs and all(np.asarray(v).size == 0 for v in outs.values()):
        return filler(sess, c.record.replacement.name, n)  # its loop ran no iteration
    noise = _standardized(c, spec, attrs, outs, ins, noise_dtype)
    ran = got.get(RAN + c.outputs[0])
    if ran is not None:  # under an If in a Loop: iterations without the draw read filler
        ran = ran.reshape(ran.shape + (1,) * (noise.ndim - ran.ndim))
        noise = np.where(ran, noise, np.asarray(0.5, noise.dtype))
    return _fit(noise, sess, c.record.replacement.name)


def _fit(noise: np.ndarray, sess, name: str) -> np.ndarray:
    """Pad to a declared iteration axis longer than the loop ran (the rest is never read)."""
    declared = input_meta(sess, name).shape or []
    if len(declared) != noise.ndim:
        return noise
    pad = [(0, d - have) if isinstance(d, int) and d > have else (0, 0)
           for d, have in zip(declared, noise.shape, strict=True)]
    padded = math.prod(have + after for have, (_, after) in zip(noise.shape, pad, strict=True))
    if padded * noise.dtype.itemsize > CHECK_INPUT_BYTES:
        raise CheckSkipped(f"noise input '{name}' declares {declared}: padding the captured "
                           f"draws to it would take over {CHECK_INPUT_BYTES:,} bytes")
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
        if c.lead:
            ins = _per_iteration(ins, c.lead, max(v.ndim for v in outs.values()))
        return spec.standardize(outs, attrs, ins, noise_dtype)
    except Inconsistent as e:
        raise CheckSkipped(f"cannot condition on the draw of {c.record.op_type} "
                    f"'{c.record.output}': {e}") from None


def _per_iteration(ins: dict, lead: int, rank: int) -> dict:
    """Inputs captured once per iteration (a Dropout ratio: [trips]) broadcast per element."""
    return {i: v.reshape(v.shape + (1,) * (rank - v.ndim)) if lead <= v.ndim < rank else v
            for i, v in ins.items()}


def _tainted_outputs(model: onnx.ModelProto, sources: list[str]) -> set[str]:
    """Main-graph outputs that depend on any of `sources` (draws left random)."""
    if not sources:
        return set()
    from onnxfix.graph.graph_edit import names_read

    tainted = set(sources)
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if names_read(node) & tainted and not set(node.output) <= tainted:
                tainted.update(o for o in node.output if o)
                changed = True
    return {o.name for o in model.graph.output if o.name in tainted}


# -- constant / deterministic: compare with the input-noise twin ------------------------------

def _twin_check(parity, opener, model, records, twin, make_twin, mode, size, seed,
                emit) -> None:
    """The model must equal its input-noise twin fed the noise it stands for; two runs agree.

    constant: the frozen noise (a frozen draw is standardized back to noise).
    deterministic: the noise whose transform gives the representative value (0 for normal
    draws, 0.5 for uniform ones); Dropout has none, so outputs it reaches are not compared.
    Its twin's noise is sized from the shapes the deterministic model really draws.
    """
    try:
        sess = opener(model)
        probe = _deterministic_probe(opener, model, records) if mode == "deterministic" else None
    except Exception as e:  # noqa: BLE001
        if no_kernel(e):
            raise no_kernel(e) from None
        _fail(parity, f"the rewritten model does not load in onnxruntime: {one_line(e)}", emit)
        return
    noise_sess = _open_twin(opener, twin) if twin is not None else None
    wanted = {r.replacement.name for r in records}
    frozen = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer
              if t.name in wanted}  # the new, in-memory ones: model weights stay unread
    data_inputs = list(sess.get_inputs())
    symbols = symbolic_dims(data_inputs)
    skip = set()
    if mode == "deterministic":
        # no noise means 'no mask'; the inverse CDF has no u that is ArgMax for all logits
        skip = _tainted_outputs(model, [r.output for r in records
                                        if r.op_type in ("Dropout", "Multinomial")])
        if skip:
            emit(f"NOTE | outputs reached by a Dropout or Multinomial are not compared with "
                 f"the noise twin (no noise stands for 'no mask' or 'the most probable "
                 f"class'): {', '.join(sorted(skip))}")
    out_names = [o.name for o in model.graph.output]
    for k, n in enumerate(check_sizes(size, symbols)):
        dims = check_dims(data_inputs, n)
        if mode == "deterministic":
            parity.sizes.append(dims)
        feeds = check_feeds(data_inputs, n, np.random.default_rng([seed, 100 + k]))
        try:
            first = run_all(sess, feeds)
            second = run_all(sess, feeds)
        except Exception as e:  # noqa: BLE001 - the model's own limits (a fixed Reshape...)
            raise CheckSkipped(f"the {mode} model fails on {inputs_word()} "
                               f"({dims_text(dims)}): {one_line(e)}") from None
        for name in out_names:
            if not np.array_equal(first[name], second[name],
                                  equal_nan=np.issubdtype(first[name].dtype, np.floating)):
                _record(parity, OutputCheck(name, dims, list(first[name].shape), math.inf,
                                            math.inf, False, f"two runs of the {mode} model "
                                                             f"differ"), emit)
                parity.status = "failed"
        sizes = TwinSizes()
        if mode == "deterministic":
            sizes = _measure(probe, feeds) if probe is not None else sizes
            try:
                twin = make_twin(sizes.bounds)
            except ModelError as e:  # e.g. a data-dependent dim it could not measure
                raise CheckSkipped(f"the deterministic check cannot size its input-noise "
                                   f"twin: {e}") from None
            noise_sess = _open_twin(opener, twin)
        noise = _twin_noise(records, twin[1], noise_sess, frozen, sizes, mode, n)
        try:
            want = run_all(noise_sess, {**feeds, **noise})
        except Exception as e:  # noqa: BLE001
            raise twin_fails(e, f"rejects the {mode} model's noise") from None
        for name in out_names:
            if name in skip:
                continue
            check = compare_arrays(f"{name} ({mode})", first[name], want[name], parity.atol,
                             parity.rtol, dims)
            _record(parity, check, emit)
            if not check.passed:
                parity.status = "failed"


def _open_twin(opener, twin):
    try:
        return opener(twin[0])
    except Exception as e:  # noqa: BLE001
        raise twin_fails(e, "does not load in onnxruntime") from None


def _twin_noise(records, twin_records, noise_sess, frozen, sizes, mode, n) -> dict:
    """The noise that makes the input-noise twin compute what the constant/deterministic
    model computes."""
    noise_name = {r.output: r.replacement.name for r in twin_records if r.replacement}
    noise = {}
    for rec in records:
        target = noise_name[rec.output]
        if mode == "deterministic":
            fam = rec.distribution["family"]
            noise[target] = sized_fill(input_meta(noise_sess, target), sizes, n,
                                       0.0 if fam == "normal" else 0.5,
                                       input_dtype(noise_sess, target))
            continue
        if rec.replacement.name not in frozen:
            # nothing read this draw once the rewrite was done (it only fed another
            # random node's shape), so it was dropped: its noise input reads anything
            noise[target] = filler(noise_sess, target, n)
            continue
        value = frozen[rec.replacement.name]
        if rec.replacement.name == rec.output:  # the frozen draw itself: standardize it
            spec, attrs = _affine_of(rec)
            value = spec.standardize({0: value}, attrs)
        noise[target] = np.asarray(value)
    return noise


def _deterministic_probe(opener, model, records):
    """A session exposing the shape of each deterministic draw, or None where it cannot."""
    try:
        probe, exposed = shape_probe(model, records)
        return opener(probe), exposed, records
    except Exception:  # noqa: BLE001 - a draw it cannot expose: sizing falls back to the
        return None    # check size, as before


def _measure(probe, feeds) -> TwinSizes:
    sess, exposed, records = probe
    try:
        got = dict(zip(list(exposed.values()), sess.run(list(exposed.values()), feeds),
                       strict=True))
    except Exception:  # noqa: BLE001 - e.g. an If inside a loop: sizes fall back
        return TwinSizes()
    return measured_sizes(records, exposed, got)


def _affine_of(rec: NodeRecord):
    from onnxfix.ops import OP_TABLE

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


def _run_and_compare(parity: Parity, sess, feeds: dict, expected: dict, names: list[str],
                     dims: dict, emit, tolerances: dict | None = None) -> bool:
    """tolerances: per output, defaults of a narrower float on its path (user values win)."""
    try:
        got = run_all(sess, feeds)
    except Exception as e:  # noqa: BLE001
        _fail(parity, f"the rewritten model fails at {dims_text(dims)}: {one_line(e)}", emit)
        return False
    ok = True
    for name in names:
        atol, rtol, narrow = (tolerances or {}).get(name, (None, None, ""))
        atol = parity.atol if parity.atol is not None else atol
        rtol = parity.rtol if parity.rtol is not None else rtol
        check = compare_arrays(name, got[name], expected[name], atol, rtol, dims)
        if narrow and not check.note:
            check.note = f"{narrow} tolerance: a {narrow} tensor lies between a draw and it"
        _record(parity, check, emit)
        ok &= check.passed
    return ok


def _record(parity: Parity, check: OutputCheck, emit) -> None:
    parity.outputs.append(check)
    word = "PASSED" if check.passed else "FAILED"
    note = f" | {check.note}" if check.note else ""
    emit(f"{word} | {dims_text(check.dims)} | Output: '{check.name}' {check.shape} | "
         f"max abs err {check.max_abs_err:.3g} | max rel err {check.max_rel_err:.3g}{note}")


def _fail(parity: Parity, reason: str, emit) -> None:
    parity.status, parity.reason = "failed", reason
    emit(f"FAILED | {reason}")


__all__ = ["check_parity"]
