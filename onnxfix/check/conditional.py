"""input-noise parity: condition the rewritten model on the draws the original made.

onnxruntime runs the capture model (the original with its draws exposed); each captured draw
is turned back into standard noise and fed to the rewritten model, whose outputs and draws
must then match the original's. The draws' distribution is tested once, at the first size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxfix.check.capture_model import (
    Captured,
    capture_model,
    cut_model,
    inlined,
    main_draws,
    main_names,
    tainted_outputs,
    with_outputs,
)
from onnxfix.check.check_blame import capture_does_not_load, capture_fails, no_kernel
from onnxfix.check.check_setup import check_dims, check_feeds, check_sizes
from onnxfix.check.compare import (
    CheckSkipped,
    compare_arrays,
    dims_text,
    filler,
    input_dtype,
    run_all,
    symbolic_dims,
)
from onnxfix.check.distribution_check import check_distributions, wants_test
from onnxfix.check.draw_noise import (
    UnlikelyDraw,
    over_bound,
    own_references,
    recondition,
    standard_noise,
    standard_noises,
)
from onnxfix.check.tolerance import path_tolerances
from onnxfix.check.verdicts import fail, record, run_and_compare
from onnxfix.errors import one_line
from onnxfix.graph.find import default_opset
from onnxfix.graph.shapes import infer_facts
from onnxfix.report import NodeRecord, Parity

NARROW_TOLERANCE = 4e-3  # atol and rtol of a draw made from noise fed as float16
# times the original is run again when it drew a value its noise dtype cannot reproduce (a
# Multinomial class whose float32 interval rounds to nothing: rare, but not a rewrite error)
REDRAWS = 3


@dataclass
class _Conditioning:
    """The check's sessions and what it compares, fixed before the first size."""

    base: onnx.ModelProto  # the original, random functions inlined
    captures: list[Captured]
    exposer: object
    orig_sess: object
    new_sess: object
    cut_sess: object  # the original fed the draws (--noise-dtype), else None
    exposed: dict[str, str]  # rewritten model's draw tensor -> its capture
    own: dict[int, str]  # capture index -> rewritten tensor it is re-standardized against
    noise_inputs: list[str]
    data_inputs: list
    out_names: list[str]
    tolerances: dict
    probabilities: set[str]

    @property
    def draws(self) -> list[str]:
        return list(self.exposed)


def conditional(parity: Parity, opener, original: onnx.ModelProto,
                noise_model: onnx.ModelProto, records: list[NodeRecord], size: int,
                seed: int, emit) -> _Conditioning | None:
    """Compare `noise_model` (input-noise) with `original` at each check size; record the
    verdicts in `parity`. Returns the sessions and captures it compared with (None if it
    stopped before it had them): a caller that ends the check there may let them go after
    its answer is out (check.held)."""
    cond = _prepare(parity, opener, inlined(original), original, noise_model, records, emit)
    if cond is None:
        return None
    for k, n in enumerate(check_sizes(size, symbolic_dims(cond.data_inputs))):
        ok = _at_size(parity, cond, opener, k, n, seed, emit)
        if ok is None:
            return cond
        if not ok:
            parity.status = "failed"
    return cond


def _prepare(parity, opener, base, original, noise_model, records, emit):
    # one inference of the original serves the capture model, the probe's output types and
    # the tolerances, and is dropped before the sessions are built (peak memory)
    facts = infer_facts(base)
    captures, capture, exposer = capture_model(base, records, facts)
    lossy = narrowed(records)
    exposed = main_draws(captures, main_names(noise_model),
                         {o.name for o in original.graph.output}, lossy)
    own = own_references(captures, noise_model)
    probe = list(exposed) + sorted(set(own.values()))
    typed = {name: facts[name] for name in probe if _elem_known(facts, name)}
    tolerances = path_tolerances(base, [c.record.output for c in captures],
                                 [o.name for o in original.graph.output], facts)
    del facts
    try:
        orig_sess = opener(capture)
    except CheckSkipped:
        raise
    except Exception as e:  # noqa: BLE001 - ORT raises several types
        raise capture_does_not_load(opener, base, e) from None
    cut_sess = None
    if lossy:
        if any(c.lead or c.branches or c.record.graph != "main" for c in captures):
            raise CheckSkipped("--noise-dtype narrower than a draw inside a subgraph: the draws "
                               "cannot be fed back to the original")
        cut_sess = opener(cut_model(base, list(exposed)))
    new_sess = _open_rewritten(parity, opener, noise_model, probe,
                               typed if len(typed) == len(probe) else None, emit)
    if new_sess is None:
        return None
    noise_inputs = [r.replacement.name for r in records
                    if r.replacement and r.replacement.kind == "input"]
    out_names = _compared_outputs(base, original, records, emit)
    fed = set(noise_inputs)
    return _Conditioning(
        base, captures, exposer, orig_sess, new_sess, cut_sess, exposed, own, noise_inputs,
        [i for i in new_sess.get_inputs() if i.name not in fed], out_names,
        {name: t for name, t in tolerances.items() if name in out_names},
        {i for c in captures for i in c.spec.probability_inputs(c.node)})


def _open_rewritten(parity, opener, noise_model, names, typed, emit):
    """A session of the rewritten model that also outputs `names`.

    A draw keeps its name and dtype in the rewritten model, so the original's types (`typed`:
    name -> its facts there, None when some name has none) declare those outputs without
    inferring the rewritten model again (onnxruntime refuses a declared type its own
    inference contradicts). A probe so typed that does not load is built as it always was,
    from the rewritten model's own inference, and that one's error is what is reported."""
    if typed is not None:
        try:
            return opener(with_outputs(noise_model, names, typed))
        except Exception:  # noqa: BLE001, S110 - the usual probe below says what is wrong
            pass
    try:
        return opener(with_outputs(noise_model, names))
    except Exception as e:  # noqa: BLE001
        if no_kernel(e):
            raise no_kernel(e) from None
        fail(parity, f"the rewritten model does not load in onnxruntime: {one_line(e)}", emit)
        return None


def _elem_known(facts, name: str) -> bool:
    f = facts.get(name)
    return f is not None and bool(f.elem_type)


def _compared_outputs(base, original, records, emit) -> list[str]:
    tainted = tainted_outputs(base, [r.output for r in records if r.status == "kept"])
    if tainted:
        emit(f"NOTE | outputs downstream of unselected random nodes are not compared: "
             f"{', '.join(sorted(tainted))}")
    return [o.name for o in original.graph.output if o.name not in tainted]


def _at_size(parity, cond: _Conditioning, opener, k: int, n: int, seed: int,
             emit) -> bool | None:
    """One check size: False on a mismatch, None when the check must stop here."""
    dims = check_dims(cond.data_inputs, n)
    parity.sizes.append(dims)
    feeds = check_feeds(cond.data_inputs, n, np.random.default_rng([seed, k]),
                        cond.probabilities)
    got, noise = with_redraws(lambda: _draw(parity, cond, opener, feeds, n, dims, emit), emit)
    if noise is None:
        return None
    expected = {**{o: got[o] for o in cond.out_names},
                **{d: got[cond.exposed[d]] for d in cond.draws}}
    if cond.cut_sess is not None:
        ok = _lossy_compare(parity, cond, feeds, noise, expected, dims, emit)
    else:
        ok = run_and_compare(parity, cond.new_sess, {**feeds, **noise}, expected,
                             cond.out_names + cond.draws, dims, emit, cond.tolerances)
    if k == 0 and not _distributions(parity, cond, got, emit, seed):
        ok = False
    return ok


def with_redraws(attempt, emit):
    """attempt(), run again (up to REDRAWS more times) while it draws an UnlikelyDraw."""
    for left in range(REDRAWS, -1, -1):
        try:
            return attempt()
        except UnlikelyDraw as e:
            if not left:
                raise
            emit(f"NOTE | redrawn | {e}; the original is run again")
    raise AssertionError("unreachable")


def _draw(parity, cond: _Conditioning, opener, feeds: dict, n: int, dims: dict, emit
          ) -> tuple[dict, dict | None]:
    """The original's outputs and draws on `feeds`, and the noise that reproduces them (None
    when the check must stop)."""
    try:
        got = run_all(cond.orig_sess, feeds)
    except Exception as e:  # noqa: BLE001
        raise capture_fails(opener, cond.base, feeds, dims, e) from None
    cond.exposer.decode(got)
    noise = _noise(parity, cond, got, n, dims, emit)
    if noise is not None:
        recondition(cond.captures, cond.own, got, {**feeds, **noise}, noise, cond.new_sess)
    return got, noise


def _noise(parity, cond: _Conditioning, got: dict, n: int, dims: dict, emit) -> dict | None:
    """Every noise input: from its captured draw, else filler (e.g. an If branch not taken).
    A draw re-standardized against the rewritten model's own reference gets provisional noise
    here; `recondition` replaces it."""
    noise = {}
    made = standard_noises(cond.captures, got, cond.new_sess, cond.own) or {}
    for k, c in enumerate(cond.captures):
        name = c.record.replacement.name
        fed = input_dtype(cond.new_sess, name)
        # np.asarray: numpy arithmetic turns 0-d arrays into scalars ORT does not take
        noise[name] = np.asarray(standard_noise(c, got, cond.new_sess, n, k in cond.own,
                                                made.get(k)), dtype=fed)
        over = over_bound(c.record, noise[name])
        if over:
            fail(parity, f"at {dims_text(dims)} the check's inputs need {over}; raise the "
                         f"bound or give the check smaller inputs", emit)
            return None
    for name in cond.noise_inputs:
        if name not in noise:
            noise[name] = filler(cond.new_sess, name, n)
    return noise


def _distributions(parity, cond: _Conditioning, got, emit, seed) -> bool:
    """The distribution test of each draw whose transform is not the identity on its noise."""
    ran = []
    for c in cond.captures:
        if c.ran(got):
            ran.append(c)
        elif wants_test(c.node.op_type, c.record.replacement):
            emit(f"NOTE | distribution | {c.node.op_type} '{c.record.output}': not tested, "
                 f"its If branch did not run on the check's inputs")
    draws = [(c.node, c.lead, {i: got[name] for i, name in c.inputs.items()},
              c.record.replacement, c.spec) for c in ran]
    return check_distributions(parity, draws, default_opset(cond.base), cond.base.ir_version,
                               seed, emit)


def narrowed(records) -> bool:
    """Some noise is fed in a narrower dtype than its draw needs (--noise-dtype)."""
    order = {"float16": 0, "bfloat16": 0, "float": 1, "double": 2}
    return any(r.replacement is not None and r.replacement.cast_to
               and order.get(r.replacement.dtype, 1) < order.get(r.replacement.cast_to, 1)
               for r in records)


def _lossy_compare(parity, cond: _Conditioning, feeds, noise, expected, dims, emit) -> bool:
    """Noise fed in a narrower dtype reproduces the draws only to that dtype's precision.

    The draws are compared with the original's at that precision; every output is compared,
    at the usual tolerance, with the original graph fed the draws the rewritten model made.
    """
    try:
        got = run_all(cond.new_sess, {**feeds, **noise})
    except Exception as e:  # noqa: BLE001
        fail(parity, f"the rewritten model fails at {dims_text(dims)}: {one_line(e)}", emit)
        return False
    ok = True
    for d in cond.draws:
        check = compare_arrays(f"{d} (narrowed noise)", got[d], expected[d], NARROW_TOLERANCE,
                               NARROW_TOLERANCE, dims)
        record(parity, check, emit)
        ok &= check.passed
    try:
        want = run_all(cond.cut_sess, {**feeds, **{d: got[d] for d in cond.draws}})
    except Exception as e:  # noqa: BLE001
        fail(parity, f"the original fed the rewritten draws fails: {one_line(e)}", emit)
        return False
    for name in cond.out_names:
        check = compare_arrays(name, got[name], want[name], parity.atol, parity.rtol, dims)
        record(parity, check, emit)
        ok &= check.passed
    return ok
