"""`medfrag-probe run`, `report` and `demo`: whole studies from one config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JOBS_HELP = ("Units (model x task) run at once, each in its own process with an equal share of the CPU cores "
             "(default: the config's `jobs`); at most the number of cores. Each job loads its own model: on a GPU "
             "or with large models keep 1.")


def register(app: typer.Typer) -> None:
    """Add the commands to `app`."""
    app.command("run", no_args_is_help=True)(run_command)
    app.command("report", no_args_is_help=True)(report_command)
    app.command("demo")(demo_command)


def run_command(
    config: Annotated[str, typer.Argument(help="An experiment config (YAML path, or a name under "
                                          "configs/experiments/).")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the config's `out`).")] = None,
    report: Annotated[bool, typer.Option(help="Write the HTML and Markdown report at the end.")] = True,
    jobs: Annotated[Optional[int], typer.Option(help=JOBS_HELP)] = None,
) -> None:
    """Extract -> probe -> vqa -> bridge for every model x task; only what changed since the last run is redone."""
    from ..experiment import run
    from ..experiment.report import report as write_report

    summary = run(config, out=out, jobs=jobs)
    folder = Path(summary["out"])
    if report:
        paths = write_report(folder)
        typer.echo(f"report: {paths['html']} (summary: {paths['markdown']})")
    typer.echo(f"{summary['model_work']} model stages ran; results in {folder}")


def report_command(
    folder: Annotated[Path, typer.Argument(help="A study folder written by `run`.")],
) -> None:
    """A self-contained HTML report (figures embedded) and a Markdown summary of a study folder."""
    from ..experiment.report import report

    paths = report(folder)
    typer.echo(f"report: {paths['html']} (summary: {paths['markdown']})")


def demo_command(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("probes/demo"),
    config: Annotated[str, typer.Option(help="The demo config (a shorter one for CI: demo-ci).")] = "demo",
    jobs: Annotated[Optional[int], typer.Option(help=JOBS_HELP)] = None,
) -> None:
    """The embedded demo: tiny models of two generalist/medical pairs on the four synthetic tasks and the four model
    organisms (trained tiny LLaVAs whose failure is known) on brain MRI, every stage."""
    import time

    from ..experiment import run
    from ..experiment.report import report

    start = time.perf_counter()
    summary = run(config, out=out, jobs=jobs)
    paths = report(summary["out"])
    typer.echo(f"demo finished in {time.perf_counter() - start:.0f} s; open {paths['html'].resolve()}")
