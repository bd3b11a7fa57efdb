"""Signals during a sweep: SIGTERM stops it like Ctrl-C, and neither cuts a row in half."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM during a sweep: stops it like Ctrl-C (pool shut down, complete rows kept)."""


@contextmanager
def _no_sigint() -> Iterator[None]:
    """Defer Ctrl-C and SIGTERM while a row is written, so both files hold the same complete
    rows; a deferred signal is delivered again afterwards, to the handler it would have met."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda n, f: hit.append(n)) for s in sigs}
    try:
        yield
    finally:
        for s in sigs:
            signal.signal(s, old[s])
        if hit:
            signal.raise_signal(hit[0])
            # the restored handler ignored it: still stop the sweep
            raise Terminated if hit[0] == signal.SIGTERM else KeyboardInterrupt


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While points run, SIGTERM raises `Terminated` in the main thread (once), so the process
    pool shuts down in order instead of dying with it (no leaked semaphores, rows kept)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if not hit:  # later ones: already stopping, let the shutdown finish
            hit.append(signum)
            raise Terminated

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)

