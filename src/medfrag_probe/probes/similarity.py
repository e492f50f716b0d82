"""Linear CKA (Kornblith et al., 2019) between the layers of two caches over their shared sample ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._fs import atomic_write
from ..cache import EmbeddingCache
from ..errors import UserError
from ..points import point_order


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA of two (n, d) representations of the same n samples; 1 for identical up to rotation and scale."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    cross = np.linalg.norm(Y.T @ X) ** 2
    denom = np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)
    return float(cross / denom) if denom > 0 else float("nan")


def cka_between(path_a, path_b, *, pooling: str = "mean", out: str | Path | None = None) -> dict:
    """CKA matrix between every point of cache A and of cache B (one pooling) on the samples done in both."""
    from .figures import cka_figure

    a, b = EmbeddingCache(path_a), EmbeddingCache(path_b)
    ids_b = {sid: i for i, sid in enumerate(b.ids) if b.done[i]}
    pairs = [(i, ids_b[sid]) for i, sid in enumerate(a.ids) if a.done[i] and sid in ids_b]
    if len(pairs) < 3:
        raise UserError(f"{path_a} and {path_b} share {len(pairs)} finished samples; CKA needs at least 3")
    rows_a, rows_b = (np.array(x) for x in zip(*pairs))
    points_a = sorted({p for p, q in a.points() if q == pooling}, key=point_order)
    points_b = sorted({p for p, q in b.points() if q == pooling}, key=point_order)
    if not points_a or not points_b:
        raise UserError(f"pooling {pooling!r} is missing from one of the caches")
    feats_b = {p: b.load(p, pooling)[rows_b] for p in points_b}
    matrix = np.array([[linear_cka(a.load(pa, pooling)[rows_a], feats_b[pb]) for pb in points_b] for pa in points_a])
    result = {"a": str(path_a), "b": str(path_b), "pooling": pooling, "n": len(pairs), "points_a": points_a,
              "points_b": points_b, "cka": matrix.round(6).tolist()}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"cka__{Path(path_a).stem}__{Path(path_b).stem}"
        atomic_write(out / f"{stem}.json", json.dumps(result))
        title = f"{a.attrs.get('model', Path(path_a).stem)} vs {b.attrs.get('model', Path(path_b).stem)} ({pooling})"
        cka_figure(matrix, points_a, points_b, title, out / f"{stem}.png")
    return result
