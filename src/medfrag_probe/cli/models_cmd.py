"""`medfrag-probe models` and `medfrag-probe inspect`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .options import Device, Dtype, TrustRemoteCode


def register(app: typer.Typer) -> None:
    """Add the commands to `app`."""
    app.command("models")(models_command)
    app.command("inspect", no_args_is_help=True)(inspect_command)


def models_command() -> None:
    """List registered architectures, presets (real hub ids) and tiny test models."""
    from ..models.loading import load_registry
    from ..models.registry import ARCHITECTURES, MODEL_TYPES, PRESETS
    from ..models.tiny import TINY

    load_registry()
    typer.echo("architectures (adapter: transformers model_types):")
    for name, cls in sorted(ARCHITECTURES.items()):
        types = ", ".join(sorted(t for t, a in MODEL_TYPES.items() if a == name)) or "-"
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        typer.echo(f"  {name:15s} [{types}] {doc}")
    typer.echo("presets:")
    for preset in PRESETS.values():
        typer.echo(f"  {preset.name:22s} {preset.spec}  ({preset.description})")
    typer.echo("tiny random models (tests, demo): " + ", ".join(f"tiny:{n}" for n in sorted(TINY)))


def inspect_command(
    model: Annotated[str, typer.Argument(help="Model spec (see `models`).")],
    device: Device = "cpu",
    dtype: Dtype = "float32",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Show every hook point with token count and width, the point the language model reads, and fingerprints."""
    from ..inspection import inspect_model

    report = inspect_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    typer.echo(f"{report['model']} ({report['arch']}); language model reads: {report['reads_point'] or '-'}")
    typer.echo(f"fingerprints: {report['fingerprints']}")
    for row in report["points"]:
        typer.echo(f"  {row['point']:18s} tokens={row['tokens']!s:>6} width={row['width']!s:>6} "
                   f"prefix={row['prefix']} poolings={','.join(row['poolings'])}")
