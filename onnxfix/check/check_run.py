"""The parity check as the API runs it: its options, its inputs, its limits, what a skip means."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from onnxfix.check.check_guard import INPUTS_HINT, CheckLimits, run_guarded
from onnxfix.check.check_inputs import GivenInputs
from onnxfix.check.check_setup import CheckSetup
from onnxfix.check.parity import check_parity
from onnxfix.report import NodeRecord, Parity
from onnxfix.reporter import Reporter

SKIP_MEANING = ("the rewrite was written but not verified: the parity check did not run to a "
                "verdict (fail_on_skip / --fail-on-skip turns this into a failure)")


@dataclass(frozen=True)
class CheckOptions:
    size: int = 2
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    given: GivenInputs | None = None
    limits: CheckLimits | None = None  # None: in this process, no cap (tests, debugging)
    fail_on_skip: bool = False


@dataclass(frozen=True)
class CheckJob:
    """One check as a value: run in a forked child, or pickled into a fresh interpreter when
    a forked child stalls (see check_guard). Every field pickles; `twin` is a PlanTwin."""

    original: onnx.ModelProto
    rewritten: onnx.ModelProto
    records: list[NodeRecord]
    mode: str
    options: CheckOptions
    twin: Callable | None
    weights_folder: str | None
    setup: CheckSetup

    def __call__(self, line: Callable[[str], None]) -> Parity:
        o = self.options
        return check_parity(self.original, self.rewritten, self.records, self.mode,
                            size=o.size, atol=o.atol, rtol=o.rtol, seed=o.seed, twin=self.twin,
                            reporter=Reporter.of(line), weights_folder=self.weights_folder,
                            setup=self.setup)


def run_check(original: onnx.ModelProto, rewritten: onnx.ModelProto, records: list[NodeRecord],
              mode: str, options: CheckOptions, *, twin=None, reporter: Reporter | None = None,
              weights_folder: str | None = None) -> Parity:
    """The conditional parity check, under the memory cap and time limit of `options`.

    twin: measured bounds -> the input-noise twin from the rewrite's plan (see check_parity).
    """
    emit = Reporter.of(reporter)
    given = options.given
    hint = ("raise --check-memory-mb / --check-timeout, or give smaller inputs" if given
            else INPUTS_HINT)
    setup = CheckSetup(given=given.arrays if given else None,
                       given_dims=given.dims if given else {}, limits=options.limits, hint=hint)
    job = CheckJob(original, rewritten, records, mode, options, twin, weights_folder, setup)
    # no limits: in this process (tests, debugging); else in a child under the limits
    parity = job(emit) if options.limits is None else run_guarded(job, options.limits, emit, hint)
    if parity.status == "skipped":
        parity.note = SKIP_MEANING
    return parity


__all__ = ["SKIP_MEANING", "CheckJob", "CheckOptions", "run_check"]
