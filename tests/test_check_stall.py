"""A check process that stalls (a lock inherited through fork) is told, said, and started again.

fork copies one thread: a lock that another thread held at that instant stays held in the child
for ever. The parent sees the child take no CPU time, reads where its Python code waits, kills
it and starts the check again in a fresh interpreter when the check pickles (the real check
does), else in a second fork; a second stall is a skip that says where.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

import onnxfix
import onnxfix.check.check_guard
import onnxfix.check.check_run
from onnxfix.check.check_guard import CheckLimits, run_guarded
from onnxfix.report import Parity

HINT = "give real inputs with --check-inputs FILE.npz"
LIMITS = CheckLimits(memory_bytes=2**30, timeout_s=60)
FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "ref2_dynamic_ts.onnx")
_HELD = threading.Lock()


class NeedsTheLock:
    """Takes a module-level lock: a forked child finds it held by a thread it does not have; a
    fresh interpreter imports this module again and finds its own, free."""

    def __call__(self, emit):
        with _HELD:  # a forked child waits here
            emit("PASSED | y")
        return Parity(status="passed")


class SleepsForEver:
    def __call__(self, emit):
        time.sleep(600)  # for ever


def _boom():
    raise RuntimeError("this check cannot be rebuilt here")


class CannotTravel(SleepsForEver):
    """Pickles here, fails to unpickle in the fresh interpreter."""

    def __reduce__(self):
        return _boom, ()


@pytest.fixture
def quick_stall(monkeypatch):
    """A stall is a second without CPU time, looked for every 0.2 s (60 s and 2 s in use)."""
    monkeypatch.setattr(onnxfix.check.check_guard, "STALL_S", 1.0)
    monkeypatch.setattr(onnxfix.check.check_guard, "POLL_S", 0.2)


@pytest.fixture
def lock_held_elsewhere():
    """Another thread of this process holds _HELD while the check starts."""
    release = threading.Event()
    holder = threading.Thread(target=lambda: _hold(release))
    holder.start()
    while not _HELD.locked():
        time.sleep(0.01)
    yield
    release.set()
    holder.join()


def _hold(release: threading.Event) -> None:
    with _HELD:
        release.wait()


def _line_with(text: str) -> int:
    """The line of this file that holds `text` (once): where a stalled check waits."""
    with open(__file__) as f:
        found = [n for n, line in enumerate(f, 1) if text in line and "_line_with" not in line]
    assert len(found) == 1, found
    return found[0]


def _no_child_left() -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_a_lock_held_by_another_thread_at_the_fork_is_left_behind_in_a_fresh_interpreter(
        quick_stall, lock_held_elsewhere):
    lines = []
    p = run_guarded(NeedsTheLock(), LIMITS, lines.append)
    assert p.status == "passed"
    line = _line_with("with _HELD:  # a forked child waits here")
    assert lines == [f"NOTE | the check's process stalled at test_check_stall.py:{line} in "
                     f"__call__() (no CPU time for 1 s): started again in a fresh interpreter",
                     "PASSED | y"]
    _no_child_left()


def test_a_check_that_stalls_in_the_fresh_interpreter_too_is_a_skip_saying_where(quick_stall):
    lines = []
    p = run_guarded(SleepsForEver(), LIMITS, lines.append)
    line = _line_with("time.sleep(600)  # for ever")
    assert p.status == "skipped"
    assert p.reason == (f"the check's process stalled twice at test_check_stall.py:{line} in "
                        f"__call__() (no CPU time for 1 s; a deadlock inherited from another "
                        f"thread of this process?); {HINT}")
    assert lines == [f"NOTE | the check's process stalled at test_check_stall.py:{line} in "
                     f"__call__() (no CPU time for 1 s): started again in a fresh interpreter",
                     f"SKIPPED | {p.reason}"]
    _no_child_left()


def test_a_check_that_does_not_pickle_is_forked_again(quick_stall, tmp_path):
    marker = tmp_path / "stalled-once"

    def check(emit):
        if not marker.exists():
            marker.touch()
            time.sleep(600)  # once
        emit("PASSED | y")
        return Parity(status="passed")

    lines = []
    p = run_guarded(check, LIMITS, lines.append)
    line = _line_with("time.sleep(600)  # once")
    assert p.status == "passed"
    assert lines == [f"NOTE | the check's process stalled at test_check_stall.py:{line} in "
                     f"check() (no CPU time for 1 s): started again", "PASSED | y"]
    _no_child_left()


def test_a_second_fork_that_stalls_too_is_a_skip(quick_stall):
    lines = []
    p = run_guarded(lambda emit: time.sleep(600), LIMITS, lines.append)
    assert p.status == "skipped"
    assert p.reason.startswith("the check's process stalled twice at test_check_stall.py:")
    assert p.reason.endswith(" in <lambda>() (no CPU time for 1 s; a deadlock inherited from "
                             f"another thread of this process?); {HINT}")
    assert lines[0].endswith("(no CPU time for 1 s): started again")
    _no_child_left()


def test_a_check_that_cannot_be_rebuilt_in_the_fresh_interpreter_is_a_skip_saying_why(
        quick_stall):
    lines = []
    p = run_guarded(CannotTravel(), LIMITS, lines.append)
    assert p.status == "skipped"
    assert p.reason == ("the check could not start in a fresh interpreter (RuntimeError: this "
                        f"check cannot be rebuilt here); {HINT}")
    _no_child_left()


def test_a_real_check_whose_fork_stalls_passes_in_the_fresh_interpreter(quick_stall,
                                                                         monkeypatch):
    # the forked child runs this process's (patched) check_parity, which waits for ever; the
    # fresh interpreter imports the real one and checks the rewrite: models, records, options
    # and the plan's twin all travel
    monkeypatch.setattr(onnxfix.check.check_run, "check_parity",
                        lambda *args, **kwargs: time.sleep(600))  # patched
    lines = []
    _, report = onnxfix.rewrite(FIXTURE, "input-noise", on_line=lines.append)
    assert report.parity.status == "passed", report.parity.reason
    assert [c.passed for c in report.parity.outputs] == [True] * len(report.parity.outputs)
    assert len(report.parity.outputs) >= 2
    line = _line_with("time.sleep(600))  # patched")
    assert [text for text in lines if "stalled" in text] == [
        f"NOTE | the check's process stalled at test_check_stall.py:{line} in <lambda>() (no CPU "
        f"time for 1 s): started again in a fresh interpreter"]
    _no_child_left()
