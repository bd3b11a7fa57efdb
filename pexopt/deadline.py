"""One deadline for a whole command (`--time-limit`): import, candidates, bounds, model building,
every solver stage, validation and simulation share it (issue #13 item 11).

A `Deadline` is made when the command starts (monotonic clock) and made current with `active`;
the pre-solve loops call `check()`, which raises `OutOfTime` once the time they may use is
spent, and the solver falls back to the best plan it already has (at worst the file-order
layer-by-layer greedy plan, always valid) instead of running past the limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


class OutOfTime(Exception):  # noqa: N818 (a signal to stop, caught by the solver, not an error)
    """The current deadline's pre-solve share is spent (never reaches the user)."""


@dataclass
class Deadline:
    """`seconds` from `start` (time.monotonic()); `stop`, while the solver runs, is when its
    work must end (None otherwise)."""

    seconds: float
    start: float = field(default_factory=time.monotonic)
    stop: float | None = None
    notes: list[str] = field(default_factory=list)  # what was cut short, for one stderr line

    @property
    def end(self) -> float:
        return self.start + self.seconds

    def left(self) -> float:
        """Seconds until the deadline (never negative)."""
        return max(0.0, self.end - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def check(self) -> None:
        """Raise OutOfTime when the solver's window is armed (`stop`) and has passed; the
        solver disarms it when it returns, so work after it is never cut off half-done."""
        if self.stop is not None and time.monotonic() > self.stop:
            raise OutOfTime()

    def note(self, text: str) -> None:
        """What was cut short; the latest replaces earlier ones (one stderr line)."""
        self.notes[:] = [text]


_current: ContextVar[Deadline | None] = ContextVar("pexopt_deadline", default=None)


def current() -> Deadline | None:
    return _current.get()


@contextmanager
def active(deadline: Deadline) -> Iterator[Deadline]:
    """Make `deadline` the one `check()` and the solver use inside the block."""
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


def check() -> None:
    """Raise OutOfTime if the current deadline's pre-solve time is spent (no-op without one)."""
    d = _current.get()
    if d is not None:
        d.check()
