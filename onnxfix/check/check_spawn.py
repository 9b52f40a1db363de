"""The check in a fresh interpreter: the second attempt after a forked child stalled.

A fresh interpreter inherits no lock from the parent's threads, at the cost of seconds of
start-up and a pickled copy of the check (its models included), so it is used only then.
The check travels in a temporary file; the child imports from where the parent did (onnxfix
first, then the parent's whole sys.path).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from multiprocessing.connection import Connection

from onnxfix.check.check_guard import CheckLimits, Started, child_main, limit_reason
from onnxfix.report import Parity

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from onnxfix.check.check_spawn import main; main(*map(int, sys.argv[2:]))")


def pickled(check) -> bytes | None:
    """`check` as it travels to another interpreter (a CheckJob does; a lambda cannot: None)."""
    if not sys.executable or getattr(sys, "frozen", False):  # no interpreter to start
        return None
    try:
        return pickle.dumps(check, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - anything that does not pickle: fork again instead
        return None


def spawn(check: bytes, limits: CheckLimits, hint: str, where_fd: int) -> Started:
    """Start a fresh interpreter on `check` (from `pickled`)."""
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as job:
        pickle.dump((sys.path, limits, hint), job, protocol=pickle.HIGHEST_PROTOCOL)
        job.write(check)
        job.flush()
        try:
            popen = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _ROOT, str(job.fileno()), str(write_fd),
                 str(where_fd)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                pass_fds=(job.fileno(), write_fd, where_fd))
        finally:
            os.close(write_fd)  # the child holds its own descriptors of both

    def reap(kill: bool) -> int:
        if kill:
            popen.kill()
        return popen.wait()

    return Started(popen.pid, Connection(read_fd, writable=False), reap)


def main(job_fd: int, answer_fd: int, where_fd: int) -> None:
    """The spawned interpreter: read the check, run it as a forked child would."""
    sender = Connection(answer_fd, readable=False)
    with os.fdopen(job_fd, "rb") as job:
        job.seek(0)
        path, limits, hint = pickle.load(job)
        sys.path.extend(p for p in path if p not in sys.path)  # what the parent imports from
        try:
            check = pickle.load(job)
        except Exception as e:  # noqa: BLE001 - said as the check's verdict, not a traceback
            sender.send(("parity", Parity(status="skipped", reason=limit_reason(
                f"the check could not start in a fresh interpreter ({type(e).__name__}: "
                f"{e})", hint))))
            return
    child_main(check, sender, limits, hint, where_fd)


__all__ = ["main", "pickled", "spawn"]
