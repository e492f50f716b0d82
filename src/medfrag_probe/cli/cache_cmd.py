"""`medfrag-probe cache info|verify`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect and check embedding caches.")

CacheFile = Annotated[Path, typer.Argument(help="An HDF5 cache file.")]


@app.command("info", no_args_is_help=True)
def info_command(path: CacheFile, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show what a cache holds: samples, classes, datasets, provenance, failures."""
    from ..cache import EmbeddingCache

    cache = EmbeddingCache(path)
    summary = cache.summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=1, default=str))
        return
    attrs = summary["attrs"]
    typer.echo(f"{path}: {summary['samples']} samples, {summary['done']} done, {summary['failed']} failed; "
               f"classes: {', '.join(summary['classes'])}")
    for key in ("model", "data", "model_fingerprint", "vision_fingerprint", "data_fingerprint", "reads_point",
                "store_dtype", "created"):
        if key in attrs:
            typer.echo(f"  {key}: {attrs[key]}")
    for name, shape in summary["datasets"].items():
        typer.echo(f"  emb/{name}: {shape}")
    for i, (done, error) in enumerate(zip(cache.done, cache.errors)):
        if not done and error:
            typer.echo(f"  failed {cache.ids[i]}: {error}")


@app.command("verify", no_args_is_help=True)
def verify_command(path: CacheFile) -> None:
    """Check a cache against the schema; exit 1 when a problem is found."""
    from ..cache import verify

    problems = verify(path)
    for problem in problems:
        typer.echo(f"problem: {problem}")
    typer.echo(f"{path}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    if problems:
        raise typer.Exit(1)
