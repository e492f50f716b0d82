"""Choosing among probe results without looking at test scores.

A result's *inner score* is the mean held-out score of its chosen hyper-parameters on the training side of each
outer fold (inner CV or the validation split; `hyper.val_score` of linear probes). Whatever is labelled "best" --
a pooling for a point, a point for a sweep, a description prompt -- is the result with the highest inner score; where
no result has one (kNN probes, too few patients for inner CV), a fixed preference order decides (poolings: mean, cls,
max, vector, image, last; then the pipeline order of points), never the test score.
"""

from __future__ import annotations

import numpy as np

from ..points import point_order

POOLING_PREFERENCE = ("mean", "cls", "max", "vector", "image", "last")


def inner_score(record: dict) -> float | None:
    """Mean training-side held-out score of a result, None when it has none."""
    scores = [v for v in (record.get("hyper") or {}).get("val_score") or [] if v is not None]
    return float(np.mean(scores)) if scores else None


def _preference(record: dict) -> tuple:

    pooling = record.get("pooling", "")
    rank = POOLING_PREFERENCE.index(pooling) if pooling in POOLING_PREFERENCE else len(POOLING_PREFERENCE)
    return (rank, point_order(record.get("point", "")))


def pick(records: list[dict]) -> dict | None:
    """The result with the highest inner score (ties and results without one: the fixed preference order)."""
    if not records:
        return None
    scored = [r for r in records if inner_score(r) is not None]
    if scored:
        return min(scored, key=lambda r: (-inner_score(r), _preference(r)))
    return min(records, key=_preference)
