"""What the check runs on: the user's real inputs or realistic synthetic ones, and at which sizes.

The check's passes ask this module for their sizes, dims and feeds. The setup of the running
check is a context variable (set once by check_parity), so the passes keep their signatures.

Sizes are honest: with real inputs there is one pass, on them. With synthetic inputs a dynamic
model runs at `size`, then at size + 1 only when the first pass was cheap (under a quarter of
the check's memory cap and time limit); otherwise a NOTE line says the second size was not run.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from onnxfix.check.check_guard import INPUTS_HINT, CheckLimits, out_of_memory_reason
from onnxfix.check.compare import CheckSize, symbolic_dims, synthetic_feeds
from onnxfix.check.input_roles import InputRole, input_roles


def quiet(_line: str) -> None:
    """The default line sink: says nothing (a module-level function, so a setup pickles)."""


@dataclass
class CheckSetup:
    given: dict[str, np.ndarray] | None = None  # the user's inputs (check_inputs)
    given_dims: dict[str, int] = field(default_factory=dict)  # dim name -> size in them
    roles: dict[str, InputRole] = field(default_factory=dict)
    limits: CheckLimits | None = None
    emit: Callable[[str], None] = field(default=quiet, repr=False)
    started: float = 0.0
    base_rss: int = 0
    described: dict[str, str] = field(default_factory=dict)  # input -> what it held
    hint: str = INPUTS_HINT  # what the user can do when the check hits a limit

    def out_of_memory(self, e: BaseException) -> str:
        return out_of_memory_reason(e, self.limits, self.hint)


_ACTIVE: ContextVar[CheckSetup | None] = ContextVar("onnxfix_check_setup", default=None)


def prepare(setup: CheckSetup | None, original, emit: Callable[[str], None]) -> CheckSetup:
    """The setup for a check of `original` (default: synthetic inputs by role)."""
    setup = setup or CheckSetup()
    if setup.given is None and not setup.roles:
        setup.roles = input_roles(original)
    setup.emit = emit
    return setup


@contextlib.contextmanager
def active(setup: CheckSetup) -> Iterator[CheckSetup]:
    """Make `setup` the running check's setup (the passes read it through current())."""
    setup.started = time.monotonic()
    # with limits, this is the check's own forked child: its peak starts anew (a caller's
    # process, checked in-process without limits, keeps its peak)
    setup.base_rss = _peak_rss(reset=setup.limits is not None)
    token = _ACTIVE.set(setup)
    try:
        yield setup
    finally:
        _ACTIVE.reset(token)


def current() -> CheckSetup:
    return _ACTIVE.get() or CheckSetup()


def inputs_word() -> str:
    """How the running check's inputs were made, for messages."""
    return "the given inputs" if current().given is not None else "synthetic inputs"


def check_sizes(size: int, symbols: list[str]) -> Iterator[int]:
    """The sizes of the passes: see the module's docstring."""
    setup = current()
    if setup.given is not None:
        yield _given_size(setup, size)
        return
    yield size
    if not symbols:
        return
    why = _too_costly(setup)
    if why:
        setup.emit(f"NOTE | the check did not run again at size {size + 1}: {why}")
        return
    yield size + 1


def check_dims(inputs, n: int) -> dict:
    """The size of each symbolic dim in this pass (from the inputs when the user gave them)."""
    setup = current()
    labels = symbolic_dims(inputs)
    if setup.given is None:
        return {s: int(n) for s in labels}
    seen = {}
    for i in inputs:
        given = setup.given.get(i.name)
        for k, d in enumerate(i.shape or []):
            if given is not None and not isinstance(d, int) and k < given.ndim:
                seen.setdefault(d if isinstance(d, str) and d else f"{i.name}[{k}]",
                                int(given.shape[k]))
    return {s: seen[s] for s in labels if s in seen}


def check_feeds(inputs, n: int, rng: np.random.Generator, probabilities=frozenset()) -> dict:
    setup = current()
    if not setup.described:
        _describe(setup, inputs, n)
    if setup.given is not None:
        return {i.name: setup.given[i.name] for i in inputs if i.name in setup.given}
    return synthetic_feeds(inputs, n, rng, probabilities, roles=setup.roles)


def _describe(setup: CheckSetup, inputs, n: int) -> None:
    """What each input of the check holds: one NOTE line, and the report's parity.inputs."""
    if setup.given is not None:
        setup.described = {i.name: f"given {list(np.shape(setup.given[i.name]))}"
                           for i in inputs if i.name in setup.given}
        setup.emit(f"NOTE | check inputs given: {len(setup.described)} array(s)")
        return
    setup.described = {i.name: setup.roles[i.name].describe(n) for i in inputs
                       if i.name in setup.roles}
    shown = [f"{k}: {v}" for k, v in setup.described.items() if v != "plain"]
    if shown:
        setup.emit(f"NOTE | synthetic check inputs by role: {'; '.join(shown)}")


def _given_size(setup: CheckSetup, size: int) -> CheckSize:
    """The given inputs' dim sizes by name; for other dims (noise of untaken branches), the
    commonest size in the inputs."""
    sizes = Counter(d for a in setup.given.values() for d in np.shape(a))
    common = sizes.most_common(1)[0][0] if sizes else size
    return CheckSize(max(int(common), 1), setup.given_dims)


def _too_costly(setup: CheckSetup) -> str:
    limits = setup.limits
    if limits is None:
        return ""
    spent = time.monotonic() - setup.started
    used = max(_peak_rss() - setup.base_rss, 0)
    if spent > limits.timeout_s / 4:
        return (f"the first size took {spent:.1f} s, over a quarter of the time limit "
                f"({limits.timeout_s:g} s)")
    if used > limits.memory_bytes / 4:
        return (f"the first size took {used / 2**20:.0f} MiB, over a quarter of the memory "
                f"cap ({limits.memory_mb} MiB)")
    return ""


def _peak_rss(reset: bool = False) -> int:
    """Peak resident memory in bytes; reset=True starts a new peak (Linux: clear_refs)."""
    if reset:
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


__all__ = ["CheckSetup", "active", "check_dims", "check_feeds", "check_sizes", "current",
           "inputs_word", "prepare"]
