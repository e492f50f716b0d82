"""Paired comparison of two probe results (two models, points or probes) on the samples they share.

Both prediction files are joined on sample id and resampled with the same patient-level bootstrap weights, so the
interval is for the *difference* and is far tighter than two overlapping marginal intervals suggest. Each side's
replicates are widened by its result's design effect (read from the `results.jsonl` beside its `predictions/`
folder), as its own interval is.

    from medfrag_probe.probes.compare import paired_difference
    paired_difference("probes/predictions/a__vision.block.22__mean__linear.csv",
                      "probes/predictions/b__vision.block.22__mean__linear.csv")
    # {'metric': 'balanced_accuracy', 'a': 0.81, 'b': 0.74, 'delta': 0.07, 'delta_ci': [0.03, 0.11], 'n': 412}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts.probes import read_predictions, read_results
from ..errors import UserError, bad_choice
from ..stats import REPLICATES, SEED, bootstrap_weights, interval, stretch_replicates
from .metrics import bootstrap_scores, point_scores, record_inflation

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def paired_difference(path_a, path_b, *, metric: str = "balanced_accuracy", replicates: int = REPLICATES,
                      seed: int = SEED) -> dict:
    """Score of A, of B, and of A - B with a 95% paired bootstrap CI over their shared samples."""
    if metric not in METRICS:
        raise bad_choice("metric", metric, METRICS)
    a, b = read_predictions(path_a), read_predictions(path_b)
    if a.classes != b.classes:
        raise UserError(f"the two results have different classes: {a.classes} vs {b.classes}")
    shared, ia, ib = np.intersect1d(a.ids, b.ids, return_indices=True)
    if len(shared) < 2:
        raise UserError(f"{path_a} and {path_b} share {len(shared)} samples; nothing to compare")
    if not np.array_equal(a.labels[ia], b.labels[ib]):
        raise UserError("the two results disagree on the labels of shared samples: not the same data source")
    K = len(a.classes)
    y = a.labels[ia]
    weights = bootstrap_weights(a.groups[ia], replicates=replicates, seed=seed)
    score_a = point_scores(y, a.proba[ia], K)[metric]
    score_b = point_scores(y, b.proba[ib], K)[metric]
    boot_a = bootstrap_scores(y, a.proba[ia], weights, K)[metric]
    boot_b = bootstrap_scores(y, b.proba[ib], weights, K)[metric]
    if score_a is not None and score_b is not None:
        boot_a = stretch_replicates(boot_a, score_a, _inflation(path_a, metric))
        boot_b = stretch_replicates(boot_b, score_b, _inflation(path_b, metric))
    return {"metric": metric, "a": score_a, "b": score_b, "delta": None if score_a is None or score_b is None
            else score_a - score_b, "delta_ci": interval(boot_a - boot_b), "n": int(len(shared))}


def _inflation(path, metric: str) -> float:
    """The interval widening of the result whose predictions are at `path` (1 when its record is not found)."""
    path = Path(path).resolve()
    folder = path.parent.parent
    if not (folder / "results.jsonl").is_file():
        return 1.0
    for result in read_results(folder):
        if Path(result.predictions).resolve() == path:
            return record_inflation(result, metric)
    return 1.0
