"""A check's process holds its sessions until its answer is out; nothing else holds them."""

from __future__ import annotations

import gc
import weakref

import pytest

from onnxfix.check import held
from onnxfix.check.held import holding, release_later


class _Big:
    """Stands in for a check's sessions and captures."""


@pytest.fixture(autouse=True)
def _nothing_held(monkeypatch):
    monkeypatch.setattr(held, "_held", None)


def test_outside_a_checks_process_nothing_is_held():
    obj = _Big()
    ref = weakref.ref(obj)
    release_later(obj)
    del obj
    gc.collect()
    assert ref() is None


def test_a_checks_process_holds_what_the_check_hands_over_after_it_returns():
    obj = _Big()
    ref = weakref.ref(obj)
    with holding():
        release_later(obj)
        del obj
    gc.collect()
    assert ref() is not None  # the forked child sends its answer, then exits freeing nothing


def test_a_check_that_raises_holds_nothing():
    obj = _Big()
    ref = weakref.ref(obj)
    with pytest.raises(RuntimeError), holding():
        release_later(obj)
        del obj
        raise RuntimeError("the check failed")
    gc.collect()
    assert ref() is None


def test_the_input_noise_check_hands_its_sessions_over(monkeypatch):
    # the in-process check (no fork) frees them as before; the guarded one holds them
    from onnxfix.check import parity

    handed = []
    monkeypatch.setattr(parity, "release_later", handed.append)
    monkeypatch.setattr(parity, "_conditional", lambda *a, **k: "cond")
    parity._run_checks(None, None, None, None, [], [], "input-noise", 2, 0, None, print)
    assert handed == ["cond"]
