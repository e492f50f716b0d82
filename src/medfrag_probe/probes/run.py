"""`probe`: linear and kNN probes over every (point, pooling) of one or more caches, with controls and CIs.

    from medfrag_probe.probes import probe
    results = probe(["cache/tiny-llava__synth-brain-mri.h5"], points="vision.*", probes=("linear", "knn"))
    best = max(results, key=lambda r: r.balanced_accuracy)

Writes `OUT/results.jsonl` (one record per cache x point x pooling x probe), `OUT/results.csv`, per-sample
out-of-fold predictions in `OUT/predictions/`, and figures. Headline score: balanced accuracy (its chance is 1/K
whatever the class balance); `skill = (balanced_accuracy - 1/K) / (1 - 1/K)`.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._log import debug, info, is_quiet, logger, warn
from ..artifacts.probes import Predictions, ProbeResult, prediction_name, write_predictions, write_results
from ..cache import EmbeddingCache
from ..devices import resolve_device, usable_cores
from ..errors import UserError, option
from ..points import point_order
from ..stats import PERMUTATIONS
from .estimators import PROBES, SMALL_WORK, cpu_threads, inner_folds, solve_work
from .metrics import (
    PERMUTATION_REPLICATES,
    bootstrap_scores,
    bootstrap_weights,
    design_effects,
    inflation,
    interval,
    point_scores,
    skill,
    stretched,
)
from .splits import SplitPlan, plan_splits


@dataclass
class _Task:
    """Everything about one cache that does not depend on the point: rows, labels, folds, bootstrap weights."""

    cache: EmbeddingCache
    rows: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    plan: SplitPlan
    inner: list
    names: list[str]
    eval_rows: np.ndarray
    weights: dict = field(default_factory=dict)

    def bootstrap(self, rows: np.ndarray, replicates: int) -> np.ndarray:
        """Bootstrap weights of `rows`, computed once per row set (the same for every point and probe)."""
        key = (hash(rows.tobytes()), len(rows), replicates)
        if key not in self.weights:
            self.weights.clear()
            self.weights[key] = bootstrap_weights(self.groups[rows], replicates=replicates)
        return self.weights[key]


def probe(caches, *, points: str | None = None, poolings: str | None = None, probes=("linear", "knn"),
          out: str | Path = "probes", folds: int = 5, seed: int = 0, replicates: int = 1000, controls: bool = True,
          ks=None, device: str = "auto", figures: bool = True, allow_split_overlap: bool = False,
          allow_incomplete: bool = False, permutations: int = PERMUTATIONS,
          workers: int | None = None) -> list[ProbeResult]:
    """Probe every matching (point, pooling) of each cache; write results under `out`; return the results.

    Intervals: a patient bootstrap of the out-of-fold predictions, widened by the probe's design effect, which
    `permutations` refits of the same protocol on labels permuted across patients measure (see
    `metrics.design_effects`); `permutations=0` keeps the plain bootstrap (narrower than it should be: it ignores
    that each fold's model was fitted on finite data).

    Given train/val/test splits that share a patient are refused unless `allow_split_overlap`. A cache whose
    extraction has not finished (samples neither extracted nor failed) is refused unless `allow_incomplete`: the
    finished rows of a stopped run are not a random sample of the data. Failed images never block a probe.

    `device="auto"` runs the kNN search and the logistic-regression solver on CUDA when present, else on the CPU.

    `workers`: on the CPU (Linux), the (point, pooling, probe) fits run in this many forked worker processes of one
    thread each; None (the default) uses every core this process may use (no more than torch's thread count, so a
    study job keeps to its share), where the fits are small enough to run on one thread anyway (`SMALL_WORK`);
    1 runs everything in this process. Each fit is seeded by `seed` alone: the results are the same either way.
    """
    probes = _check_probes(probes)
    check_protocol(folds=folds, replicates=replicates, ks=ks)
    if permutations == 1 or permutations < 0:
        raise UserError(f"{option('permutations')} must be 0 (plain patient bootstrap) or at least 2, not "
                        f"{permutations}")
    if workers is not None and workers < 1:
        raise UserError(f"{option('workers')} must be >= 1, got {workers}")
    device = str(resolve_device(device))
    out = Path(out)
    opened = [EmbeddingCache(path) for path in ([caches] if isinstance(caches, (str, Path)) else caches)]
    for cache in opened:
        _check_finished(cache, allow_incomplete=allow_incomplete)
    (out / "predictions").mkdir(parents=True, exist_ok=True)  # only once every cache opened: no stray folders
    results: list[ProbeResult] = []
    chosen = {cache.path: _select(cache, points, poolings) for cache in opened}  # every selection checked first
    options = {"out": out, "seed": seed, "replicates": replicates, "controls": controls, "ks": ks, "device": device,
               "permutations": permutations}
    bar = tqdm(total=sum(len(pairs) for pairs in chosen.values()) * len(probes), desc="probe", unit="fit",
               disable=is_quiet(), dynamic_ncols=True)
    with bar:
        for cache in opened:
            path = cache.path
            task = _task(cache, folds=folds, seed=seed, allow_split_overlap=allow_split_overlap)
            jobs = [(task, point, pooling, name) for point, pooling in chosen[path] for name in probes]
            found: list[list[ProbeResult]] = [[] for _ in jobs]
            for index, job_results in _run_jobs(jobs, options, _workers(workers, device, jobs)):
                found[index] = job_results
                _, point, pooling, name = jobs[index]
                for result in job_results:
                    debug(f"probe {Path(path).name} {point}/{pooling} {result.probe}: balanced accuracy "
                          f"{result.balanced_accuracy:.3f} {format_ci(result.balanced_accuracy_ci)} "
                          f"({result.split})")
                bar.set_postfix_str(f"{Path(path).stem} {point}/{pooling} {name}", refresh=False)
                bar.update(1)
            results += [result for job_results in found for result in job_results]
            write_results(out, results)
    if not results:
        raise UserError("no probe result: every selected (point, pooling) has only NaN or inf values")
    info(f"probe: {len(results)} results -> {out / 'results.csv'} (one line per result with --verbose)")
    if figures:
        from .figures import layer_curves

        layer_curves(results, out)
    return results


_FORKED: dict = {}  # the jobs and their options, set before forking the workers, which inherit them


def _workers(requested: int | None, device: str, jobs: list) -> int:
    """How many processes run `jobs` (`probe`'s `workers`): forked ones only on the CPU, on Linux, for 2+ jobs, and
    not from a daemonic process (a multiprocessing pool's worker may not start processes)."""
    import multiprocessing

    if len(jobs) < 2 or device != "cpu" or sys.platform != "linux" or multiprocessing.current_process().daemon:
        return 1
    if requested is None:
        task = jobs[0][0]
        widest = max(_width(*job[:3]) for job in jobs)
        if solve_work(len(task.rows), widest, 4, len(task.names)) >= SMALL_WORK:  # 3 inner folds + refit
            return 1  # fits this large run on every core themselves (torch's and the BLAS's threads)
        requested = min(usable_cores(), torch.get_num_threads())
    return min(requested, len(jobs))


def _width(task: _Task, point: str, pooling: str) -> int:
    """Features per row of one (point, pooling)."""
    return int(np.prod(task.cache.datasets[(point, pooling)][1:]))


def _run_jobs(jobs: list, options: dict, workers: int):
    """(index, results) of each (task, point, pooling, probe) job as it finishes: in this process, or in `workers`
    forked processes of one thread each (the widest points first; kNN-type probes, the quick ones, last). Fork, not
    spawn: a worker starts in milliseconds with everything imported, where a spawned one spends seconds importing
    torch. The results come back as their JSON records."""
    if workers <= 1:
        for index, job in enumerate(jobs):
            yield index, _run_one(*job, **options)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    _FORKED.update(jobs=jobs, options=options)
    quick = {name: PROBES[name](device="cpu").sweeps_k for *_, name in jobs}  # kNN-type: one search answers all k
    order = sorted(range(len(jobs)), key=lambda i: (quick[jobs[i][3]], -_width(*jobs[i][:3])))  # longest first
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_start_worker) as pool:
            futures = {pool.submit(_forked_job, i): i for i in order}
            try:
                for future in as_completed(futures):
                    done = json.loads(future.result())
                    for level, message in done["log"]:  # the worker's status lines, through this process's handlers
                        logger.log(level, message)
                    yield futures[future], [ProbeResult.from_record(r) for r in done["results"]]
            except BrokenProcessPool:
                raise UserError(f"a probe worker process died (killed, or out of memory); finished probes of "
                                f"earlier caches are kept: run again with {option('workers')} 1") from None
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        _FORKED.clear()


class _Kept(logging.Handler):
    """A forked worker's log records, kept for the parent to emit (so its handlers, and captured stderr, get them)."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.getMessage()))


def _start_worker() -> None:
    """A forked worker runs on one thread, torch's and the BLAS's (the parent's thread pools do not survive a fork,
    and the workers share the cores), and keeps its log records for the parent."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    logger.handlers[:] = [_Kept()]
    logger.propagate = False


def _forked_job(index: int) -> str:
    """Run job `index` in a worker: its results' JSON records and the log records it made."""
    kept = logger.handlers[0]
    kept.records.clear()
    results = _run_one(*_FORKED["jobs"][index], **_FORKED["options"])
    return json.dumps({"results": [r.record() for r in results], "log": kept.records})


def format_ci(ci) -> str:
    """A 95% interval as `[low, high]` (empty when there is none)."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def check_protocol(*, folds: int, replicates: int, ks=None) -> None:
    """The evaluation settings every probe run needs (one clear error each)."""
    if folds < 2:
        raise UserError(f"{option('folds')} must be >= 2, got {folds}")
    if replicates < 10:
        raise UserError(f"{option('replicates')} must be >= 10, got {replicates}")
    if ks is not None and any(int(k) < 1 for k in ks):
        raise UserError(f"{option('ks')} values must be >= 1, got {list(ks)}")


def _check_finished(cache: EmbeddingCache, *, allow_incomplete: bool) -> None:
    left = cache.unfinished
    if left and not allow_incomplete:
        raise UserError(f"cache {cache.path} is an unfinished extraction: {left} of {len(cache)} samples are neither "
                        "extracted nor failed; re-run the same extract command to finish it, or pass "
                        f"{option('allow_incomplete', True)} to probe the finished rows only")
    if left:
        warn(f"cache {cache.path}: probing {len(cache) - left} finished rows; {left} samples were never extracted")


def _check_probes(probes) -> list[str]:
    names = [p.strip() for p in probes.split(",")] if isinstance(probes, str) else list(probes)
    for name in names:
        PROBES.choose(name)
    return names


def _task(cache: EmbeddingCache, *, folds: int, seed: int, allow_split_overlap: bool = False) -> _Task:
    rows = np.flatnonzero(cache.done)
    if not len(rows):
        raise UserError(f"cache {cache.path} has no finished samples")
    labels = cache.labels[rows]
    groups = np.asarray(cache.groups, dtype=object)[rows].astype(str)
    splits = np.asarray(cache.splits, dtype=object)[rows].astype(str)
    plan = plan_splits(labels, groups, splits, list(cache.classes), k=folds, seed=seed,
                       allow_split_overlap=allow_split_overlap)
    inner = [inner_folds(labels[f.train], groups[f.train], 3, seed) if f.val is None else None for f in plan.folds]
    eval_rows = np.sort(np.concatenate([f.test for f in plan.folds]))
    return _Task(cache, rows, labels, groups, plan, inner, list(cache.classes), eval_rows)


def _select(cache: EmbeddingCache, points, poolings) -> list[tuple[str, str]]:
    point_globs = [p.strip() for p in points.split(",")] if points else ["*"]
    pooling_set = {p.strip() for p in poolings.split(",")} if poolings else None
    chosen = [(p, q) for p, q in cache.points()
              if any(fnmatch.fnmatchcase(p, g) for g in point_globs) and (pooling_set is None or q in pooling_set)
              and q != "tokens"]
    if not chosen:
        valid = ", ".join(sorted({f"{p}/{q}" for p, q in cache.points()}))
        raise UserError(f"no (point, pooling) of {cache.path} matches points={points!r} poolings={poolings!r}; "
                        f"valid: {valid}")
    return sorted(chosen, key=lambda pq: (point_order(pq[0]), pq[1]))


def _features(task: _Task, point: str, pooling: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the task rows, and a mask of rows with only finite values."""
    X = task.cache.load(point, pooling, rows=task.rows).reshape(len(task.rows), -1)
    return X, np.isfinite(X).all(1)


def _run_one(task, point, pooling, name, *, out, seed, replicates, controls, ks, device,
             permutations=0) -> list[ProbeResult]:
    start = time.perf_counter()
    X, finite = _features(task, point, pooling)
    if not finite.any():  # one broken point must not cost the finished ones: skip it with a note
        info(f"probe {task.cache.path.name} {point}/{pooling} {name}: skipped, every row has NaN or inf values")
        return []
    k_values = sorted(set(ks)) if (ks and PROBES[name](device="cpu").sweeps_k) else [None]
    permuted = _permuted_labels(task, finite, permutations, seed)
    oof, hyper, permuted_oof = _fit_predict(task, X, finite, task.labels, name, k_values, seed=seed, device=device,
                                            permuted=permuted)
    shuffled = None
    if controls:
        shuffled_labels = task.labels.copy()
        shuffled_labels[finite] = shuffle_by_patient(task.labels[finite], task.groups[finite],
                                                     np.random.default_rng(seed + 1))
        shuffled, _, _ = _fit_predict(task, X, finite, shuffled_labels, name, k_values, seed=seed, device=device)
        shuffled = {k: (v, shuffled_labels) for k, v in shuffled.items()}
    results = []
    # below a few thousand rows the bootstrap's products take microseconds: one BLAS thread (see `cpu_threads`)
    with cpu_threads(torch.device("cpu"), replicates * int(finite.sum()) * len(task.names)):
        for k in k_values:
            label = name if k is None else f"{name}@{k}"
            pred_path = out / "predictions" / prediction_name(task.cache.path.stem, point, pooling, label)
            write_predictions(pred_path, _predictions(task, oof[k], finite))
            results.append(_summarise(task, point, pooling, label, oof[k], shuffled[k] if shuffled else None,
                                      finite, {**hyper, **({"k": k} if k else {})}, replicates=replicates,
                                      seconds=time.perf_counter() - start, predictions=str(pred_path),
                                      permuted=(permuted, permuted_oof[k]) if permuted is not None else None))
    return results


def _permuted_labels(task, finite, permutations: int, seed: int) -> np.ndarray | None:
    """(P, n) labels permuted across patients over the finite rows (others keep theirs), or None."""
    if not permutations:
        return None
    rng = np.random.default_rng([seed, 7919])
    out = np.repeat(task.labels[None], permutations, 0)
    for row in out:
        row[finite] = shuffle_by_patient(task.labels[finite], task.groups[finite], rng)
    return out


def _fit_predict(task, X, finite, labels, name, k_values, *, seed, device, permuted=None):
    """Out-of-fold class probabilities for every evaluated row (NaN rows stay NaN), per k; with `permuted` labels
    (P, n), also those of the same protocol refitted on each label vector (hyper-parameters as chosen on the real
    labels). `hyper` lists per fold what each fold chose (linear: C and `val_score`, the held-out score of the chosen
    C on the fold's training-side rows, which the bridge selects points by)."""
    K, F = len(task.names), len(task.plan.folds)
    oof = {k: np.full((len(X), K), np.nan, np.float32) for k in k_values}
    permuted_oof = {k: None if permuted is None else np.full((len(permuted), len(X), K), np.nan, np.float32)
                    for k in k_values}
    hyper: dict = {}
    for f, (fold, inner) in enumerate(zip(task.plan.folds, task.inner)):
        train, test = fold.train[finite[fold.train]], fold.test[finite[fold.test]]
        if not len(test):
            continue
        val = fold.val[finite[fold.val]] if fold.val is not None else None
        model = PROBES[name](device=device, seed=seed)
        if val is not None and len(val):
            model.fit_fold(X[train], labels[train], X_val=X[val], y_val=labels[val])
        else:
            model.fit_fold(X[train], labels[train], groups=task.groups[train],
                           folds=_restrict(inner, fold.train, finite))
        for key, value in model.fold_hyper().items():
            hyper.setdefault(key, [None] * F)[f] = value
        present = np.unique(labels[train])
        for k, proba in model.proba_at(X[test], k_values).items():
            oof[k][np.ix_(test, present)] = proba
        if permuted is not None:
            for k, proba in model.relabelled_at(X[train], permuted[:, train], X[test], k_values, K).items():
                permuted_oof[k][:, test] = proba
    for k in k_values:  # classes absent from a training fold get probability 0
        rows = np.isfinite(oof[k]).any(1)
        oof[k][rows] = np.nan_to_num(oof[k][rows], nan=0.0)
    return oof, hyper, permuted_oof


def _restrict(inner, train_rows, finite):
    """Inner folds (positions within the training rows) minus rows with non-finite features."""
    if inner is None or finite[train_rows].all():
        return inner
    keep = finite[train_rows]
    position = np.cumsum(keep) - 1
    return [(position[tr[keep[tr]]], position[te[keep[te]]]) for tr, te in inner]


def _summarise(task, point, pooling, label, proba, shuffled, finite, hyper, *, replicates, seconds,
               predictions, permuted=None) -> ProbeResult:
    rows = task.eval_rows[finite[task.eval_rows]]
    y, p = task.labels[rows], proba[rows]
    K = len(task.names)
    scores = point_scores(y, p, K)
    weights = task.bootstrap(rows, replicates)
    boot = bootstrap_scores(y, p, weights, K)
    effects = {}
    if permuted is not None:
        effects = design_effects(permuted[0][:, rows], permuted[1][:, rows], weights[:PERMUTATION_REPLICATES],
                                 task.groups[rows], K)
    widen = {name: inflation(effect, len(permuted[0])) for name, effect in effects.items()}
    ci = {name: stretched(interval(boot[name]), scores[name], widen.get(name, 1.0))
          for name in ("accuracy", "balanced_accuracy", "macro_f1", "auroc")}
    chance = 1.0 / K
    majority = _majority_accuracy(task, rows)
    # the control is scored against the labels it was trained on: what the protocol fits where no class signal is
    shuffled_scores = point_scores(shuffled[1][rows], shuffled[0][rows], K) if shuffled is not None else None
    cache = task.cache
    return ProbeResult(
        model=str(cache.attrs.get("model", cache.path.stem)), data=str(cache.attrs.get("data", "")),
        cache=str(cache.path), point=point, pooling=pooling, probe=label, split=task.plan.kind, n=len(rows),
        n_excluded=int(len(task.cache) - len(rows)), n_classes=K, classes=task.names, chance=chance,
        majority_accuracy=majority, accuracy=scores["accuracy"], accuracy_ci=ci["accuracy"],
        balanced_accuracy=scores["balanced_accuracy"], balanced_accuracy_ci=ci["balanced_accuracy"],
        macro_f1=scores["macro_f1"], macro_f1_ci=ci["macro_f1"], auroc=scores["auroc"], auroc_ci=ci["auroc"],
        skill=float(skill(scores["balanced_accuracy"], chance)),
        skill_ci=None if ci["balanced_accuracy"] is None else [float(skill(v, chance))
                                                                for v in ci["balanced_accuracy"]],
        shuffled_accuracy=shuffled_scores["accuracy"] if shuffled_scores else None,
        shuffled_balanced_accuracy=shuffled_scores["balanced_accuracy"] if shuffled_scores else None,
        selectivity=(scores["balanced_accuracy"] - shuffled_scores["balanced_accuracy"]) if shuffled_scores else None,
        per_class_recall=scores["per_class_recall"], confusion=scores["confusion"], folds=len(task.plan.folds),
        hyper=hyper, ci_method="patient-bootstrap x permutation design effect" if effects else "patient-bootstrap",
        design_effect={name: round(value, 4) for name, value in effects.items()},
        permutations=len(permuted[0]) if permuted is not None else 0, note=task.plan.note,
        reads_point=str(cache.attrs.get("reads_point", "")),
        model_fingerprint=str(cache.attrs.get("model_fingerprint", "")),
        vision_fingerprint=str(cache.attrs.get("vision_fingerprint", "")),
        data_fingerprint=str(cache.attrs.get("data_fingerprint", "")), predictions=predictions,
        seconds=round(seconds, 3))


def shuffle_by_patient(labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels permuted across patients: each patient takes the labels of another patient (drawn by a permutation of
    patients, recycled over its images), so a patient keeps one shuffled label when its own were one. Anything that
    tells patients apart (a leaky split, a patient-level label) survives the shuffle; only the class signal goes."""
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.lexsort((rng.random(len(labels)), inverse))  # rows by patient, shuffled within each patient
    counts = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    donor = rng.permutation(len(counts))[inverse]  # each row's patient's donor
    within = np.empty(len(labels), int)
    within[np.argsort(inverse, kind="stable")] = np.arange(len(labels)) - np.repeat(starts, counts)
    return labels[order[starts[donor] + within % counts[donor]]]


def _majority_accuracy(task: _Task, rows: np.ndarray) -> float:
    """Accuracy of predicting each training fold's most frequent class on its test rows."""
    hits = total = 0
    keep = set(rows.tolist())
    for fold in task.plan.folds:
        test = np.array([i for i in fold.test if i in keep], dtype=int)
        if not len(test):
            continue
        majority = np.bincount(task.labels[fold.train]).argmax()
        hits += int((task.labels[test] == majority).sum())
        total += len(test)
    return hits / total if total else float("nan")


def _predictions(task: _Task, proba: np.ndarray, finite: np.ndarray) -> Predictions:
    """The out-of-fold predictions of the evaluated rows with finite features."""
    fold_of = np.full(len(task.rows), -1)
    for f, fold in enumerate(task.plan.folds):
        fold_of[fold.test] = f
    rows = task.eval_rows[finite[task.eval_rows]]
    cache_rows = task.rows[rows]
    return Predictions(ids=np.asarray(task.cache.ids, dtype=object)[cache_rows].astype(str), groups=task.groups[rows],
                       splits=np.asarray(task.cache.splits, dtype=object)[cache_rows].astype(str),
                       folds=fold_of[rows], labels=task.labels[rows], classes=list(task.names), proba=proba[rows])
