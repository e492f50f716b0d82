"""The `medfrag-probe` command line: thin typer wrappers around the library functions."""

from __future__ import annotations

import sys

import typer

from .. import __version__
from .._log import set_quiet
from ..errors import UserError
from . import cache_cmd, extract_cmd, models_cmd, synth_cmd

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Find whether a vision-language model fails in what it sees or in what it does with it.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medfrag-probe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines.")) -> None:
    set_quiet(quiet)


models_cmd.register(app)
extract_cmd.register(app)
synth_cmd.register(app)
app.add_typer(cache_cmd.app, name="cache")


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes print one line and exit 2; anything else is a bug (exit 1, traceback)."""
    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished batches are kept and a re-run resumes", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code and message
        import click

        if isinstance(exc, click.exceptions.ClickException):
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise
