"""Learning curves: probe score against the number of training samples per class, on the same folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifacts.probes import write_curves
from ..cache import EmbeddingCache
from .estimators import PROBES
from .metrics import bootstrap_scores, bootstrap_weights, interval, point_scores

SIZES = (1, 2, 4, 8, 16, 32, None)  # None: the whole training fold


def learning_curves(cache_path, points: list[tuple[str, str]], *, probes=("linear", "knn"), sizes=SIZES,
                    folds: int = 5, seed: int = 0, replicates: int = 1000, device: str = "cpu",
                    out: str | Path | None = None) -> list[dict]:
    """For each (point, pooling) and probe: out-of-fold balanced accuracy when each training fold keeps at most
    `n` samples per class (drawn with a fixed seed). Linear probes on fewer than 6 samples per class use C = 1. Rows
    with NaN or inf features are left out, as `probe` leaves them out (`n_excluded`)."""
    from .figures import learning_curve_figure
    from .run import _task, check_protocol

    check_protocol(folds=folds, replicates=replicates)
    task = _task(EmbeddingCache(cache_path), folds=folds, seed=seed)
    K = len(task.names)
    rows = []
    for point, pooling in points:
        X = task.cache.load(point, pooling, rows=task.rows).reshape(len(task.rows), -1)
        finite = np.isfinite(X).all(1)
        for name in probes:
            for size in sizes:
                proba = _curve_oof(task, X, finite, name, size, seed=seed, device=device)
                keep = task.eval_rows[finite[task.eval_rows]]
                y, p = task.labels[keep], proba[keep]
                boot = bootstrap_scores(y, p, bootstrap_weights(task.groups[keep], replicates=replicates), K)
                per_class = size or int(np.bincount(task.labels[task.plan.folds[0].train]).max())
                rows.append({"cache": str(cache_path), "point": point, "pooling": pooling, "probe": name,
                             "per_class": per_class, "n_excluded": int((~finite).sum()), "all": size is None,
                             "chance": 1 / K,
                             "balanced_accuracy": point_scores(y, p, K)["balanced_accuracy"],
                             "ci": interval(boot["balanced_accuracy"])})
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_curves(out, Path(cache_path).stem, rows)
        learning_curve_figure(rows, out / f"curves__{Path(cache_path).stem}.png")
    return rows


def _curve_oof(task, X, finite, name, size, *, seed, device) -> np.ndarray:
    K = len(task.names)
    proba = np.zeros((len(X), K), np.float32)
    rng = np.random.default_rng(seed)
    for fold in task.plan.folds:
        train = _subsample(fold.train[finite[fold.train]], task.labels, size, rng)
        test = fold.test[finite[fold.test]]
        small = np.bincount(task.labels[train]).min() < 6  # too few per class to search hyper-parameters
        model = PROBES[name](device=device, seed=seed)
        model.fit_fold(X[train], task.labels[train], groups=None if small else task.groups[train], search=not small)
        present = np.unique(task.labels[train])
        if len(test):
            proba[np.ix_(test, present)] = model.predict_proba(X[test])
    return proba


def _subsample(train: np.ndarray, labels: np.ndarray, size: int | None, rng) -> np.ndarray:
    if size is None:
        return train
    picked = [rng.permutation(train[labels[train] == c])[:size] for c in np.unique(labels[train])]
    return np.sort(np.concatenate(picked))
