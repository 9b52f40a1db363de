"""Objects a check keeps until its answer is out.

Freeing a check's onnxruntime sessions and captured arrays takes a noticeable time on a
large graph (tens of milliseconds for two sessions of a few thousand nodes), and a forked
check's process needs none of it: once the parent has the answer it is killed, and it ends
with os._exit, which frees nothing. So the check hands them over (`release_later`) and its
answer goes out first. Outside a check's own process nothing is held: they are freed at
once, as they always were.
"""

from __future__ import annotations

from contextlib import contextmanager

_held: list | None = None


def release_later(obj) -> None:
    """Hold `obj` while a check's process holds (see `holding`), else let it go now."""
    if _held is not None and obj is not None:
        _held.append(obj)


@contextmanager
def holding():
    """Inside a check's own process: what the check hands over is held until the process
    ends (the caller sends its answer, then exits without freeing anything)."""
    global _held
    previous, _held = _held, []
    try:
        yield
    except BaseException:
        _held = previous  # a failed check's objects go as they would have
        raise
