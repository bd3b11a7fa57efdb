"""`pexopt simulate`, `validate`, `codegen`, `doctor`: the commands that start from a plan
file."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from pexopt import __version__
from pexopt import limits as lim
from pexopt.cli import app
from pexopt.cli.common import (
    EXIT_INVALID,
    Json,
    Seed,
    Shapes,
    Target,
    _c_written,
    _render,
    _shapes,
    _target_profile,
    _verify_line,
    err,
    friendly,
    out,
)
from pexopt.limits import check_int, dumps
from pexopt.plan.format import load_plan
from pexopt.plan.validator import validate


@app.command()
@friendly
def simulate(plan_file: Path, model: Path, input_shape: Shapes = None,
             inputs: Annotated[int, typer.Option("--inputs", help="Random inputs to run.")] = 2,
             seed: Seed = 0, as_json: Json = False) -> None:
    """Execute a plan in a byte-exact arena and compare with the unsplit reference."""
    from pexopt.pipeline import ImportOptions
    from pexopt.plan.validator import check
    from pexopt.simulate.verify import verify_plan

    check_int("--inputs", inputs, 1, lim.MAX_SIM_INPUTS)
    check_int("--seed", seed, 0, lim.MAX_SEED)
    plan = load_plan(plan_file)
    graph = ImportOptions(dtype=plan.dtype, input_external=plan.input_external,
                          input_shapes=_shapes(input_shape)).load(model)
    check(plan, graph)  # never execute a plan that is not valid (extents first)
    report = verify_plan(plan, graph, n_inputs=inputs, seed=seed)
    if as_json:
        print(dumps({**asdict(report), "ok": report.ok}))
    else:
        out.print(_verify_line(report), highlight=False, soft_wrap=True)
    if not report.ok:
        err.print(f"MISMATCH: {plan_file} on {model}: {report.failure()}", highlight=False,
                  soft_wrap=True, markup=False)
        raise typer.Exit(EXIT_INVALID)


@app.command(name="validate")
@friendly
def validate_cmd(plan_file: Path, model: Path, input_shape: Shapes = None,
                 as_json: Json = False) -> None:
    """Check a plan against its model, independently of the solver."""
    from pexopt.pipeline import ImportOptions

    plan = load_plan(plan_file)
    graph = ImportOptions(dtype=plan.dtype, input_external=plan.input_external,
                          input_shapes=_shapes(input_shape)).load(model)
    violations = validate(plan, graph)
    wrong_model = [v for v in violations if v.code == "model_hash"]
    if wrong_model:  # everything else follows from that
        violations = wrong_model
    if as_json:
        print(dumps({"valid": not violations,
                          "violations": [asdict(v) for v in violations]}))
    elif violations:
        for v in violations[:50]:
            err.print(f"[red]{v.code}[/red]: {escape(v.message)}", highlight=False, soft_wrap=True)
        if len(violations) > 50:
            err.print(f"... and {len(violations) - 50} more")
    else:
        out.print(f"valid: {len(plan.steps)} steps, {len(plan.buffers)} buffers, arena "
                  f"{plan.arena_bytes:,} B", highlight=False, soft_wrap=True)
    if violations:
        raise typer.Exit(EXIT_INVALID)


@app.command()
@friendly
def codegen(plan_file: Path, model: Path,
            output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")]
            = Path("pex_out"),
            target: Target = "cortex-m4",
            backend: Annotated[str, typer.Option(
                "--backend", help="cmsis (CMSIS-NN where it matches, default) or portable.")]
            = "cmsis",
            input_shape: Shapes = None) -> None:
    """Generate C (pex_model.h/.c, weights, kernels, README) from a validated plan."""
    from pexopt.codegen.emit import GENERATED
    from pexopt.outputs import Outputs, model_inputs
    from pexopt.pipeline import ImportOptions

    outs = Outputs(inputs=[plan_file, *model_inputs(model),
                           target if os.path.isfile(target) else None])
    outs.folder(output, "-o", GENERATED)
    outs.check()
    plan = load_plan(plan_file)
    graph = ImportOptions(dtype=plan.dtype, input_external=plan.input_external,
                          input_shapes=_shapes(input_shape)).load(model)
    outs.put_folder(output, _render(plan, graph, model, _target_profile(target)[1], backend))
    outs.commit()
    _c_written(output, plan)


@app.command()
@friendly
def doctor(plan_file: Path, model: Path, input_shape: Shapes = None,
           simulate_too: Annotated[bool, typer.Option(
               "--simulate/--no-simulate", help="Also run the plan in the arena.")] = True,
           as_json: Json = False) -> None:
    """Everything to attach to a report about a plan that failed on a device."""
    import hashlib
    import platform
    from importlib import metadata

    from pexopt.frontend.onnx_load import sha256_file
    from pexopt.pipeline import ImportOptions

    info: dict[str, Any] = {"pexopt": __version__, "python": platform.python_version(),
                            "platform": platform.platform()}
    for pkg in ("ortools", "onnx", "onnxruntime", "numpy"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    info["plan_sha256"] = hashlib.sha256(plan_file.read_bytes()).hexdigest() \
        if plan_file.is_file() else None
    info["model_sha256"] = sha256_file(model) if model.is_file() else None
    plan = load_plan(plan_file)
    info.update(plan_format=plan.format, plan_model_sha256=plan.model.get("sha256"),
                arena_bytes=plan.arena_bytes, steps=len(plan.steps), buffers=len(plan.buffers),
                solver=asdict(plan.solver))
    graph = ImportOptions(dtype=plan.dtype, input_external=plan.input_external,
                          input_shapes=_shapes(input_shape)).load(model)
    violations = validate(plan, graph)
    info["valid"] = not violations
    info["violations"] = [f"{v.code}: {v.message}" for v in violations[:20]]
    if simulate_too and not violations:
        from pexopt.simulate.verify import verify_plan

        rep = verify_plan(plan, graph)
        info["simulation"] = {**asdict(rep), "ok": rep.ok}
    if as_json:
        print(dumps(info, indent=1))
        return
    for k, v in info.items():
        out.print(f"{k}: {v}", highlight=False, soft_wrap=True, markup=False)
