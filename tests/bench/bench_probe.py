"""Benchmark `probe` against the plain scikit-learn loop (not part of the test run). Prints a final JSON line.

Workload: 13 layers x 2 poolings of N=5,000 x D=768 Gaussian-class embeddings (4 classes, signal growing with
depth), 5 outer folds. Ours: `probe(..., probes="linear,knn")` (C chosen by inner CV in each training fold, kNN
k=20). Baseline, same outer folds: StandardScaler + LogisticRegressionCV(Cs=10, cv=5, max_iter=1000) and
KNeighborsClassifier(20, cosine, distance-weighted) per layer, as a researcher would write it.

- `speedup`: baseline seconds / ours (no controls, as the baseline has none); target >= 5.
- `speedup_with_controls`: the same with our shuffled-label control on (it doubles our fits).
- `accuracy_delta`: mean over layers of |ours - baseline| linear-probe accuracy; target <= 0.005.
- `bootstrap_s`: a 1000-replicate bootstrap of AUROC at n = 10,000; target < 1 s.

    python tests/bench/bench_probe.py [--layers 13] [--n 5000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def make_cache(path: Path, *, n: int, d: int, layers: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    directions = rng.normal(size=(4, d)) / np.sqrt(d)
    names = []
    with h5py.File(path, "w") as fh:
        fh["samples/id"] = np.array([f"s{i}" for i in range(n)], dtype=object)
        fh["samples/label"] = y
        fh["classes"] = np.array(["a", "b", "c", "d"], dtype=object)
        for layer in range(layers):
            name = f"vision.block.{layer:02d}"
            names.append(name)
            strength = 0.2 + 0.6 * layer / max(1, layers - 1)  # accuracy from ~0.45 (early) to ~0.95 (late)
            for pooling in ("cls", "mean"):
                X = rng.normal(size=(n, d)) + strength * directions[y] * np.sqrt(d) / 8
                fh[f"emb/{name}/{pooling}"] = X.astype(np.float16)
    return names


def ours(path: Path, out: Path, controls: bool) -> tuple[float, dict]:
    from medfrag_probe._log import set_quiet
    from medfrag_probe.probes import probe

    set_quiet(True)
    start = time.perf_counter()
    results = probe([path], probes="linear,knn", out=out, controls=controls, figures=False, replicates=1000)
    seconds = time.perf_counter() - start
    return seconds, {(r.point, r.pooling, r.probe): r.accuracy for r in results}


def baseline(path: Path) -> tuple[float, dict]:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medfrag_probe.cache import EmbeddingCache
    from medfrag_probe.probes.run import _task

    task = _task(EmbeddingCache(path), folds=5, seed=0)  # the same outer folds as ours
    y = task.labels
    scores = {}
    start = time.perf_counter()
    for point, pooling in task.cache.points():
        X = task.cache.load(point, pooling)
        pred = {"linear": np.zeros(len(y), int), "knn": np.zeros(len(y), int)}
        for fold in task.plan.folds:
            linear = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, max_iter=1000))
            pred["linear"][fold.test] = linear.fit(X[fold.train], y[fold.train]).predict(X[fold.test])
            knn = KNeighborsClassifier(20, metric="cosine", weights="distance")
            pred["knn"][fold.test] = knn.fit(X[fold.train], y[fold.train]).predict(X[fold.test])
        for name, p in pred.items():
            scores[(point, pooling, name)] = float((p == y).mean())
    return time.perf_counter() - start, scores


def bootstrap_seconds(n: int = 10_000) -> float:
    from medfrag_probe.probes.metrics import bootstrap_weights, weighted_auroc

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, n)
    score = rng.normal(y * 0.7, 1.0)
    start = time.perf_counter()
    weighted_auroc(score, y == 1, bootstrap_weights(np.arange(n), replicates=1000))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=768)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = root / "bench.h5"
        make_cache(path, n=args.n, d=args.dim, layers=args.layers)
        t_ours, acc_ours = ours(path, root / "a", controls=False)
        t_ctrl, _ = ours(path, root / "b", controls=True)
        t_base, acc_base = baseline(path)
    linear = [abs(acc_ours[k] - acc_base[k]) for k in acc_base if k[2] == "linear"]
    mean_ours = float(np.mean([acc_ours[k] for k in acc_base if k[2] == "linear"]))
    mean_base = float(np.mean([acc_base[k] for k in acc_base if k[2] == "linear"]))
    knn = [abs(acc_ours[k] - acc_base[k]) for k in acc_base if k[2] == "knn"]
    result = {"layers": args.layers, "poolings": 2, "n": args.n, "dim": args.dim, "folds": 5,
              "ours_s": round(t_ours, 1), "ours_with_controls_s": round(t_ctrl, 1), "baseline_s": round(t_base, 1),
              "speedup": round(t_base / t_ours, 2), "speedup_with_controls": round(t_base / t_ctrl, 2),
              "accuracy_delta": round(float(np.mean(linear)), 4), "accuracy_delta_max": round(float(max(linear)), 4),
              "knn_accuracy_delta": round(float(np.mean(knn)), 4),
              "mean_linear_accuracy_ours": round(mean_ours, 4), "mean_linear_accuracy_baseline": round(mean_base, 4),
              "linear_accuracy_range": [round(min(acc_base[k] for k in acc_base if k[2] == "linear"), 3),
                                        round(max(acc_base[k] for k in acc_base if k[2] == "linear"), 3)],
              "bootstrap_s": round(bootstrap_seconds(), 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
