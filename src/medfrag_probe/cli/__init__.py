"""The `medfrag-probe` command line: thin typer wrappers around the library functions."""

from __future__ import annotations

import logging
import sys

import typer

from .. import __version__
from .._log import set_level
from ..errors import UserError
from . import (
    bridge_cmd,
    cache_cmd,
    extract_cmd,
    intervene_cmd,
    models_cmd,
    probe_cmd,
    study_cmd,
    synth_cmd,
    vqa_cmd,
)

app = typer.Typer(no_args_is_help=True, add_completion=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Find whether a vision-language model fails in what it sees or in what it does with it.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medfrag-probe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines (warnings "
                                     "and errors still show)."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Also detail lines (logging level DEBUG).")
          ) -> None:
    if quiet and verbose:
        raise UserError("--quiet and --verbose contradict each other; give one")
    set_level(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


models_cmd.register(app)
extract_cmd.register(app)
synth_cmd.register(app)
probe_cmd.register(app)
app.add_typer(vqa_cmd.app, name="vqa")
intervene_cmd.register(app)
bridge_cmd.register(app)
study_cmd.register(app)
app.add_typer(cache_cmd.app, name="cache")


def _file_system_error(exc: OSError) -> bool:
    """A full disk, a folder where a file was expected, or a place the user may not write: one line, exit 2
    (finished work stays where it was written). Returns False for anything else."""
    import errno

    where = exc.filename or "the output"
    reasons = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "the file system is read-only", errno.EISDIR: "it is a folder, not a file",
               errno.ENOTDIR: "a part of the path is a file, not a folder"}
    if exc.errno not in reasons:
        return False
    typer.echo(f"error: cannot write or read {where}: {reasons[exc.errno]}; finished work is kept, fix it and "
               "re-run the same command to resume", err=True)
    sys.exit(2)


def _interrupted() -> None:
    typer.echo("interrupted; finished batches are kept and a re-run resumes", err=True)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes print one line and exit 2; anything else is a bug (exit 1, traceback)."""
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc.for_cli()}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except KeyboardInterrupt:
        _interrupted()
    except OSError as exc:
        if not _file_system_error(exc):
            raise
    except Exception as exc:
        if type(exc).__name__ == "Abort":  # (vendored) click turns Ctrl-C into Abort before it reaches us
            _interrupted()
        # usage errors of typer's (vendored) click: a bad option or value is a user mistake
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            message = exc.format_message()
            if message:  # empty for "no arguments: help was shown"
                typer.echo(f"error: {message}", err=True)
            sys.exit(exc.exit_code or 2)
        raise
    if code == 130:  # typer turns Ctrl-C into Exit(130), which a non-standalone call returns as the code
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)
