"""Probe scores and their bootstrap confidence intervals (the generic statistics live in `medfrag_probe.stats`).

The bootstrap resamples **groups** (patients; a sample is its own group when there are none) with replacement,
1000 replicates from a fixed seed. Replicate weights depend only on the sorted set of group ids, so every model and
point probed on one data source gets the same resamples, and differences between them are paired. All replicate
statistics are computed at once from a (replicates x samples) weight matrix.

A probe's intervals are these percentile intervals widened by the probe's design effect (`design_effects`,
`inflation`): the bootstrap treats out-of-fold predictions as independent, and they are not.
"""

from __future__ import annotations

import numpy as np

from ..stats import (
    REPLICATES,
    auroc,
    bootstrap_weights,
    inflation,
    interval,
    skill,
    stretch_replicates,
    stretched,
    weighted_auroc,
)


def point_scores(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict:
    """Accuracy, balanced accuracy, macro-F1 (scikit-learn's: every class, 0 where undefined), AUROC (binary or
    macro one-vs-rest), per-class recall, confusion. Written out with NumPy (one call costs microseconds, not the
    milliseconds of input validation); `test_point_scores_equal_scikit_learn` holds them to scikit-learn's values."""
    y = np.asarray(y)
    pred = proba.argmax(1)
    cm = np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    f1 = np.where(support + predicted > 0, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(np.nanmean(recall)),
            "macro_f1": float(f1.mean()), "auroc": auroc(y, proba, n_classes),
            "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
            "confusion": cm.tolist()}


def bootstrap_scores(y: np.ndarray, proba: np.ndarray, weights: np.ndarray, n_classes: int,
                     auroc: bool = True) -> dict[str, np.ndarray]:
    """Replicate values (R,) of accuracy, balanced accuracy, macro-F1 and (unless `auroc=False`) AUROC."""
    pred = proba.argmax(1)
    correct = (pred == y).astype(np.float32)
    total = weights.sum(1)
    onehot_y = np.eye(n_classes, dtype=np.float32)[y]
    onehot_p = np.eye(n_classes, dtype=np.float32)[pred]
    support = weights @ onehot_y  # R, K
    tp = weights @ (onehot_y * correct[:, None])
    predicted = weights @ onehot_p
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
        out = {"accuracy": (weights @ correct) / total, "balanced_accuracy": np.nanmean(recall, axis=1),
               "macro_f1": np.nanmean(np.where(support > 0, f1, np.nan), axis=1)}
    if not auroc:
        return out
    if n_classes == 2:
        out["auroc"] = weighted_auroc(proba[:, 1], y == 1, weights)
    else:
        per_class = [weighted_auroc(proba[:, k], y == k, weights) for k in range(n_classes) if (y == k).any()]
        out["auroc"] = np.nanmean(np.stack(per_class), axis=0)
    return out


PERMUTATION_REPLICATES = 50  # bootstrap replicates per refit: the denominator averages 40 x 50 of them


def design_effects(labels: np.ndarray, probas: np.ndarray, weights: np.ndarray, groups: np.ndarray,
                   n_classes: int) -> dict[str, float]:
    """Per metric, the variance of the probe's score over permutation refits divided by the mean patient-bootstrap
    variance of those refits' out-of-fold predictions. `labels` (P, n) are the permuted labels of the evaluated rows,
    `probas` (P, n, K) the refits' out-of-fold probabilities, `weights` bootstrap weights of the rows, `groups`
    their patients. AUROC's denominator is its clustered DeLong variance (`clustered_auroc_variance`, what its
    bootstrap estimates, without 40 x R weighted sorts).

    Why: the bootstrap resamples patients' out-of-fold predictions as if they were independent, but every prediction
    comes from a model trained on the other folds' patients, so two patients that sit in each other's training sets
    (a kNN neighbour, a point pulling a linear boundary) are right or wrong together. That dependence widens the
    score's spread across datasets beyond the bootstrap's (measured on null data with patient clusters: 1.2-1.5x
    the standard error). Refitting the same protocol on labels permuted across patients keeps the features, folds and
    patient structure and removes the signal, so the spread of those refits' scores is the real spread of the score
    at no signal, and its ratio to their bootstrap variance is the design effect of this probe on these data."""
    n_perm = len(probas)
    if n_perm < 2:
        return {}
    groups = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]  # patient codes, found once
    values: dict[str, list] = {}
    variances: dict[str, list] = {}
    for labels_p, proba_p in zip(labels, probas):
        point = point_scores(labels_p, proba_p, n_classes)
        variance = {name: np.nanvar(v) for name, v in
                    bootstrap_scores(labels_p, proba_p, weights, n_classes, auroc=False).items()}
        variance["auroc"] = clustered_auroc_variance(labels_p, proba_p, groups, n_classes)
        for name, var in variance.items():
            if point[name] is None or not np.isfinite(point[name]) or var is None:
                continue
            values.setdefault(name, []).append(point[name])
            variances.setdefault(name, []).append(var)
    out = {}
    for name, vals in values.items():
        boot_var = float(np.mean(variances[name]))
        if len(vals) > 1 and boot_var > 0:
            out[name] = float(np.var(vals, ddof=1) / boot_var)
    return out


def clustered_auroc_variance(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, n_classes: int) -> float | None:
    """Variance of the AUROC (binary, or macro one-vs-rest) with samples clustered by `groups`: DeLong's placement
    values summed per patient (Obuchowski's clustered form), G / (G - 1) x the sum of squared patient influences."""
    groups = np.asarray(groups)
    _, inverse = np.unique(groups if groups.dtype.kind in "iu" else groups.astype(str), return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    classes = [1] if n_classes == 2 else [k for k in range(n_classes) if (y == k).any()]
    influence = np.zeros(n_groups)
    for k in classes:
        positive = y == k
        if positive.all() or not positive.any():
            return None
        score = proba[:, k]
        pos, neg = np.sort(score[positive]), np.sort(score[~positive])
        below = np.searchsorted(neg, score[positive], "left")
        ties = np.searchsorted(neg, score[positive], "right") - below
        v10 = (below + 0.5 * ties) / len(neg)  # each positive: share of negatives it outranks
        above = len(pos) - np.searchsorted(pos, score[~positive], "right")
        ties = np.searchsorted(pos, score[~positive], "right") - np.searchsorted(pos, score[~positive], "left")
        v01 = (above + 0.5 * ties) / len(pos)  # each negative: share of positives that outrank it
        area = v10.mean()
        influence += (np.bincount(inverse[positive], v10 - area, n_groups) / len(pos)
                      + np.bincount(inverse[~positive], v01 - area, n_groups) / len(neg)) / len(classes)
    if n_groups < 2:
        return None
    return float(n_groups / (n_groups - 1) * (influence ** 2).sum())


def record_inflation(record: dict, metric: str = "balanced_accuracy") -> float:
    """The interval widening of a probe result record (1 for records made without permutation refits)."""
    effect = (record.get("design_effect") or {}).get(metric)
    permutations = record.get("permutations") or 0
    return inflation(effect, permutations) if effect is not None and permutations > 1 else 1.0

__all__ = ["REPLICATES", "auroc", "bootstrap_weights", "inflation", "interval", "skill", "stretch_replicates",
           "stretched", "weighted_auroc", "point_scores", "bootstrap_scores", "design_effects",
           "clustered_auroc_variance", "record_inflation", "PERMUTATION_REPLICATES"]
