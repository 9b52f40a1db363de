"""Recording the check's verdicts: one line per comparison, failures with their reason."""

from __future__ import annotations

from onnxfix.check.compare import compare_arrays, dims_text, run_all
from onnxfix.errors import one_line
from onnxfix.report import OutputCheck, Parity
from onnxfix.reporter import Reporter


def record(parity: Parity, check: OutputCheck, emit) -> None:
    parity.outputs.append(check)
    emit(_line(check))


def _line(check: OutputCheck) -> str:
    word = "PASSED" if check.passed else "FAILED"
    note = f" | {check.note}" if check.note else ""
    return (f"{word} | {dims_text(check.dims)} | Output: '{check.name}' {check.shape} | "
            f"max abs err {check.max_abs_err:.3g} | max rel err {check.max_rel_err:.3g}{note}")


def fail(parity: Parity, reason: str, emit) -> None:
    parity.status, parity.reason = "failed", reason
    emit(f"FAILED | {reason}")


def run_and_compare(parity: Parity, sess, feeds: dict, expected: dict, names: list[str],
                    dims: dict, emit, tolerances: dict | None = None) -> bool:
    """tolerances: per output, defaults of a narrower float on its path (user values win)."""
    try:
        got = run_all(sess, feeds)
    except Exception as e:  # noqa: BLE001
        fail(parity, f"the rewritten model fails at {dims_text(dims)}: {one_line(e)}", emit)
        return False
    ok, lines = True, []
    try:  # the pass's lines go out together, also when a comparison raises (memory)
        for name in names:
            atol, rtol, narrow = (tolerances or {}).get(name, (None, None, ""))
            atol = parity.atol if parity.atol is not None else atol
            rtol = parity.rtol if parity.rtol is not None else rtol
            check = compare_arrays(name, got[name], expected[name], atol, rtol, dims)
            if narrow and not check.note:
                check.note = f"{narrow} tolerance: a {narrow} tensor lies between a draw and it"
            record(parity, check, lines.append)
            ok &= check.passed
    finally:
        Reporter.of(emit).lines(lines)
    return ok
