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

    def check(line: Callable[[str], None]) -> Parity:
        return check_parity(original, rewritten, records, mode, size=options.size,
                            atol=options.atol, rtol=options.rtol, seed=options.seed,
                            twin=twin, reporter=Reporter.of(line),
                            weights_folder=weights_folder, setup=setup)

    if options.limits is None:
        parity = check(emit)
    else:
        parity = run_guarded(check, options.limits, emit, hint)
    if parity.status == "skipped":
        parity.note = SKIP_MEANING
    return parity


__all__ = ["SKIP_MEANING", "CheckOptions", "run_check"]
