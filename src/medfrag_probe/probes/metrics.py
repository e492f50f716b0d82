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


PERMUTATION_REPLICATES = 50  # bootstrap replicates per refit: the denominator averages 20 x 50 of them (the default)


def design_effects(labels: np.ndarray, probas: np.ndarray, weights: np.ndarray, groups: np.ndarray,
                   n_classes: int) -> dict[str, float]:
    """Per metric, the variance of the probe's score over permutation refits divided by the mean patient-bootstrap
    variance of those refits' out-of-fold predictions. `labels` (P, n) are the permuted labels of the evaluated rows,
    `probas` (P, n, K) the refits' out-of-fold probabilities, `weights` bootstrap weights of the rows, `groups`
    their patients. AUROC's denominator is its clustered DeLong variance (`clustered_auroc_variance`, what its
    bootstrap estimates, without P x R weighted sorts).

    Why: the bootstrap resamples patients' out-of-fold predictions as if they were independent, but every prediction
    comes from a model trained on the other folds' patients, so two patients that sit in each other's training sets
    (a kNN neighbour, a point pulling a linear boundary) are right or wrong together. That dependence widens the
    score's spread across datasets beyond the bootstrap's (measured on null data with patient clusters: 1.2-1.5x
    the standard error). Refitting the same protocol on labels permuted across patients keeps the features, folds and
    patient structure and removes the signal, so the spread of those refits' scores is the real spread of the score
    at no signal, and its ratio to their bootstrap variance is the design effect of this probe on these data."""
    if len(probas) < 2:
        return {}
    labels, probas = np.asarray(labels), np.asarray(probas)
    groups = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1]  # patient codes, found once
    auc, influence, defined = _placements(labels, probas, n_classes)
    values = {**_refit_scores(labels, probas, n_classes), "auroc": auc}
    variances = _refit_bootstrap_variances(labels, probas, weights, n_classes)
    variances["auroc"] = _clustered_variances(influence, defined, groups)
    out = {}
    for name, vals in values.items():
        keep = np.isfinite(vals) & ~np.isnan(variances[name]) if name == "auroc" else np.isfinite(vals)
        var = variances[name][keep]
        boot_var = float(np.mean(var)) if len(var) else float("nan")
        if keep.sum() > 1 and boot_var > 0:
            out[name] = float(np.var(vals[keep], ddof=1) / boot_var)
    return out


def _refit_scores(labels: np.ndarray, probas: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """`point_scores`' accuracy, balanced accuracy and macro-F1 of every refit at once: labels (P, n), probas
    (P, n, K) -> {metric: (P,)}."""
    P, K = len(labels), n_classes
    pred = probas.argmax(2)
    cm = np.bincount((np.arange(P)[:, None] * K * K + labels * K + pred).ravel(),
                     minlength=P * K * K).reshape(P, K, K)
    support, predicted, tp = cm.sum(2), cm.sum(1), np.diagonal(cm, axis1=1, axis2=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / np.maximum(support + predicted, 1), 0.0)
        balanced = np.nanmean(recall, axis=1)
    return {"accuracy": (pred == labels).mean(1), "balanced_accuracy": balanced, "macro_f1": f1.mean(1)}


def _refit_bootstrap_variances(labels, probas, weights, n_classes: int) -> dict[str, np.ndarray]:
    """Per refit, the variance over the bootstrap replicates `weights` (R, n) of `bootstrap_scores`' accuracy,
    balanced accuracy and macro-F1: {metric: (P,)}, computed for every refit at once."""
    pred = probas.argmax(2)
    eye = np.eye(n_classes, dtype=np.float32)
    onehot_y, onehot_p = eye[labels], eye[pred]  # P, n, K
    correct = (pred == labels).astype(np.float32)
    weights = weights.astype(np.float32)
    support = weights @ onehot_y  # P, R, K
    tp = weights @ (onehot_y * correct[:, :, None])
    predicted = weights @ onehot_p
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
        scores = {"accuracy": (correct @ weights.T) / weights.sum(1), "balanced_accuracy": np.nanmean(recall, axis=2),
                  "macro_f1": np.nanmean(np.where(support > 0, f1, np.nan), axis=2)}
        return {name: np.nanvar(v, axis=1) for name, v in scores.items()}


def _placements(labels: np.ndarray, probas: np.ndarray, n_classes: int):
    """AUROC (P,) of every refit (binary, or macro one-vs-rest over the classes present; NaN where fewer than two
    classes are present), each row's centred DeLong placement value (P, n: divided by its class's positives or
    negatives and averaged over the classes scored), and whether the AUROC is defined (P,). One sort per refit and
    class: a positive's placement is the share of negatives below it, a negative's the share of positives above it
    (ties count half), read off running counts at the ends of each run of tied scores."""
    classes = [1] if n_classes == 2 else list(range(n_classes))
    score = np.moveaxis(probas[:, :, classes], 2, 1)  # P, C, n
    positive = labels[:, None, :] == np.asarray(classes)[None, :, None]
    n = labels.shape[1]
    n_pos = positive.sum(2, keepdims=True)
    n_neg = n - n_pos
    scored = (n_pos > 0) & (n_neg > 0)  # P, C, 1
    if n_classes != 2:  # a class absent from a refit's labels is left out of its macro average
        scored &= (n_pos > 0).sum(1, keepdims=True) >= 2
    order = np.argsort(score, axis=2, kind="stable")
    s = np.take_along_axis(score, order, 2)
    pos = np.take_along_axis(positive, order, 2)
    index = np.arange(n)
    tie = s[:, :, 1:] == s[:, :, :-1]
    first = np.maximum.accumulate(np.where(np.concatenate([np.zeros_like(tie[:, :, :1]), tie], 2), 0, index), 2)
    last = np.minimum.accumulate(np.where(np.concatenate([tie, np.zeros_like(tie[:, :, :1])], 2), n - 1,
                                          index)[:, :, ::-1], 2)[:, :, ::-1]
    neg_seen = np.cumsum(~pos, 2)  # negatives up to and including each sorted position
    pos_seen = np.cumsum(pos, 2)

    def before_and_within(seen):
        before = np.where(first > 0, np.take_along_axis(seen, np.maximum(first - 1, 0), 2), 0)
        return before + 0.5 * (np.take_along_axis(seen, last, 2) - before)

    with np.errstate(invalid="ignore", divide="ignore"):
        v10 = before_and_within(neg_seen) / n_neg  # positives: share of negatives below
        v01 = (n_pos - before_and_within(pos_seen)) / n_pos  # negatives: share of positives above
        area = np.where(pos, v10, 0).sum(2, keepdims=True) / n_pos
        centred = np.empty(score.shape)
        np.put_along_axis(centred, order, np.where(pos, (v10 - area) / n_pos, (v01 - area) / n_neg), 2)
        count = scored.sum(1)  # P, 1
        auc = np.where(count[:, 0] > 0, np.where(scored, area, 0).sum((1, 2)) / count[:, 0], np.nan)
        influence = np.where(scored, centred, 0).sum(1) / np.maximum(count, 1)
    return auc, influence, count[:, 0] > 0


def _clustered_variances(influence: np.ndarray, defined: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """`clustered_auroc_variance` of every refit (P,; NaN where undefined) from `_placements`' centred placement
    values (P, n) summed per patient (`groups`: codes)."""
    P, G = len(influence), int(groups.max()) + 1 if len(groups) else 0
    if G < 2:
        return np.full(P, np.nan)
    per_patient = np.bincount((np.arange(P)[:, None] * G + groups).ravel(), influence.ravel(), P * G).reshape(P, G)
    return np.where(defined, G / (G - 1) * (per_patient ** 2).sum(1), np.nan)


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
