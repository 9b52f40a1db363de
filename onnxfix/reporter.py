"""Where a run's progress lines go: one object handed down instead of a callback per function.

A Reporter is called with one line (`reporter("PASSED | ...")`), so code written against a
plain `emit(line)` callable keeps working; `detail` lines are for verbose output only.
"""

from __future__ import annotations

from collections.abc import Callable

Sink = Callable[[str], None]


class Reporter:
    """Lines to `sink` (none: dropped); `detail` lines to `details` (none: dropped)."""

    def __init__(self, sink: Sink | None = None, details: Sink | None = None):
        self.sink, self.details = sink, details

    def __call__(self, line: str) -> None:
        if self.sink is not None:
            self.sink(line)

    def lines(self, lines: list[str]) -> None:
        """Several lines, in order: handed over at once where the sink takes a batch (the
        check's process sends them to the parent as one message, not one per line)."""
        batch = getattr(self.sink, "lines", None)
        if batch is not None and type(self).__call__ is Reporter.__call__:
            batch(lines)
            return
        for line in lines:
            self(line)

    def detail(self, line: str) -> None:
        if self.details is not None:
            self.details(line)

    @classmethod
    def of(cls, target: Reporter | Sink | None) -> Reporter:
        """A Reporter from a Reporter, a one-line callable (e.g. `list.append`) or None."""
        return target if isinstance(target, Reporter) else cls(target)


SILENT = Reporter()
