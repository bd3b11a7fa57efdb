"""Ray backend (optional extra `pexopt[ray]`): the same task function as Ray remote tasks.

Without `address`, a private local Ray instance is started on the loopback interface (no
dashboard, num_cpus = workers) and shut down at the end; with `address`, an existing cluster is
used: its nodes need pexopt installed and the model files at the same paths (plans come back in
the rows and are written here; a rescaled model is written under the output folder's path on
the node that solves it). If Ray is already initialised in this process, that instance is used
and left running.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

from pexopt.errors import PexError
from pexopt.sweep.task import Task, failed_row, run_point

INSTALL_HINT = "pip install 'pexopt[ray]' (or pip install ray)"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_installed() -> bool:
    """Whether Ray can be imported, without importing it (its import reads settings)."""
    return importlib.util.find_spec("ray") is not None


def require_ray() -> Any:
    """The ray module, or a one-line PexError saying how to install it."""
    if "ray" not in sys.modules and not ray_installed():
        raise PexError(f"the ray backend needs Ray, which is not installed: {INSTALL_HINT}")
    try:
        import ray
    except ImportError as e:
        raise PexError(f"the ray backend needs Ray, which cannot be imported ({e}): "
                       f"{INSTALL_HINT}") from None
    return ray


@contextmanager
def _loopback() -> Iterator[None]:
    """Make Ray pick 127.0.0.1 as the node address, so its servers bind to loopback only.

    On Linux Ray resolves the node address to the host's external IP unless cluster mode is
    off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read when ray is imported); the switch is set
    while Ray is imported and started, then restored.
    """
    old_env = os.environ.get(LOOPBACK_ENV)
    os.environ[LOOPBACK_ENV] = "0"
    consts, old_flag = None, None
    try:
        if "ray" in sys.modules:  # imported earlier: flip the flag it already read
            from ray._private import ray_constants as consts

            old_flag = getattr(consts, "ENABLE_RAY_CLUSTER", None)
            consts.ENABLE_RAY_CLUSTER = False
        yield
    finally:
        if old_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = old_env
        if consts is not None and old_flag is not None:
            consts.ENABLE_RAY_CLUSTER = old_flag


def start_local_ray(num_cpus: int) -> None:
    """A private Ray instance whose servers listen on 127.0.0.1 only, without dashboard."""
    with _loopback():
        ray = require_ray()
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="ERROR")
    try:
        ip = ray._private.worker.global_worker.node.node_ip_address
    except AttributeError:  # another Ray version: cannot check
        ip = "127.0.0.1"
    if ip not in ("127.0.0.1", "::1", "localhost"):
        ray.shutdown()
        raise PexError(f"ray: the local instance would listen on {ip}, not only on loopback; "
                       f"set {LOOPBACK_ENV}=0 before Ray is imported, or pass --address")


def run_ray(tasks: list[Task], workers: int, address: str | None = None,
            cpus_per_task: int = 1, fn: Callable[[Task], dict[str, Any]] = run_point
            ) -> Generator[dict[str, Any], None, None]:
    """Yield one row per task as it finishes (at most 2 x workers tasks in flight)."""
    ray = require_ray() if "ray" in sys.modules or address is not None else None
    started = False
    if ray is None or not ray.is_initialized():
        try:
            if address is None:
                start_local_ray(workers)
                ray = require_ray()
            else:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except PexError:
            raise
        except Exception as e:
            where = f" at {address}" if address else ""
            raise PexError(f"ray: cannot start or reach a cluster{where} "
                           f"({type(e).__name__}: {_first_line(e)})") from None
        started = True
    remote = ray.remote(num_cpus=cpus_per_task, max_retries=0)(fn)
    queue = iter(tasks)
    running: dict[Any, Task] = {}
    finished = False

    def submit() -> None:
        while len(running) < 2 * workers:
            t = next(queue, None)
            if t is None:
                return
            running[remote.remote(t)] = t

    try:
        submit()
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                t = running.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as e:  # the worker died or Ray failed the task
                    row = failed_row(t, f"ray task failed ({type(e).__name__}: "
                                        f"{_first_line(e)})")
                yield row
            submit()
        finished = True
    finally:
        if not finished:
            for ref in running:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or gone
                    pass
        if started:
            ray.shutdown()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""
