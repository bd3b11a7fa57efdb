"""`pexopt bench`: pexopt against the TFLM planner and reordering (bench.json/.md, the
README's table)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from pexopt import __version__
from pexopt import limits as lim
from pexopt.cli import app
from pexopt.cli.common import (
    Align,
    Dtype,
    External,
    Json,
    Quiet,
    Seed,
    TimeLimit,
    Workers,
    _opts,
    _params,
    _print_table,
    err,
    friendly,
    out,
)
from pexopt.errors import PexError
from pexopt.limits import check_int, dumps


@app.command()
@friendly
def bench(models: Annotated[list[Path] | None, typer.Argument()] = None,
          random_dags: Annotated[int, typer.Option(
              "--random-dags", help="Also bench N random branching DAGs.")] = 0,
          dag_ops: Annotated[int, typer.Option("--dag-ops", help="Operators per DAG.")] = 60,
          target: Annotated[str | None, typer.Option(
              "--target", help="Also run both plans' C under QEMU: cortex-m4 or cortex-m7.")]
          = None,
          out_dir: Annotated[Path, typer.Option("--out", help="Folder for bench.json/.md.")] =
          Path("bench_out"),
          update_readme: Annotated[Path | None, typer.Option(
              "--update-readme", help="Replace the bench table in this README.")] = None,
          dtype: Dtype = "int8", input_external: External = False,
          time_limit: TimeLimit = 30.0, workers: Workers = 2, seed: Seed = 0, align: Align = 4,
          no_rows: Annotated[bool, typer.Option(
              "--no-rows", help="No row bands (channel splits only).")] = False,
          no_stream: Annotated[bool, typer.Option(
              "--no-stream", help="Row bands never stream over their input.")] = False,
          as_json: Json = False, quiet: Quiet = False) -> None:
    """Compare pexopt with the TFLM planner and reordering on many models."""
    from rich.progress import Progress

    from pexopt.outputs import Outputs, model_inputs
    from pexopt.pipeline import bench_model, bench_random_dag
    from pexopt.report.tables import (
        bench_markdown,
        bench_table,
        target_markdown,
        target_table,
    )

    opts = _opts(dtype, input_external, None)
    params = _params(time_limit, workers, seed, align, rows=not no_rows, stream=not no_stream)
    check_int("--random-dags", random_dags, 0, lim.MAX_RANDOM_DAGS)
    check_int("--dag-ops", dag_ops, 1, lim.MAX_DAG_OPS)
    models = models or []
    if not models and random_dags <= 0:
        raise PexError("bench: give models and/or --random-dags N")
    # every output checked before the first model is solved
    outs = Outputs(inputs=[i for m in models for i in model_inputs(m)])
    outs.file(out_dir / "bench.json", "--out")
    outs.file(out_dir / "bench.md", "--out")
    outs.file(update_readme, "--update-readme")
    outs.check()
    if update_readme is not None:
        _replace_section(update_readme, "")  # the section exists: refused now, not at the end
    rows = []
    with Progress(console=err, transient=True, disable=quiet or as_json) as bar:
        task = bar.add_task("bench", total=len(models) + max(0, random_dags))
        for m in models:
            bar.update(task, description=f"bench {m.name}")
            rows.append(bench_model(m, opts, params, target))
            bar.advance(task)
        for seed in range(max(0, random_dags)):
            bar.update(task, description=f"bench random DAG {seed}")
            rows.append(bench_random_dag(dag_ops, seed, params))
            bar.advance(task)
    data = {"version": __version__, "workers": workers, "time_limit": time_limit,
            "dtype": dtype, "input_external": input_external,
            "target": target,
            "rows": [{**asdict(r), "ratio": r.ratio, "overhead": r.overhead} for r in rows]}
    md = bench_markdown(rows, workers)
    if target is not None:
        md += "\n" + target_markdown(rows, target)
    outs.put(out_dir / "bench.json", dumps(data, indent=1) + "\n")
    outs.put(out_dir / "bench.md", md)
    if update_readme is not None:
        outs.put(update_readme, _replace_section(update_readme, md))
    outs.commit()  # all three or none (issue #13 item 9)
    if as_json:
        print(dumps(data))
    elif not quiet:
        _print_table(bench_table(rows))
        if target is not None:
            _print_table(target_table(rows, target))
        out.print(f"written: {out_dir / 'bench.json'}, {out_dir / 'bench.md'}", highlight=False,
                  soft_wrap=True)


def _replace_section(readme: Path, md: str) -> str:
    """The README's text with its bench section replaced by `md` (nothing written)."""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PexError(f"--update-readme: cannot read '{readme}': "
                       f"{getattr(e, 'strerror', None) or e}") from None
    if start not in text or end not in text or text.index(end) < text.index(start):
        raise PexError(f"{readme}: no '{start}' ... '{end}' section to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{md}{end}{tail}"
