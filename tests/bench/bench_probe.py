"""Benchmark `probe` against the plain scikit-learn loop (not part of the test run). Prints a final JSON line.

Workload: 13 layers x 2 poolings of N=5,000 x D=768 Gaussian-class embeddings (4 classes, signal growing with
depth), 5 outer folds. Ours: `probe(..., probes="linear,knn")` (C chosen by inner CV in each training fold, kNN
k=20). Baseline, same outer folds: StandardScaler + LogisticRegressionCV(Cs=10, cv=5, max_iter=1000) and
KNeighborsClassifier(20, cosine, distance-weighted) per layer, as a researcher would write it.

- `speedup`: baseline seconds / ours (no controls, as the baseline has none); target >= 5.
- `speedup_with_controls`: the same with our shuffled-label control on (it doubles our fits).
- `accuracy_delta`: mean over layers of |ours - baseline| linear-probe accuracy; target <= 0.005.
- `bootstrap_s`: a 1000-replicate bootstrap of AUROC at n = 10,000; target < 1 s.

`--sweep` instead times the plain loop a user would write against `probe` over N = 100 ... 20,000 images
(`--sizes`; at 50,000 use `--layers 1`, the plain loop takes long), 4 layers x 2 poolings = 8 points, D = `--dim`
(64), 4 classes, 5 images per patient: one JSON line per size and a summary line. The plain loop (the performance
issue's): the same outer StratifiedGroupKFold(5) folds, StandardScaler + LogisticRegressionCV(Cs=8, inner
StratifiedGroupKFold(3) by patient, max_iter=1000) and a cosine 20-NN per fold. Ours: `probe(...,
probes="linear,knn", controls=False)` (C by inner group CV on each training fold, patient bootstrap CIs,
predictions written, the default permutation refits; `ours_plain_bootstrap_s` the same with `permutations=0`,
`permutation_cost` the ratio: what the intervals' design effect costs), in the library's default worker processes
(`--workers 1`: all in this process). Both start after their imports (a first untimed run of each on a small cache
loads what they import on first use). `linear_accuracy_delta_max` / `_mean`: |ours - plain| linear accuracy over the
points. `--match-protocol` has both choose C alike (the plain loop on inner balanced accuracy, the score ours uses;
ours over the plain loop's grid, 1e-4 ... 1e4, walked in full), which separates the solvers' agreement from the two
protocols' different choices of C.

`--solvers` times the three logistic solvers (`logistic_path_newton`, SciPy's `logistic_path_cpu`, torch's
`logistic_path`) on one fold's permutation refits: 20 permuted label vectors (the default) over 384 x `--dim` (64)
correlated Gaussian-class rows (a spectrum falling 100x, rotated), 4 classes, one thread, at C = 100 ... 1e-4; one
JSON line per C with seconds and the mean objective per refit.

    python tests/bench/bench_probe.py [--layers 13] [--n 5000]
    python tests/bench/bench_probe.py --sweep [--sizes 100,300,1000,5000,20000] [--dim 64] [--layers 4] [--workers N]
                                              [--match-protocol]
    python tests/bench/bench_probe.py --solvers [--dim 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def make_cache(path: Path, *, n: int, d: int, layers: int, seed: int = 0, per_patient: int = 1) -> list[str]:
    """Gaussian-class embeddings; with `per_patient` > 1, consecutive images share a patient and its label."""
    rng = np.random.default_rng(seed)
    patients = -(-n // per_patient)
    y = np.repeat(rng.integers(0, 4, patients), per_patient)[:n]
    directions = rng.normal(size=(4, d)) / np.sqrt(d)
    from medfrag_probe.cache import write_embeddings

    names, embeddings = [], {}
    for layer in range(layers):
        name = f"vision.block.{layer:02d}"
        names.append(name)
        strength = 0.2 + 0.6 * layer / max(1, layers - 1)  # accuracy from ~0.45 (early) to ~0.95 (late)
        for pooling in ("cls", "mean"):
            X = rng.normal(size=(n, d)) + strength * directions[y] * np.sqrt(d) / 8
            embeddings[f"{name}/{pooling}"] = X.astype(np.float16)
    write_embeddings(path, ids=[f"s{i}" for i in range(n)], labels=y, classes=["a", "b", "c", "d"],
                     groups=[f"p{i // per_patient}" for i in range(n)] if per_patient > 1 else None,
                     embeddings=embeddings)
    return names


def ours(path: Path, out: Path, controls: bool, permutations: int | None = None, workers: int | None = None,
         linear: str = "linear") -> tuple[float, dict]:
    """`probe` as a user runs it (the library's default permutation refits and worker processes unless
    `permutations` or `workers` is given; `linear` names the registered linear probe)."""
    from medfrag_probe._log import set_quiet
    from medfrag_probe.probes import probe

    set_quiet(True)
    start = time.perf_counter()
    options = {} if permutations is None else {"permutations": permutations}
    if workers is not None:
        options["workers"] = workers
    results = probe([path], probes=f"{linear},knn", out=out, controls=controls, figures=False, replicates=1000,
                    **options)
    seconds = time.perf_counter() - start
    return seconds, {(r.point, r.pooling, "linear" if r.probe == linear else r.probe): r.accuracy for r in results}


MATCHED = "linear-matched"  # `--match-protocol`: our linear probe choosing C as the plain loop does


def match_protocol() -> str:
    """Register `MATCHED`: LinearProbe on the plain loop's grid (LogisticRegressionCV(Cs=8): 1e-4 ... 1e4), walked
    in full; the plain loop then scores C on balanced accuracy, as ours does. Returns the plain loop's scoring."""
    from medfrag_probe.probes.estimators import PROBES, LinearProbe

    PROBES[MATCHED] = lambda *, device="cpu", seed=0: LinearProbe(Cs=tuple(np.logspace(-4, 4, 8)), patience=None,
                                                                  device=device, random_state=seed)
    return "balanced_accuracy"


def sklearn_loop(path: Path, models) -> tuple[float, dict]:
    """Seconds and accuracy per (point, pooling, probe) of a scikit-learn loop over our outer folds; `models(X_train,
    y_train, groups_train)` gives the fitted {"linear": ..., "knn": ...} of one fold."""
    from medfrag_probe.cache import EmbeddingCache
    from medfrag_probe.probes.run import _task

    task = _task(EmbeddingCache(path), folds=5, seed=0)  # the same outer folds as ours
    y, rows = task.labels, task.eval_rows
    scores = {}
    start = time.perf_counter()
    for point, pooling in task.cache.points():
        X = task.cache.load(point, pooling)
        pred = {"linear": np.zeros(len(y), int), "knn": np.zeros(len(y), int)}
        for fold in task.plan.folds:
            for name, model in models(X[fold.train], y[fold.train], task.groups[fold.train]).items():
                pred[name][fold.test] = model.predict(X[fold.test])
        for name, p in pred.items():
            scores[(point, pooling, name)] = float((p[rows] == y[rows]).mean())
    return time.perf_counter() - start, scores


def baseline(path: Path) -> tuple[float, dict]:
    """LogisticRegressionCV(Cs=10, cv=5) and a distance-weighted cosine 20-NN, no patient groups."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def models(X, y, groups):
        return {"linear": make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, max_iter=1000)).fit(X, y),
                "knn": KNeighborsClassifier(20, metric="cosine", weights="distance").fit(X, y)}

    return sklearn_loop(path, models)


def plain_loop(path: Path, scoring: str | None = None) -> tuple[float, dict]:
    """The loop of the performance issue: group-aware outer and inner folds, LogisticRegressionCV and cosine 20-NN
    (C chosen on inner accuracy, scikit-learn's default, unless `scoring` names another scorer)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def models(X, y, groups):
        inner = list(StratifiedGroupKFold(3, shuffle=True, random_state=0).split(X, y, groups))
        linear = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=8, cv=inner, max_iter=1000, scoring=scoring))
        return {"linear": linear.fit(X, y),
                "knn": KNeighborsClassifier(min(20, len(y)), metric="cosine").fit(X, y)}

    return sklearn_loop(path, models)


def sweep(sizes: list[int], *, dim: int, layers: int = 4, workers: int | None = None, matched: bool = False) -> None:
    """One JSON line per size: ours vs the plain loop, same machine, same run; then a summary line."""
    scoring, linear_probe = (match_protocol(), MATCHED) if matched else (None, "linear")
    with tempfile.TemporaryDirectory() as tmp:  # both sides once, untimed: the modules they import on first use
        make_cache(Path(tmp) / "warm.h5", n=100, d=dim, layers=1, per_patient=5, seed=1)
        ours(Path(tmp) / "warm.h5", Path(tmp) / "ours", controls=False)
        plain_loop(Path(tmp) / "warm.h5")
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            path = root / "bench.h5"
            make_cache(path, n=n, d=dim, layers=layers, per_patient=5, seed=n)
            t_ours, acc_ours = ours(path, root / "ours", controls=False, workers=workers, linear=linear_probe)
            t_bootstrap, _ = ours(path, root / "ours0", controls=False, permutations=0, workers=workers,
                                  linear=linear_probe)
            t_plain, acc_plain = plain_loop(path, scoring)
        linear = [abs(acc_ours[k] - acc_plain[k]) for k in acc_plain if k[2] == "linear"]
        row = {"n": n, "dim": dim, "points": 2 * layers, "ours_s": round(t_ours, 2), "plain_s": round(t_plain, 2),
               "speedup": round(t_plain / t_ours, 2), "ours_plain_bootstrap_s": round(t_bootstrap, 2),
               "permutation_cost": round(t_ours / t_bootstrap, 2),
               "linear_accuracy_delta_max": round(max(linear), 4),
               "linear_accuracy_delta_mean": round(float(np.mean(linear)), 4),
               "mean_linear_accuracy_ours": round(float(np.mean([acc_ours[k] for k in acc_plain
                                                                  if k[2] == "linear"])), 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"sizes": sizes, "min_speedup": min(r["speedup"] for r in rows),
                      "speedup_at": {r["n"]: r["speedup"] for r in rows},
                      "max_linear_accuracy_delta": max(r["linear_accuracy_delta_max"] for r in rows)}))


def solvers(dim: int) -> None:
    """One JSON line per C: seconds and mean objective of each solver on the default number of permutation refits
    (one thread)."""
    import torch

    from medfrag_probe.probes import solver
    from medfrag_probe.probes.estimators import cpu_threads
    from medfrag_probe.stats import PERMUTATIONS

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 384)
    # correlated features, as a network's embeddings are: a spectrum falling 100x, rotated, then standardised
    spectrum = np.logspace(0, -2, dim)
    latent = (rng.normal(size=(384, dim)) + rng.normal(size=(4, dim))[y] * 0.3) * spectrum
    X = latent @ np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    X = torch.from_numpy(((X - X.mean(0)) / X.std(0)).astype(np.float32))
    codes = torch.from_numpy(np.stack([rng.permutation(y) for _ in range(PERMUTATIONS)])).long()
    masks = torch.ones(PERMUTATIONS, 384)
    Y = solver._targets(codes.T, 4, False, torch.float64)
    paths = {"newton": solver.logistic_path_newton, "scipy": solver.logistic_path_cpu, "torch": solver.logistic_path}
    with cpu_threads(torch.device("cpu"), 0):
        for C in (100.0, 13.9, 1.93, 0.268, 0.0373, 1e-4):
            row = {"C": C}
            for name, path in paths.items():
                start = time.perf_counter()
                W, b = next(iter(path(X, codes, masks, [C], n_classes=4)))
                row[f"{name}_s"] = round(time.perf_counter() - start, 3)
                loss = solver._loss_grad(X.double(), X.T.double().contiguous(), Y, masks.double(),
                                         masks.sum(1).double(), W.double(), b.double(), C, False)[0]
                row[f"{name}_objective"] = round(float(loss) / PERMUTATIONS, 6)
            print(json.dumps(row), flush=True)


def bootstrap_seconds(n: int = 10_000) -> float:
    from medfrag_probe.probes.metrics import bootstrap_weights, weighted_auroc

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, n)
    score = rng.normal(y * 0.7, 1.0)
    start = time.perf_counter()
    weighted_auroc(score, y == 1, bootstrap_weights(np.arange(n), replicates=1000))
    return time.perf_counter() - start


def main() -> None:
    # the plain loop uses scikit-learn's defaults as a researcher would; its notices of future default changes are noise
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=None, help="default 768 (64 with --sweep)")
    parser.add_argument("--sweep", action="store_true", help="time ours against the plain loop over --sizes")
    parser.add_argument("--sizes", default="100,300,1000,5000,20000")
    parser.add_argument("--workers", type=int, default=None,
                        help="`probe`'s worker processes in the sweep (default: the library's choice)")
    parser.add_argument("--match-protocol", action="store_true",
                        help="the sweep's two sides choose C alike: the plain loop on inner balanced accuracy, ours "
                             "over the plain loop's grid (1e-4 ... 1e4) walked in full")
    parser.add_argument("--solvers", action="store_true", help="time the three logistic solvers on permutation refits")
    args = parser.parse_args()
    if args.solvers:
        solvers(args.dim or 64)
        return
    if args.sweep:
        sweep([int(v) for v in args.sizes.split(",")], dim=args.dim or 64, layers=min(args.layers, 4),
              workers=args.workers, matched=args.match_protocol)
        return
    args.dim = args.dim or 768
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
