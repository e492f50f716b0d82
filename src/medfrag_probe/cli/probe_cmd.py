"""`medfrag-probe probe`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..stats import PERMUTATIONS


def register(app: typer.Typer) -> None:
    """Add the command to `app`."""
    app.command("probe", no_args_is_help=True)(probe_command)


def _ints(text: Optional[str], what: str) -> list[int] | None:
    if not text:
        return None
    from ..errors import UserError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} takes comma-separated whole numbers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise UserError(f"{what} values must be >= 1, got {text!r}")
    return values


def probe_command(
    caches: Annotated[list[Path], typer.Argument(help="One or more HDF5 caches (from extract, or any file with "
                                                 "/samples/id, /samples/label, /classes, /emb/POINT/POOLING).")],
    points: Annotated[Optional[str], typer.Option(help="Point names or globs, comma-separated (default: all).")] = None,
    poolings: Annotated[Optional[str], typer.Option(help="Poolings to probe (default: all but tokens).")] = None,
    probes: Annotated[str, typer.Option(help="linear, knn, knn-euclid-11 (comma-separated).")] = "linear,knn",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("probes"),
    folds: Annotated[int, typer.Option(help="Group k-fold folds when the data has no splits.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of folds, shuffles and bootstrap.")] = 0,
    replicates: Annotated[int, typer.Option(help="Bootstrap replicates for the 95% CIs.")] = 1000,
    permutations: Annotated[int, typer.Option(help="Refits on labels permuted across patients that measure how "
                                              "much wider than the bootstrap the CIs must be (the design effect "
                                              "of fitted probes); 0 keeps the plain bootstrap.")] = PERMUTATIONS,
    controls: Annotated[bool, typer.Option(help="Shuffled-label control (selectivity).")] = True,
    ks: Annotated[Optional[str], typer.Option(help="k sweep for kNN probes, e.g. 1,5,10,20,50.")] = None,
    curves: Annotated[bool, typer.Option(help="Also learning curves (1,2,4,..,32,all per class).")] = False,
    cka: Annotated[bool, typer.Option(help="Also linear CKA between the first cache and each other one.")] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    allow_split_overlap: Annotated[bool, typer.Option(help="Accept given train/val/test splits that share a patient "
                                                      "(refused by default: it leaks).")] = False,
    allow_incomplete: Annotated[bool, typer.Option(help="Probe the finished rows of an unfinished extraction "
                                                   "(refused by default).")] = False,
    workers: Annotated[Optional[int], typer.Option(help="CPU worker processes of one thread each (Linux); default: "
                                                   "one per usable core where the fits are small, else 1.",
                                                   show_default=False)] = None,
) -> None:
    """Linear and kNN probes per point and pooling, with honest splits, controls and bootstrap CIs."""
    from ..errors import UserError
    from ..probes import probe
    from ..probes.curves import learning_curves
    from ..probes.similarity import cka_between

    results = probe([str(c) for c in caches], points=points, poolings=poolings, probes=probes, out=out,
                    folds=folds, seed=seed, replicates=replicates, controls=controls, ks=_ints(ks, "--ks"),
                    permutations=permutations,
                    device=device, allow_split_overlap=allow_split_overlap,
                    allow_incomplete=allow_incomplete, workers=workers)
    if curves:
        for cache in caches:
            pairs = sorted({(r.point, r.pooling) for r in results if r.cache == str(cache)})
            learning_curves(cache, pairs, probes=[p for p in probes.split(",") if p], folds=folds, seed=seed,
                            replicates=replicates, device=device, out=out)
    if cka:
        if len(caches) < 2:
            raise UserError("--cka needs at least two caches")
        for other in caches[1:]:
            cka_between(caches[0], other, out=out)
    from ..probes.run import format_ci
    from ..probes.select import pick

    # "best" by the inner (training-side) score, never by the test score it then reports
    records = [r.record() for r in results]
    best = results[records.index(pick(records))]
    typer.echo(f"{len(results)} results -> {out / 'results.jsonl'}; chosen on inner scores: {best.point}/"
               f"{best.pooling} {best.probe}, test balanced accuracy {best.balanced_accuracy:.3f} "
               f"{format_ci(best.balanced_accuracy_ci)} (chance {best.chance:.3f}, {best.split})")
