"""`medfrag-probe synth`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the command to `app`."""
    app.command("synth", no_args_is_help=True)(synth_command)


def synth_command(
    name: Annotated[str, typer.Argument(help="brain-mri, chest-xray, dermoscopy or histology.")],
    out: Annotated[Path, typer.Option(help="Output folder (DIR/CLASS/*.png + DIR/manifest.csv).")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 400,
    difficulty: Annotated[float, typer.Option(help="0 (easy) .. 1 (no signal).")] = 0.3,
    seed: Annotated[int, typer.Option()] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 96,
    per_patient: Annotated[int, typer.Option(help="Images per simulated patient.")] = 4,
    splits: Annotated[bool, typer.Option(help="Assign patient-level train/val/test splits.")] = False,
) -> None:
    """Write a procedural task as an image folder with a manifest, to look at or to use as data."""
    from ..data.synth import write_synth

    manifest = write_synth(name, out, n=n, difficulty=difficulty, seed=seed, size=size, per_patient=per_patient,
                           splits=splits)
    typer.echo(f"wrote {n} images and {manifest}")
