"""`pexopt inspect`, `quantize`, `calibrate`, `version`: the model and the target profile
beside planning."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from pexopt import __version__
from pexopt.cli import app
from pexopt.cli.common import (
    Dtype,
    External,
    Json,
    Quiet,
    Shapes,
    _opts,
    _print_table,
    err,
    friendly,
    out,
)
from pexopt.limits import dumps


@app.command()
@friendly
def inspect(model: Path, dtype: Dtype = "int8", input_external: External = False,
            input_shape: Shapes = None, as_json: Json = False) -> None:
    """Per-operator table: op, kind, output shape, bytes, MACs; the naive peak and where."""
    from pexopt.pipeline import naive_peak
    from pexopt.report.tables import inspect_summary, inspect_table

    graph = _opts(dtype, input_external, input_shape).load(model)
    peak = naive_peak(graph)
    if as_json:
        ops = [{"id": o.id, "op": o.name, "kind": o.kind.value, "onnx_type": o.onnx_type,
                "activation": o.activation.name if o.activation else None,
                "outputs": [{"name": graph.tensors[t].name, "shape": graph.tensors[t].shape,
                             "bytes": graph.tensors[t].nbytes} for t in o.outputs],
                "macs": o.macs, "onnx_nodes": list(o.onnx_nodes)} for o in graph.ops]
        print(dumps({"model": str(model), "dtype": dtype, "input_external": input_external,
                          "ops": ops, "naive_peak_bytes": peak[0],
                          "naive_peak_op": graph.ops[peak[1]].name}, indent=1))
        return
    _print_table(inspect_table(graph, peak))
    for line in inspect_summary(graph, peak):
        _print_table(Text(line))


@app.command()
@friendly
def quantize(model: Path,
             output: Annotated[Path, typer.Option("-o", "--output", help="The int8 QDQ model.")],
             calib: Annotated[str, typer.Option(
                 "--calib", help="Calibration inputs: a .npy file, or random:N for a smoke "
                 "test.")]) -> None:
    """Quantise a float ONNX model to int8 QDQ (onnxruntime static quantisation)."""
    from pexopt.outputs import Outputs, model_inputs
    from pexopt.quantize import quantize_model

    outs = Outputs(inputs=[*model_inputs(model), calib if os.path.isfile(calib) else None])
    outs.file(output, "-o")
    outs.check()  # before onnxruntime's work; quantize_model writes through the same checks
    rep = quantize_model(model, output, calib)
    out.print(f"wrote {rep.path}: {rep.nodes} nodes, {rep.bytes:,} B, calibrated on "
              f"{rep.samples} samples (sha256 {rep.sha256[:16]})", highlight=False,
              markup=False, soft_wrap=True)


@app.command()
@friendly
def calibrate(target: Annotated[str, typer.Option(
                  "--target", help="cortex-m4, cortex-m7, cortex-m55 or a profile .yaml to "
                  "refit.")] = "cortex-m4",
              output: Annotated[Path | None, typer.Option(
                  "-o", "--output", help="Profile to write (default: <target>.yaml here).")]
              = None,
              quick: Annotated[bool, typer.Option(
                  "--quick", help="A subset of the micro models (a rougher fit).")] = False,
              quiet: Quiet = False) -> None:
    """Fit a target profile's kernel costs from micro models run under QEMU (instructions)."""
    from pexopt.calibrate.calibrate import base_profile, write_profile
    from pexopt.calibrate.calibrate import calibrate as run_calibration
    from pexopt.outputs import Outputs
    from pexopt.target.qemu import require_tools

    base_profile(target)  # a bad target or profile file: one line before any work
    dest = output if output is not None else Path(f"{Path(target).stem}.yaml")
    # a profile file is an input like any other: never written over (refit into a new file)
    outs = Outputs(inputs=[Path(target)] if Path(target).is_file() else [])
    outs.file(dest, "-o")
    outs.check()  # before minutes under QEMU
    require_tools()
    log = None if quiet else (lambda line: err.print(line, highlight=False, markup=False))
    prof, samples = run_calibration(target, quick=quick, progress=log)
    cmd = f"pexopt calibrate --target {target}" + (" --quick" if quick else "")
    if output is not None:
        cmd += f" -o {output}"
    write_profile(prof, dest, cmd)
    if not quiet:
        for cls, e in prof.fit.items():
            out.print(f"{cls:16s} {e['samples']:3d} models  max error "
                      f"{100 * e['max_rel_error']:5.1f}%  mean {100 * e['mean_rel_error']:5.1f}%",
                      highlight=False, markup=False)
        out.print(f"profile written to {dest} ({len(samples)} micro models)", highlight=False,
                  soft_wrap=True, markup=False)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)
