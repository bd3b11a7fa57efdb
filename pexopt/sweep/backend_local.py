"""Local backend: points run in worker processes (ProcessPoolExecutor, spawn)."""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pexopt.sweep.task import MODELS_DIR, PLANS_DIR, Task, failed_row, run_point


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the parent, which cancels the sweep in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


MAX_RESTARTS = 3  # a pool whose workers keep dying is replaced at most this often


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_ignore_sigint)


def run_local(tasks: list[Task], workers: int,
              fn: Callable[[Task], dict[str, Any]] = run_point
              ) -> Generator[dict[str, Any], None, None]:
    """Yield one row per task as it finishes; at most 2 x workers tasks are submitted ahead.

    Closing the generator early (Ctrl-C, an error in the consumer) stops submitting, cancels
    the pending futures and terminates the workers still running a point. A worker that dies
    (a crash in native code, the OOM killer) fails the points in flight with that error; the
    pool is replaced and the sweep goes on (re-running the sweep retries those points).
    """
    workers = max(1, min(workers, len(tasks)))
    ex = _pool(workers)
    queue = list(reversed(tasks))  # pop() from the end = submission order
    running: dict[Future, Task] = {}
    restarts, finished = 0, False
    try:
        while queue or running:
            broken = False
            while queue and len(running) < 2 * workers and not broken:
                try:
                    running[ex.submit(fn, queue[-1])] = queue[-1]
                    queue.pop()
                except BrokenProcessPool:
                    broken = True
            if running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in done:
                    t = running.pop(f)
                    try:
                        row = f.result()
                    except BrokenProcessPool as e:
                        broken = True
                        row = failed_row(t, f"worker process died ({e}); it may have been "
                                         "another point running at the same time: re-run the "
                                         "sweep to retry")
                    except Exception as e:  # e.g. a result that cannot be unpickled
                        row = failed_row(t, f"worker error ({type(e).__name__}: {e})")
                    yield row
            if broken and not running:
                ex.shutdown(wait=False, cancel_futures=True)
                if restarts >= MAX_RESTARTS:
                    for t in reversed(queue):
                        yield failed_row(t, "not run: worker processes kept dying "
                                         f"({MAX_RESTARTS} restarts)")
                    queue.clear()
                    break
                restarts += 1
                ex = _pool(workers)
        finished = True
    finally:
        if finished:
            ex.shutdown(wait=True)
        else:
            _abort(ex, tasks)


def _abort(ex: ProcessPoolExecutor, tasks: list[Task]) -> None:
    procs = list((getattr(ex, "_processes", None) or {}).values())  # before shutdown drops it
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
    if tasks:  # temporaries of a plan or model write cut short by the termination
        out = Path(tasks[0].out_dir)
        for sub in (PLANS_DIR, MODELS_DIR):
            for tmp in (out / sub).glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
