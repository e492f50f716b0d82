"""`medfrag-probe bridge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add the command to `app`."""
    app.command("bridge", no_args_is_help=True)(bridge_command)


def bridge_command(
    probes: Annotated[list[Path], typer.Option(help="Probe output folder(s) (results.jsonl + predictions/).")],
    vqa: Annotated[list[Path], typer.Option(help="VQA output folder(s), or parents of several.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("probes/bridge"),
    probe: Annotated[str, typer.Option(help="Which probe's predictions to use.")] = "linear",
    seen_skill: Annotated[float, typer.Option(help="Probe (or VQA) skill CI lower bound that counts as 'the "
                                              "signal is there'.")] = 0.5,
    min_gap: Annotated[float, typer.Option(help="Gap CI lower bound that counts as 'the answer loses it'.")] = 0.05,
    pair: Annotated[Optional[list[str]], typer.Option(help="GENERALIST,MEDICAL model specs to compare (repeat for "
                                                      "more pairs).")] = None,
    order: Annotated[Optional[str], typer.Option(help="Data specs in ladder order, comma-separated.")] = None,
    replicates: Annotated[int, typer.Option(help="Bootstrap replicates.")] = 1000,
    interventions: Annotated[Optional[list[Path]], typer.Option(help="`intervene` output folder(s): join the "
                                                                "causal check to each verdict.")] = None,
) -> None:
    """Probe skill vs VQA skill per model and data: gap with paired CI, McNemar, verdict, stage curve, figures."""
    from ..attribution import bridge
    from ..errors import UserError

    pairs = []
    for text in pair or []:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise UserError(f"--pair takes GENERALIST,MEDICAL (two model specs), got {text!r}")
        pairs.append(tuple(parts))
    records = bridge(probes, vqa, out=out, probe=probe, seen_skill=seen_skill, min_gap=min_gap, pairs=pairs,
                     order=[o.strip() for o in order.split(",")] if order else None, replicates=replicates,
                     interventions=interventions or None)
    for r in records:
        typer.echo(f"{r['model']} on {r['data']}: probe {r['probe_skill']:.3f} vs VQA {r['vqa_skill']:.3f}, gap "
                   f"{r['gap']:+.3f} -> {r['verdict']} (McNemar p={r['mcnemar_p']:.2g}, {r['recoverable_errors']} "
                   "recoverable errors)")
        if r.get("causal_note"):
            typer.echo(f"  causal check: {r['causal_note']}")
    typer.echo(f"wrote {out / 'bridge.jsonl'}")
