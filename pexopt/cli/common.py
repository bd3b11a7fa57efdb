"""Shared plumbing of the `pexopt` commands: usage errors and expected failures as one line
and an exit code (`friendly`), the option types, option parsing, tables on stdout, when the
command started."""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from pexopt import limits as lim
from pexopt.errors import PexError
from pexopt.frontend.onnx_load import parse_shape
from pexopt.limits import check_float, check_int
from pexopt.plan.validator import PlanInvalid
from pexopt.schedule import SolverParams

# click's UsageError, from whichever click this typer uses (newer ones vendor it)
_USAGE = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _OneLineUsage(TyperGroup):
    """A usage error (`--workers abc`, an unknown option) is one line on stderr and exit 2,
    like every other bad input; `pexopt` alone still prints the help (typer's own path)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kw: Any) -> Any:
        argv = kw["args"] if "args" in kw else args[0] if args else None
        if not standalone_mode or not list(sys.argv[1:] if argv is None else argv):
            return super().main(*args, standalone_mode=standalone_mode, **kw)
        try:
            rv = super().main(*args, standalone_mode=False, **kw)
        except _USAGE as e:
            msg = " ".join(e.format_message().split())
            err.print(f"[red]error:[/red] {escape(msg)}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            err.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)  # typer.Exit(n) comes back as n


err = Console(stderr=True)
out = Console()

EXIT_FITS, EXIT_INVALID, EXIT_BAD_INPUT, EXIT_NO_FIT = 0, 1, 2, 3
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn expected failures into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except PlanInvalid as e:  # a plan the validator rejects (README: exit 1)
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INVALID) from None
        except PexError as e:
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except BrokenPipeError:  # `pexopt ... | head`: the reader left; not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except OSError as e:  # a full disk, a read-only folder: the file system, not a bug
            where = f"{e.filename}: " if e.filename else ""
            err.print(f"[red]error:[/red] {escape(where + (e.strerror or str(e)))}",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            err.print("interrupted; nothing written")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as e:  # a bug: still one line, with what to report
            err.print(f"[red]internal error:[/red] {type(e).__name__}: {escape(str(e))}",
                      highlight=False,
                      soft_wrap=True)
            raise typer.Exit(EXIT_INVALID) from None

    return wrapper  # type: ignore[return-value]


def _print_table(table: Any) -> None:
    """A table (or a Text, wrapped) on stdout, as wide as the terminal, or to a pipe or file
    COLUMNS or 160 columns; a table too wide for that is printed one record per row."""
    from pexopt.report.tables import fit, output_width

    width = output_width(out)
    (out if out.is_terminal else Console(width=width, no_color=out.no_color)).print(
        fit(table, width))


def _shapes(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    res = {}
    for v in values or []:
        if "=" not in v:
            raise PexError(f"--input-shape: '{v}' is not name=1x3x144x144")
        name, dims = v.split("=", 1)
        res[name] = parse_shape(dims)
        if max(res[name]) > lim.MAX_DIM or math.prod(res[name]) > lim.MAX_DIM:
            raise PexError(f"--input-shape: '{v[:60]}' has more than {lim.MAX_DIM:,} elements")
    return res


Dtype = Annotated[str, typer.Option("--dtype", help="Deployment dtype: int8 or float32.")]
External = Annotated[bool, typer.Option("--input-external",
                                        help="The graph input is not in the arena.")]
Shapes = Annotated[list[str] | None, typer.Option(
    "--input-shape", help="Fix a dynamic input: name=1x3x144x144 (repeatable).")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, no tables.")]
TimeLimit = Annotated[float, typer.Option("--time-limit", help="Solver seconds.")]
Workers = Annotated[int, typer.Option("--workers", help="CP-SAT worker threads.")]
Seed = Annotated[int, typer.Option("--seed", help="Solver random seed.")]
Align = Annotated[int, typer.Option("--align", help="Offset alignment in bytes.")]
Target = Annotated[str, typer.Option(
    "--target", help="cortex-m4, cortex-m7, cortex-m55 or a profile .yaml naming its core "
    "(sizes CMSIS-NN scratch).")]


def _opts(dtype: str, external: bool, shapes: list[str] | None):  # noqa: ANN202
    from pexopt.pipeline import ImportOptions

    return ImportOptions(dtype=dtype, input_external=external, input_shapes=_shapes(shapes))


def _params(time_limit: float, workers: int, seed: int, align: int, reorder: bool = True,
            inplace: bool = True, split: bool = True, target: str | None = None,
            rows: bool = True, stream: bool = True, hybrid: bool = True) -> SolverParams:
    check_float("--time-limit", time_limit, 0, lim.MAX_TIME_LIMIT, lo_open=True)
    check_int("--workers", workers, 1, lim.MAX_WORKERS)
    check_int("--seed", seed, 0, lim.MAX_SEED)
    if check_int("--align", align, 1, lim.MAX_ALIGN) & (align - 1):
        raise PexError(f"--align: {align} is not a power of two")
    if target is not None:
        from pexopt.cmsis_scratch import TARGETS

        if target not in TARGETS:
            raise PexError(f"--target: unknown target '{target}' (one of {', '.join(TARGETS)})")
    return SolverParams(time_limit=time_limit, workers=workers, seed=seed, align=align,
                        reorder=reorder, inplace=inplace, split=split, target=target,
                        rows=rows, stream=stream, hybrid=hybrid)


_first_command = True


def _command_start() -> float:
    """When the command started: in a `pexopt` process its first command counts from the
    process start (importing Python libraries takes seconds on a loaded machine), any other
    call (tests, scripts) from now."""
    global _first_command
    first, _first_command = _first_command, False
    if first and Path(sys.argv[0]).name == "pexopt":
        import pexopt

        return pexopt.STARTED
    return time.monotonic()


def _target_profile(target: str | None):  # noqa: ANN202
    """(profile or None, codegen core) for --target (cortex-m4 when absent)."""
    from pexopt.latency.profile import resolve_target

    return (None, "cortex-m4") if target is None else resolve_target(target)


def _verify_line(r) -> str:  # noqa: ANN001
    parts = [f"simulated on {r.inputs} inputs: "
             + ("bit-exact vs the unsplit reference" if r.max_error == 0 else
                f"max error {r.max_error:.2g} of the output range vs the reference")]
    if r.ort_top1 is not None:
        parts.append(f"onnxruntime top-1 agreement {100 * r.ort_top1:.0f}%")
    if r.ort_mean_steps is not None:
        parts.append(f"mean |diff| {r.ort_mean_steps:.2f} steps")
    if r.ort_max_error is not None:
        parts.append(f"max error {r.ort_max_error:.2g} of the range")
    if r.ort_ok is not None:
        parts.append("within the onnxruntime tolerance" if r.ort_ok else
                     "OUTSIDE the onnxruntime tolerance")
    return "; ".join(parts + r.notes)


def _render(plan, graph, model: Path, target: str, backend: str) -> dict[str, str]:  # noqa: ANN001
    """The C files in memory (nothing written); the weights come from the graph (a pruned
    graph's are the pruned model's), `model` names the files' origin."""
    from pexopt.codegen.emit import render_c

    if backend not in ("cmsis", "portable"):
        raise PexError(f"--backend: '{backend}' is not cmsis or portable")
    return render_c(plan, graph, model, target=target, backend_default=backend)


def _c_written(output: Path, plan) -> None:  # noqa: ANN001
    from pexopt.codegen.emit import GENERATED

    out.print(f"C written to {output}/ ({len(GENERATED)} files, arena {plan.arena_bytes:,} B); "
              f"see {output}/README.md", highlight=False, soft_wrap=True, markup=False)
