"""Run the parity check under a memory cap and a time limit, never getting the process killed.

The check runs onnxruntime on inputs the user never saw; a model can then ask for any amount
of memory (a Range sized by an input value) or run for ever (a Loop counted by one). So the
check runs in a forked child: fork costs a few milliseconds and shares the already-built
models, a fresh interpreter would cost seconds and a copy of the model. The child caps its
address space with RLIMIT_AS (onnxruntime then fails an allocation instead of the kernel
killing anyone) and the parent kills it at the deadline. Whatever happens to the child, the
parent gets a Parity: the child's verdict, or `skipped` with why.

Lines the check prints travel through the same pipe, in order, as they are made.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

from .compare import CheckLimit
from .report import Parity

MiB = 2**20
DEFAULT_TIMEOUT_S = 300.0
INPUTS_HINT = "give real inputs with --check-inputs FILE.npz"


@dataclass(frozen=True)
class CheckLimits:
    memory_bytes: int  # extra address space the check may take
    timeout_s: float   # wall-clock seconds for the whole check

    @property
    def memory_mb(self) -> int:
        return self.memory_bytes // MiB


def default_memory_bytes() -> int:
    """min(8 GiB, half of the machine's RAM): room for a check, never the whole machine."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        ram = 16 * 2**30
    return min(8 * 2**30, ram // 2)


def make_limits(memory_mb: float | None, timeout_s: float | None) -> CheckLimits:
    from .errors import UsageError

    if memory_mb is not None and not (math.isfinite(memory_mb) and memory_mb >= 64):
        raise UsageError(f"--check-memory-mb {memory_mb}: must be a number of MiB, at least 64")
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise UsageError(f"--check-timeout {timeout_s}: must be a positive number of seconds")
    memory = default_memory_bytes() if memory_mb is None else int(memory_mb * MiB)
    return CheckLimits(memory, DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s))


def limit_reason(why: str, hint: str = INPUTS_HINT) -> str:
    return f"{why}; {hint}" if hint else why


def out_of_memory_reason(e: BaseException, limits: CheckLimits | None, hint: str) -> str:
    """One readable line from onnxruntime's (or numpy's) allocation failure."""
    cap = f" of {limits.memory_mb} MiB (--check-memory-mb)" if limits else ""
    text = str(e)
    size = re.search(r"buffer of size (\d+)", text)
    node = re.search(r"running (\w+) node", text)
    if size:
        what = f"onnxruntime could not allocate {int(size.group(1)):,} bytes"
    elif isinstance(e, MemoryError):
        what = "numpy could not allocate an array"
    else:
        what = text[:160]
    where = f" for a {node.group(1)} node" if node else ""
    return limit_reason(f"the check ran out of memory under its cap{cap}: {what}{where}", hint)


def run_guarded(check: Callable[[Callable[[str], None]], Parity], limits: CheckLimits,
                on_line: Callable[[str], None], hint: str = INPUTS_HINT) -> Parity:
    """check(emit) -> Parity, run in a child process under `limits`."""
    if "fork" not in multiprocessing.get_all_start_methods():  # pragma: no cover - Windows
        return _in_process(check, on_line, hint)
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(check, sender, limits, hint), daemon=True)
    child.start()
    sender.close()
    try:
        return _collect(receiver, child, limits, on_line, hint)
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()


def _collect(receiver, child, limits: CheckLimits, on_line, hint: str) -> Parity:
    deadline = time.monotonic() + limits.timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not receiver.poll(left):  # poll is true at end of file too
            child.kill()
            return _skipped(f"the check took longer than its time limit of "
                            f"{limits.timeout_s:g} s (--check-timeout)", on_line, hint)
        try:
            kind, payload = receiver.recv()
        except (EOFError, OSError):
            child.join()
            return _skipped(f"the check's process ended abnormally ({_how(child.exitcode)}; "
                            f"memory cap {limits.memory_mb} MiB, --check-memory-mb)",
                            on_line, hint)
        if kind == "line":
            on_line(payload)
        elif kind == "parity":
            return payload
        else:  # "error": an exception the caller must see (a usage error, a bug)
            raise payload


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _skipped(why: str, on_line, hint: str) -> Parity:
    reason = limit_reason(why, hint)
    on_line(f"SKIPPED | {reason}")
    return Parity(status="skipped", reason=reason)


def _child(check, sender, limits: CheckLimits, hint: str) -> None:
    try:
        _cap_address_space(limits.memory_bytes)
        emit = _Emitter(sender)
        parity = _in_process(check, emit, hint, limits)
        sender.send(("parity", parity))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        try:
            sender.send(("error", e))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            sender.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
    finally:
        sender.close()


class _Emitter:
    def __init__(self, sender):
        self.sender = sender

    def __call__(self, line: str) -> None:
        self.sender.send(("line", line))


def _in_process(check, emit, hint: str, limits: CheckLimits | None = None) -> Parity:
    try:
        return check(emit)
    except (CheckLimit, MemoryError) as e:  # outside the passes: building a model, say
        reason = out_of_memory_reason(e, limits, hint)
        emit(f"SKIPPED | {reason}")
        return Parity(status="skipped", reason=reason)


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _cap_address_space(extra: int) -> None:
    """RLIMIT_AS counts what the process already maps (the interpreter, onnxruntime)."""
    try:
        base = _address_space()
    except OSError:  # pragma: no cover - no /proc
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = base + extra
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))


__all__ = ["CheckLimits", "default_memory_bytes", "make_limits", "run_guarded"]
