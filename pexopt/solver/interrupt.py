"""Ctrl-C during a solve: the first stops the search and keeps the best plan found so far, the
second aborts (the caller then writes nothing).

CP-SAT blocks the main thread inside C++, where Python signal handlers do not run, and its own
SIGINT handling only ends the current stage as if its time limit had passed (the next stage
would start). So inside `keep_best_on_sigint` every CP-SAT search runs in a worker thread while
the main thread waits, the handler stops the running search (`CpSolver.stop_search`, thread
safe) and every later stage is skipped: the solver returns the best schedule it has.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class _State:
    active: bool = False  # inside keep_best_on_sigint, in the main thread
    hit: bool = False  # a first Ctrl-C arrived
    solvers: set[Any] | None = None


_STATE = _State()
_LOCK = threading.Lock()


def requested() -> bool:
    """A first Ctrl-C arrived: stop searching, finish with the best plan so far."""
    return _STATE.hit


@contextmanager
def keep_best_on_sigint() -> Iterator[_State]:
    """While active (main thread only), the first SIGINT stops the search, the second raises
    KeyboardInterrupt. Yields the state: `.hit` says whether the search was cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield _State()
        return

    def handler(signum: int, frame: object) -> None:
        if _STATE.hit:
            raise KeyboardInterrupt
        _STATE.hit = True
        with _LOCK:
            for s in list(_STATE.solvers or ()):
                s.stop_search()

    old = signal.signal(signal.SIGINT, handler)
    _STATE.active, _STATE.hit, _STATE.solvers = True, False, set()
    try:
        yield _STATE
    finally:
        signal.signal(signal.SIGINT, old)
        _STATE.active, _STATE.solvers = False, None


def run_search(solver: Any, search: Callable[[], T]) -> T | None:
    """`search()` (a CP-SAT solve with `solver`), stoppable by Ctrl-C; None when a Ctrl-C came
    before it started."""
    if not _STATE.active:
        return search()
    if _STATE.hit:
        return None
    solver.parameters.catch_sigint_signal = False  # ours stops every stage, not just this one
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = search()
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            box["error"] = e

    with _LOCK:
        assert _STATE.solvers is not None
        _STATE.solvers.add(solver)
    t = threading.Thread(target=work, name="cp-sat", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.05)  # the main thread stays in Python, so the handler runs at once
    except KeyboardInterrupt:  # the second Ctrl-C: stop the search, then abort
        solver.stop_search()
        t.join()
        raise
    finally:
        with _LOCK:
            if _STATE.solvers is not None:
                _STATE.solvers.discard(solver)
    if "error" in box:
        raise box["error"]
    return box["result"]
