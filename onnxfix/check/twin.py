"""constant / deterministic parity: compare with the input-noise twin; two runs agree.

constant: the twin is fed the frozen noise (a frozen draw is standardized back to noise).
deterministic: the noise whose transform gives the representative value (each op's
`deterministic_noise`); where an op has none (Dropout, Multinomial), the outputs it reaches
are not compared. Its twin's noise is sized from the shapes the deterministic model draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from onnxfix.check.capture_model import tainted_outputs
from onnxfix.check.check_blame import no_kernel, twin_fails
from onnxfix.check.check_setup import check_dims, check_feeds, check_sizes, inputs_word
from onnxfix.check.compare import (
    CheckSkipped,
    compare_arrays,
    dims_text,
    filler,
    identical,
    input_dtype,
    input_meta,
    run_all,
    symbolic_dims,
)
from onnxfix.check.twin_noise import TwinSizes, measured_sizes, shape_probe, sized_fill
from onnxfix.check.verdicts import fail, record
from onnxfix.errors import ModelError, one_line
from onnxfix.graph.find import find_sites
from onnxfix.ops import OP_TABLE
from onnxfix.ops.noise import NOISE_CENTRE
from onnxfix.report import OutputCheck


@dataclass
class _TwinRun:
    mode: str
    sess: object  # the constant / deterministic model
    probe: object  # deterministic: (session, exposed draw shapes, records) or None
    records: list
    twin: tuple | None  # (input-noise model, its records), rebuilt per size if deterministic
    make_twin: object
    noise_sess: object
    frozen: dict[str, np.ndarray]
    skip: set[str]
    out_names: list[str]


def twin_check(parity, opener, model, records, twin, make_twin, mode, size, seed,
               emit) -> None:
    """The model must equal its input-noise twin fed the noise it stands for; two runs agree."""
    try:
        sess = opener(model)
        probe = _deterministic_probe(opener, model, records) if mode == "deterministic" else None
    except Exception as e:  # noqa: BLE001
        if no_kernel(e):
            raise no_kernel(e) from None
        fail(parity, f"the rewritten model does not load in onnxruntime: {one_line(e)}", emit)
        return
    wanted = {r.replacement.name for r in records}
    run = _TwinRun(mode, sess, probe, records, twin, make_twin,
                   open_twin(opener, twin) if twin is not None else None,
                   {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                    if t.name in wanted},  # the new, in-memory ones: weights stay unread
                   _not_compared(model, records, mode, emit),
                   compared_outputs(model, mode, emit))
    data_inputs = list(sess.get_inputs())
    for k, n in enumerate(check_sizes(size, symbolic_dims(data_inputs))):
        _at_size(parity, opener, run, data_inputs, k, n, seed, emit)


def compared_outputs(model: onnx.ModelProto, mode: str, emit) -> list[str]:
    """The outputs no random node left in place (excluded from the rewrite) reaches: those
    stay random in the `mode` model and its twin alike, so they are not compared (as in
    input-noise mode); a skip when that is every output."""
    kept = find_sites(model)
    sources = [o for site in kept
               for o in (site.scopes[0].owner.output if site.scopes else [site.output])]
    tainted = tainted_outputs(model, sources)
    if any(site.in_function for site in kept):  # its calling node is not traced: all of them
        tainted = {o.name for o in model.graph.output}
    names = [o.name for o in model.graph.output if o.name not in tainted]
    if tainted and not names:
        raise CheckSkipped(f"every output of the {mode} model depends on a random node left "
                           f"in place ({', '.join(site.output for site in kept)}), so no "
                           f"output can be compared")
    if tainted:
        emit(f"NOTE | outputs downstream of unselected random nodes are not compared: "
             f"{', '.join(sorted(tainted))}")
    return names


def _not_compared(model, records, mode: str, emit) -> set[str]:
    """deterministic: outputs reached by an op no noise stands for."""
    if mode != "deterministic":
        return set()
    skip = tainted_outputs(model, [r.output for r in records
                                   if OP_TABLE[r.op_type].deterministic_noise is None])
    if skip:
        emit(f"NOTE | outputs reached by a Dropout or Multinomial are not compared with "
             f"the noise twin (no noise stands for 'no mask' or 'the most probable "
             f"class'): {', '.join(sorted(skip))}")
    return skip


def _at_size(parity, opener, run: _TwinRun, data_inputs, k: int, n: int, seed: int,
             emit) -> None:
    dims = check_dims(data_inputs, n)
    if run.mode == "deterministic":
        parity.sizes.append(dims)
    feeds = check_feeds(data_inputs, n, np.random.default_rng([seed, 100 + k]))
    try:
        first = run_all(run.sess, feeds)
        second = run_all(run.sess, feeds)
    except Exception as e:  # noqa: BLE001 - the model's own limits (a fixed Reshape...)
        raise CheckSkipped(f"the {run.mode} model fails on {inputs_word()} "
                           f"({dims_text(dims)}): {one_line(e)}") from None
    _two_runs_agree(parity, run, first, second, dims, emit)
    sizes = TwinSizes()
    if run.mode == "deterministic":
        sizes = _measure(run.probe, feeds) if run.probe is not None else sizes
        try:
            run.twin = run.make_twin(sizes.bounds)
        except ModelError as e:  # e.g. a data-dependent dim it could not measure
            raise CheckSkipped(f"the deterministic check cannot size its input-noise "
                               f"twin: {e}") from None
        run.noise_sess = open_twin(opener, run.twin)
    noise = _twin_noise(run, sizes, n)
    try:
        want = run_all(run.noise_sess, {**feeds, **noise})
    except Exception as e:  # noqa: BLE001
        raise twin_fails(e, f"rejects the {run.mode} model's noise") from None
    for name in run.out_names:
        if name in run.skip:
            continue
        check = compare_arrays(f"{name} ({run.mode})", first[name], want[name], parity.atol,
                               parity.rtol, dims)
        record(parity, check, emit)
        if not check.passed:
            parity.status = "failed"


def _two_runs_agree(parity, run: _TwinRun, first, second, dims, emit) -> None:
    for name in run.out_names:
        if not identical(first[name], second[name]):
            record(parity, OutputCheck(name, dims, list(first[name].shape), math.inf,
                                       math.inf, False, f"two runs of the {run.mode} model "
                                                        f"differ"), emit)
            parity.status = "failed"


def open_twin(opener, twin):
    """A session of the input-noise twin (model, records); a load failure is blamed on it."""
    try:
        return opener(twin[0])
    except Exception as e:  # noqa: BLE001
        raise twin_fails(e, "does not load in onnxruntime") from None


def _twin_noise(run: _TwinRun, sizes: TwinSizes, n: int) -> dict:
    """The noise that makes the input-noise twin compute what the constant/deterministic
    model computes."""
    noise_name = {r.output: r.replacement.name for r in run.twin[1] if r.replacement}
    noise = {}
    for rec in run.records:
        target = noise_name[rec.output]
        spec = OP_TABLE[rec.op_type]
        if run.mode == "deterministic":
            noise[target] = sized_fill(input_meta(run.noise_sess, target), sizes, n,
                                       _centre(spec), input_dtype(run.noise_sess, target))
            continue
        if rec.replacement.name not in run.frozen:
            # nothing read this draw once the rewrite was done (it only fed another
            # random node's shape), so it was dropped: its noise input reads anything
            noise[target] = filler(run.noise_sess, target, n)
            continue
        value = run.frozen[rec.replacement.name]
        if rec.replacement.name == rec.output:  # the frozen draw itself: standardize it
            value = spec.standardize_frozen(value, rec.distribution)
        noise[target] = np.asarray(value)
    return noise


def _centre(spec) -> float:
    """The deterministic noise; where an op has none, its outputs are not compared and its
    family's centre only fills the input."""
    centre = spec.deterministic_noise
    return NOISE_CENTRE[spec.family] if centre is None else centre


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
