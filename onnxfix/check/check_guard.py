"""Run the parity check under a memory cap and a time limit, never getting the process killed.

The check runs onnxruntime on inputs the user never saw; a model can then ask for any amount
of memory (a Range sized by an input value) or run for ever (a Loop counted by one). So the
check runs in a forked child: fork costs a few milliseconds and shares the already-built
models, a fresh interpreter would cost seconds and a copy of the model. The child caps its
address space with RLIMIT_AS (onnxruntime then fails an allocation instead of the kernel
killing anyone) and the parent kills it at the deadline. Whatever happens to the child, the
parent gets a Parity: the child's verdict, or `skipped` with why.

Lines the check prints travel through the same pipe, in order, as they are made (the lines
of one comparison pass, made with no onnxruntime call between them, as one message).

fork copies one thread of a process that may have others (onnxruntime's pools, a caller's
threads): a lock one of them held at that instant stays locked in the child for ever. Such a
child takes no CPU time; after STALL_S seconds of none it is killed (its Python stack read
first, for the line that says so) and the check started once more, in a fresh interpreter
(check_spawn) that inherits no lock: seconds, and a copy of the models, but only then.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import math
import os
import re
import resource
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection

from onnxfix.check.check_stall import STALL_S, Progress, listen_for_where, where_it_waits
from onnxfix.check.held import holding
from onnxfix.errors import UsageError, param
from onnxfix.report import Parity
from onnxfix.reporter import Reporter

MiB = 2**20
DEFAULT_TIMEOUT_S = 300.0
POLL_S = 2.0  # how often the parent looks at the child's CPU time while it waits
INPUTS_HINT = "give real inputs with --check-inputs FILE.npz"


@dataclass(frozen=True)
class CheckLimits:
    memory_bytes: int  # extra address space the check may take
    timeout_s: float   # wall-clock seconds for the whole check

    @property
    def memory_mb(self) -> int:
        return self.memory_bytes // MiB


def default_memory_bytes(model_bytes: int = 0) -> int:
    """min(8 GiB, half the RAM): room for a check, never the whole machine. A big model gets
    more (its sessions hold the weights about twice over): up to 3/4 of the RAM."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        ram = 16 * 2**30
    base = min(8 * 2**30, ram // 2)
    return max(base, min(3 * model_bytes + 2**30, ram * 3 // 4))


def make_limits(memory_mb: float | None, timeout_s: float | None,
                model_bytes: int = 0) -> CheckLimits:
    if memory_mb is not None and not (math.isfinite(memory_mb) and memory_mb >= 64):
        raise UsageError(f"{param('check_memory_mb', memory_mb)}: must be a number of MiB, "
                         f"at least 64")
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise UsageError(f"{param('check_timeout', timeout_s)}: must be a positive number of "
                         f"seconds")
    memory = default_memory_bytes(model_bytes) if memory_mb is None else int(memory_mb * MiB)
    return CheckLimits(memory, DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s))


def model_bytes(model, source: str | None) -> int:
    """The size of a model's file and its external-data files (what its sessions load)."""
    if source is None:
        return model.ByteSize()
    folder = os.path.dirname(os.path.abspath(source))
    files = {os.path.abspath(source)}
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                files.add(os.path.abspath(os.path.join(folder, entry.value)))
    return sum(os.path.getsize(f) for f in files if os.path.isfile(f))


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
    """check(emit) -> Parity, run in a forked child process under `limits`. A child that
    stalls is killed, and the check started once more: in a fresh interpreter when `check`
    pickles (nothing inherited from this process's threads), else in a second fork."""
    if not hasattr(os, "fork"):  # pragma: no cover - Windows: no fork, no cap
        return _in_process(check, on_line, hint)
    deadline = time.monotonic() + limits.timeout_s
    try:
        return _attempt(_fork, check, limits, on_line, hint, deadline)
    except _Stalled as first:
        stalled = first
    from onnxfix.check.check_spawn import pickled, spawn  # noqa: PLC0415 - rare path

    fresh = pickled(check)
    on_line(f"NOTE | the check's process stalled{stalled.where} (no CPU time for {STALL_S:g} "
            f"s): started again{' in a fresh interpreter' if fresh is not None else ''}")
    try:
        if fresh is not None:
            return _attempt(spawn, fresh, limits, on_line, hint, deadline)
        return _attempt(_fork, check, limits, on_line, hint, deadline)
    except _Stalled as second:
        return _skipped(f"the check's process stalled twice{second.where} (no CPU time for "
                        f"{STALL_S:g} s; a deadlock inherited from another thread of this "
                        f"process?)", on_line, hint)


class _Stalled(Exception):  # noqa: N818 - not an error: the check is started again
    """The child took no CPU time for STALL_S seconds; `where` is its innermost frame."""

    def __init__(self, where: str):
        super().__init__(where)
        self.where = where


class Started:
    """A check's child process: its pid, its message pipe, how to end it and how it ended."""

    def __init__(self, pid: int, receiver: Connection, reap: Callable[[bool], int]):
        self.pid, self.receiver, self._reap, self.status = pid, receiver, reap, None

    def end(self, kill: bool = True) -> None:
        """Kill it if still running (unless kill=False: wait for it); always reap it."""
        if self.status is None:
            self.status = self._reap(kill)

    def how(self) -> str:
        self.end(kill=False)
        if self.status < 0:
            return f"signal {-self.status}"
        return f"exit code {self.status}"


def _fork(check, limits: CheckLimits, hint: str, where_fd: int) -> Started:
    read_fd, write_fd = os.pipe()
    pid = os.fork()  # os.fork, not multiprocessing: it also works inside a daemonic worker
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        try:
            os.close(read_fd)
            child_main(check, Connection(write_fd, readable=False), limits, hint, where_fd)
        finally:
            os._exit(0)
    os.close(write_fd)

    def reap(kill: bool) -> int:
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    return Started(pid, Connection(read_fd, writable=False), reap)


def _attempt(start, check, limits: CheckLimits, on_line, hint: str, deadline: float) -> Parity:
    with tempfile.TemporaryFile() as where:  # where a stalled child writes its stack
        child = start(check, limits, hint, where.fileno())
        try:
            return _collect(child, limits, on_line, hint, deadline, where.fileno())
        finally:
            child.receiver.close()
            child.end()


def _collect(child: Started, limits: CheckLimits, on_line, hint: str, deadline: float,
             where_fd: int) -> Parity:
    progress, receiver = Progress(child.pid, STALL_S), child.receiver
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            child.end()
            return _skipped(f"the check took longer than its time limit of "
                            f"{limits.timeout_s:g} s (--check-timeout)", on_line, hint)
        if not receiver.poll(min(left, POLL_S)):  # poll is true at end of file too
            if progress.stalled():
                where = where_it_waits(child.pid, where_fd)
                child.end()
                raise _Stalled(where)
            continue
        try:
            kind, payload = receiver.recv()
        except (EOFError, OSError):
            return _skipped(f"the check's process ended abnormally ({child.how()}; "
                            f"memory cap {limits.memory_mb} MiB, --check-memory-mb)",
                            on_line, hint)
        except Exception as e:  # noqa: BLE001 - a payload that does not unpickle
            raise RuntimeError(f"the check's answer could not be read: {e}") from None
        if kind == "line":
            on_line(payload)
        elif kind == "lines":
            Reporter.of(on_line).lines(payload)
        elif kind == "parity":
            return payload
        else:  # "error": an exception the caller must see (a usage error, a bug)
            raise payload


def _skipped(why: str, on_line, hint: str) -> Parity:
    reason = limit_reason(why, hint)
    on_line(f"SKIPPED | {reason}")
    return Parity(status="skipped", reason=reason)


def child_main(check, sender: Connection, limits: CheckLimits, hint: str, where_fd: int) -> None:
    """The check's process (forked or spawned): limits, the check, its answer on `sender`."""
    try:
        listen_for_where(where_fd)
        _silence()
        _outlive_nobody(limits.timeout_s)
        _cap_address_space(limits.memory_bytes)
        emit = _Emitter(sender)
        with holding():  # the check's sessions are not freed before its answer is out
            parity = _in_process(check, emit, hint, limits)
        sender.send(("parity", parity))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        with contextlib.suppress(BaseException):
            try:
                sender.send(("error", e))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                sender.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
    finally:
        with contextlib.suppress(BaseException):
            sender.close()


def _outlive_nobody(timeout_s: float) -> None:
    """The child ends by itself shortly after the deadline, and with its parent (Linux), even
    inside a long onnxruntime call: if the parent is killed, no check runs on for hours."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # default action: terminate
    signal.alarm(max(1, math.ceil(timeout_s)) + 5)
    with contextlib.suppress(Exception):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _silence() -> None:
    """The child speaks only through the pipe: what onnxruntime (or an abort) would print on
    stdout/stderr must not reach the user's terminal, where errors are one line."""
    faulthandler.disable()  # it may write to its own copy of stderr
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


class _Emitter:
    def __init__(self, sender):
        self.sender = sender

    def __call__(self, line: str) -> None:
        self.sender.send(("line", line))

    def lines(self, lines: list[str]) -> None:
        if lines:  # one message for a batch (a check over thousands of draws)
            self.sender.send(("lines", lines))


def _in_process(check, emit, hint: str, limits: CheckLimits | None = None) -> Parity:
    # compare pulls in onnxruntime; options validation imports this module on every run
    from onnxfix.check.compare import CheckLimit  # noqa: PLC0415

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


__all__ = ["STALL_S", "CheckLimits", "Started", "child_main", "default_memory_bytes",
           "make_limits", "run_guarded"]
