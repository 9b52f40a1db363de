"""Telling a stalled check process: CPU time from /proc, and where its Python code waits.

A forked child can inherit a lock that another thread of the parent held at the fork; it then
waits for ever and takes no CPU time. The parent watches the child's CPU time; when it stops
for STALL_S seconds, the child is asked (SIGUSR1, answered by faulthandler inside it) to write
its Python stack, so that the line saying "stalled" can also say where.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time

STALL_S = 60.0  # seconds a check's process may take no CPU time before it counts as stalled
WHERE_SIGNAL = signal.SIGUSR1
_DUMP_WAIT_S = 1.0
_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


class Progress:
    """Whether a process has taken CPU time lately (from /proc; without it, always yes)."""

    def __init__(self, pid: int, stall_s: float):
        self.path, self.stall_s = f"/proc/{pid}/stat", stall_s
        self.cpu, self.since = self._cpu(), time.monotonic()

    def _cpu(self) -> int | None:
        try:
            with open(self.path) as f:
                stat = f.read()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        return int(fields[11]) + int(fields[12])  # utime + stime, all threads, in ticks

    def stalled(self) -> bool:
        cpu, now = self._cpu(), time.monotonic()
        if cpu is None or cpu != self.cpu:
            self.cpu, self.since = cpu, now
            return False
        return now - self.since > self.stall_s


def listen_for_where(fd: int) -> None:
    """In the check's process: write the Python stack of every thread to `fd` on WHERE_SIGNAL
    (faulthandler does it from its C signal handler, even while a thread waits on a lock)."""
    import faulthandler  # noqa: PLC0415 - only check processes need it

    with contextlib.suppress(Exception):
        faulthandler.register(WHERE_SIGNAL, file=fd, all_threads=True, chain=False)


def where_it_waits(pid: int, fd: int) -> str:
    """' at file.py:12 in function()': the innermost Python frame of the stalled process's main
    thread, from the stack it writes to `fd` when signalled; '' when it does not answer."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, WHERE_SIGNAL)
    text, waited = "", 0.0
    while waited < _DUMP_WAIT_S:
        time.sleep(0.05)
        waited += 0.05
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1 << 16).decode("utf-8", "replace")
        if _FRAME.search(text) and text.endswith("\n"):
            break
    main = text.split("Current thread", 1)[-1]
    frame = _FRAME.search(main)
    if frame is None:
        return ""
    path, line, function = frame.groups()
    return f" at {os.path.basename(path)}:{line} in {function}()"


__all__ = ["STALL_S", "Progress", "listen_for_where", "where_it_waits"]
