"""`medfrag-probe intervene`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Data, Device, Dtype, Model, TrustRemoteCode


def register(app: typer.Typer) -> None:
    """Add the command to `app`."""
    app.command("intervene", no_args_is_help=True)(intervene_command)


def intervene_command(
    model: Model,
    data: Data,
    task: Annotated[str, typer.Option("--task", "-t", help="Task name under configs/tasks/ or a path to a task file.")],
    probes: Annotated[Optional[Path], typer.Option(help="Probe output folder holding the linear probe of the "
                                                   "'projector' point for this model and data: its outer folds "
                                                   "decide which samples fit each subspace. Without it, "
                                                   "patient-grouped folds are drawn here.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder (interventions.jsonl, samples.csv).")] = Path(
        "probes/interventions"),
    limit: Annotated[Optional[int], typer.Option(help="Intervene on a seeded subset of this many samples.")] = None,
    prompts: Annotated[Optional[str], typer.Option(help="Closed questions to ask, comma-separated: prompt ids, "
                                                   "families (mc-diagnosis) or kinds (yes_no, multiple_choice). "
                                                   "Default: every closed question that names a class.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    folds: Annotated[int, typer.Option(help="Outer folds when --probes is not given.")] = 5,
    min_effect: Annotated[float, typer.Option(help="Skill change that counts as 'the answer depends on it'.")] = 0.05,
    replicates: Annotated[int, typer.Option(help="Bootstrap replicates.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of donors, random subspaces and the subset.")] = 0,
    device: Device = "auto",
    dtype: Dtype = "float32",
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Does the answer use what the probe finds? Ablate the linear probe's subspace of the projector tokens (and a
    random one of the same rank), patch another image's probe coordinates in, and measure the answers."""
    from ..intervention import intervene

    r = intervene(model, data, task, probes=probes, out=out, limit=limit, prompts=prompts, batch_size=batch_size,
                  folds=folds, min_effect=min_effect, replicates=replicates, seed=seed, device=device, dtype=dtype,
                  trust_remote_code=trust_remote_code)
    typer.echo(f"{r['model']} on {r['data']}: {r['conclusion']}")
    typer.echo(f"wrote {out / 'interventions.jsonl'}")
