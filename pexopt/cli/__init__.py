"""`pexopt` command line: inspect, solve, validate, bench.

One Typer `app`; each command module registers its commands on it when imported (below, after
`app` exists). `common` holds what the commands share; a command imports its heavy modules
(solver, onnxruntime, plots) inside its body, so `pexopt --help` stays fast."""

from __future__ import annotations

import sys

import typer

from pexopt.cli.common import _OneLineUsage, _print_table

app = typer.Typer(add_completion=False, no_args_is_help=True, cls=_OneLineUsage,
                  help="Plan the SRAM arena of a neural network for a microcontroller.")

from pexopt.cli import cmd_bench, cmd_plan, cmd_report, cmd_solve, cmd_tools  # noqa: E402, F401

# `pexopt --help` lists the commands in the order they registered: keep the order they had
# when they were one module, whichever order the modules are imported in
_HELP_ORDER = ("inspect", "solve", "simulate", "validate", "bench", "codegen", "sweep", "report",
               "sweep-report", "quantize", "doctor", "calibrate", "version")
app.registered_commands.sort(key=lambda c: _HELP_ORDER.index(c.name or c.callback.__name__))

__all__ = ["_print_table", "app", "main"]


def main() -> None:  # pragma: no cover
    sys.exit(app())
