"""Conditional parity in onnxruntime: the rewritten model must compute what the original did.

Outputs downstream of a draw cannot be compared with a fresh run of the original, so the
check conditions on the draws: onnxruntime runs the original with every random node's outputs
(and the inputs its distribution depends on) exposed, which captures the draws it made.
- input-noise: each captured draw is turned back into standard noise consistent with it and
  fed to the rewritten model; every output, and every draw, must match.
- constant: its input-noise twin (emitted from the same plan) is checked as above; then the
  constant model must equal that model fed with the frozen noise, and two runs must agree.
- deterministic: the model must equal its input-noise twin fed each op's deterministic noise.
The input-noise comparison lives in `conditional`, the twin comparison in `twin`.
The inputs and sizes of the passes come from check_setup: real inputs, or synthetic ones by
role at `size` (and size + 1 when the model is dynamic and the first size was cheap).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import onnx

from onnxfix.check.capture_model import inlined as _inlined
from onnxfix.check.check_blame import original_loads
from onnxfix.check.check_setup import CheckSetup, active, prepare
from onnxfix.check.compare import CheckLimit, CheckSkipped, make_session
from onnxfix.check.conditional import conditional as _conditional
from onnxfix.check.held import release_later
from onnxfix.graph.find import find_sites
from onnxfix.ops import spec_for
from onnxfix.report import NodeRecord, Parity
from onnxfix.reporter import Reporter

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
    if mode == "input-noise":  # the last thing the check does: what it held can wait
        release_later(_conditional(parity, opener, original, rewritten, records, size, seed,
                                   emit))
        return
    if make_twin is None:
        raise ValueError(f"a {mode} check needs its input-noise twin (twin=...)")
    if mode == "deterministic":  # it is not run below: whether it runs decides skip or verdict
        original_loads(opener, _inlined(original))
    # the twin and seeded checks import what an input-noise check never runs (start-up)
    from onnxfix.check.twin import twin_check  # noqa: PLC0415

    if mode == "seeded":
        from onnxfix.check.seeded import seeded_checks  # noqa: PLC0415

        seeded_checks(parity, opener, original, rewritten, done, make_twin, size, seed, emit,
                      conditional=_conditional)
        return
    twin = make_twin({}) if mode == "constant" else None
    if mode == "constant":
        _conditional(parity, opener, original, *twin, size, seed, emit)
    if parity.status != "failed":
        twin_check(parity, opener, rewritten, done, twin, make_twin, mode, size, seed, emit)


def _refuse_aborting_draws(model: onnx.ModelProto) -> None:
    """onnxruntime aborts the whole process on some parameters (scale <= 0, low >= high)."""
    for site in find_sites(model):
        why = spec_for(site.node).ort_abort_reason(site.node)
        if why:
            raise CheckSkipped(f"onnxruntime aborts the process drawing from {why}, so the "
                               f"model cannot be run")


__all__ = ["check_parity"]
