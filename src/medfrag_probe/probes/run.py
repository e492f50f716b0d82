"""`probe`: linear and kNN probes over every (point, pooling) of one or more caches, with controls and CIs.

    from medfrag_probe.probes import probe
    results = probe(["cache/tiny-llava__synth-brain-mri.h5"], points="vision.*", probes=("linear", "knn"))
    best = max(results, key=lambda r: r.balanced_accuracy)

Writes `OUT/results.jsonl` (one record per cache x point x pooling x probe), `OUT/results.csv`, per-sample
out-of-fold predictions in `OUT/predictions/`, and figures. Headline score: balanced accuracy (its chance is 1/K
whatever the class balance); `skill = (balanced_accuracy - 1/K) / (1 - 1/K)`.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._fs import atomic_write
from .._log import debug, info, is_quiet, warn
from ..cache import EmbeddingCache
from ..errors import UserError, bad_choice
from ..models.loading import resolve_device
from .estimators import PROBES, inner_folds
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

PERMUTATIONS = 40  # permutation refits per result behind the intervals' design effect (0: plain bootstrap)


@dataclass(frozen=True)
class ProbeResult:
    """One probe on one (cache, point, pooling): scores with 95% CIs, controls, and provenance."""

    model: str
    data: str
    cache: str
    point: str
    pooling: str
    probe: str
    split: str
    n: int
    n_excluded: int
    n_classes: int
    classes: list[str]
    chance: float
    majority_accuracy: float
    accuracy: float
    accuracy_ci: list[float] | None
    balanced_accuracy: float
    balanced_accuracy_ci: list[float] | None
    macro_f1: float
    macro_f1_ci: list[float] | None
    auroc: float | None
    auroc_ci: list[float] | None
    skill: float
    skill_ci: list[float] | None
    shuffled_accuracy: float | None
    shuffled_balanced_accuracy: float | None
    selectivity: float | None
    per_class_recall: list
    confusion: list
    folds: int
    hyper: dict = field(default_factory=dict)
    ci_method: str = "patient-bootstrap"
    design_effect: dict = field(default_factory=dict)
    permutations: int = 0
    note: str = ""
    reads_point: str = ""
    model_fingerprint: str = ""
    vision_fingerprint: str = ""
    data_fingerprint: str = ""
    predictions: str = ""
    seconds: float = 0.0

    def record(self) -> dict:
        """The flat JSON record."""
        return asdict(self)


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
          allow_incomplete: bool = False, permutations: int = PERMUTATIONS) -> list[ProbeResult]:
    """Probe every matching (point, pooling) of each cache; write results under `out`; return the results.

    Intervals: a patient bootstrap of the out-of-fold predictions, widened by the probe's design effect, which
    `permutations` refits of the same protocol on labels permuted across patients measure (see
    `metrics.design_effects`); `permutations=0` keeps the plain bootstrap (narrower than it should be: it ignores
    that each fold's model was fitted on finite data).

    Given train/val/test splits that share a patient are refused unless `allow_split_overlap`. A cache whose
    extraction has not finished (samples neither extracted nor failed) is refused unless `allow_incomplete`: the
    finished rows of a stopped run are not a random sample of the data. Failed images never block a probe.

    `device="auto"` runs the kNN search and the logistic-regression solver on CUDA when present, else on the CPU.
    """
    probes = _check_probes(probes)
    if permutations == 1 or permutations < 0:
        raise UserError(f"permutations must be 0 (plain patient bootstrap) or at least 2, not {permutations}")
    device = str(resolve_device(device))
    out = Path(out)
    opened = [EmbeddingCache(path) for path in ([caches] if isinstance(caches, (str, Path)) else caches)]
    for cache in opened:
        _check_finished(cache, allow_incomplete=allow_incomplete)
    (out / "predictions").mkdir(parents=True, exist_ok=True)  # only once every cache opened: no stray folders
    results: list[ProbeResult] = []
    chosen = {cache.path: _select(cache, points, poolings) for cache in opened}  # every selection checked first
    bar = tqdm(total=sum(len(pairs) for pairs in chosen.values()) * len(probes), desc="probe", unit="fit",
               disable=is_quiet(), dynamic_ncols=True)
    with bar:
        for cache in opened:
            path = cache.path
            task = _task(cache, folds=folds, seed=seed, allow_split_overlap=allow_split_overlap)
            for point, pooling in chosen[path]:
                for name in probes:
                    bar.set_postfix_str(f"{Path(path).stem} {point}/{pooling} {name}", refresh=False)
                    for result in _run_one(task, point, pooling, name, out=out, seed=seed, replicates=replicates,
                                           controls=controls, ks=ks, device=device, permutations=permutations):
                        results.append(result)
                        debug(f"probe {Path(path).name} {point}/{pooling} {result.probe}: balanced accuracy "
                              f"{result.balanced_accuracy:.3f} {format_ci(result.balanced_accuracy_ci)} "
                              f"({result.split})")
                    bar.update(1)
            _write(results, out)
    if not results:
        raise UserError("no probe result: every selected (point, pooling) has only NaN or inf values")
    info(f"probe: {len(results)} results -> {out / 'results.csv'} (one line per result with --verbose)")
    if figures:
        from .figures import layer_curves

        layer_curves(results, out)
    return results


def format_ci(ci) -> str:
    """A 95% interval as `[low, high]` (empty when there is none)."""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _check_finished(cache: EmbeddingCache, *, allow_incomplete: bool) -> None:
    left = cache.unfinished
    if left and not allow_incomplete:
        raise UserError(f"cache {cache.path} is an unfinished extraction: {left} of {len(cache)} samples are neither "
                        "extracted nor failed; re-run the same extract command to finish it, or pass "
                        "--allow-incomplete to probe the finished rows only")
    if left:
        warn(f"cache {cache.path}: probing {len(cache) - left} finished rows; {left} samples were never extracted")


def _check_probes(probes) -> list[str]:
    names = [p.strip() for p in probes.split(",")] if isinstance(probes, str) else list(probes)
    for name in names:
        if name not in PROBES:
            raise bad_choice("probe", name, PROBES)
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


def point_order(name: str) -> tuple[int, str]:
    """Position of a point along the pipeline: embed, blocks, post, pooled, projector, language blocks."""
    parts = name.split(".")
    if name == "vision.embed":
        return (0, name)
    if len(parts) == 3 and parts[1] == "block" and parts[2].isdigit():
        return ((1 if parts[0] == "vision" else 2000) + int(parts[2]), name)
    return ({"vision.post": 500, "vision.pooled": 501, "projector": 900}.get(name, 5000), name)


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
    k_values = sorted(set(ks)) if (ks and name.startswith("knn")) else [None]
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
    for k in k_values:
        label = name if k is None else f"{name}@{k}"
        pred_path = out / "predictions" / _pred_name(task, point, pooling, label)
        _write_predictions(task, oof[k], finite, pred_path)
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
    (P, n), also those of the same protocol refitted on each label vector (C as chosen on the real labels)."""
    K = len(task.names)
    oof = {k: np.full((len(X), K), np.nan, np.float32) for k in k_values}
    permuted_oof = {k: None if permuted is None else np.full((len(permuted), len(X), K), np.nan, np.float32)
                    for k in k_values}
    # val_score[f]: held-out score of fold f's chosen C on its training-side rows (what the bridge selects points by)
    hyper: dict = {"C": [], "val_score": [None] * len(task.plan.folds)} if name == "linear" else {}
    for f, (fold, inner) in enumerate(zip(task.plan.folds, task.inner)):
        train, test = fold.train[finite[fold.train]], fold.test[finite[fold.test]]
        if not len(test):
            continue
        model = PROBES[name](device=device) if name != "linear" else PROBES[name](device=device, random_state=seed)
        present = np.unique(labels[train])
        if name == "linear":
            val = fold.val[finite[fold.val]] if fold.val is not None else None
            kwargs = dict(X_val=X[val], y_val=labels[val]) if val is not None and len(val) else dict(
                groups=task.groups[train], folds=_restrict(inner, fold.train, finite))
            model.fit(X[train], labels[train], **kwargs)
            hyper["C"].append(model.C_)
            hyper["val_score"][f] = float(model.cv_scores_.max()) if len(model.cv_scores_) else None
            oof[None][np.ix_(test, present)] = model.predict_proba(X[test])
            if permuted is not None:
                permuted_oof[None][:, test] = model.relabelled_proba(X[train], permuted[:, train], X[test], K)
        else:
            model.fit(X[train], labels[train])
            sweep = model.predict_proba_sweep(X[test], [k or model.k for k in k_values])
            for k in k_values:
                oof[k][np.ix_(test, present)] = sweep[min(k or model.k, len(train))]
            if permuted is not None:
                relabelled = model.relabelled_proba(X[test], permuted[:, train], [k or model.k for k in k_values], K)
                for k in k_values:
                    permuted_oof[k][:, test] = relabelled[min(k or model.k, len(train))]
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


def _pred_name(task: _Task, point: str, pooling: str, label: str) -> str:
    return f"{task.cache.path.stem}__{point}__{pooling}__{label.replace('@', '-k')}.csv"


def _write_predictions(task: _Task, proba: np.ndarray, finite: np.ndarray, path: Path) -> None:
    """Per-sample out-of-fold predictions: sample_id, group, split, fold, label, pred, correct, p_<class>..."""
    fold_of = np.full(len(task.rows), -1)
    for f, fold in enumerate(task.plan.folds):
        fold_of[fold.test] = f
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["sample_id", "group", "split", "fold", "label", "pred", "correct",
                     *[f"p_{c}" for c in task.names]])
    for i in task.eval_rows:
        if not finite[i]:
            continue
        row = task.rows[i]
        pred = int(proba[i].argmax())
        writer.writerow([task.cache.ids[row], task.groups[i], task.cache.splits[row], fold_of[i],
                         task.names[task.labels[i]], task.names[pred], int(pred == task.labels[i]),
                         *[f"{v:.6g}" for v in proba[i]]])
    atomic_write(path, buffer.getvalue())


CSV_FIELDS = ("model", "data", "point", "pooling", "probe", "split", "n", "n_classes", "chance", "accuracy",
              "balanced_accuracy", "macro_f1", "auroc", "skill", "shuffled_accuracy", "selectivity",
              "majority_accuracy", "folds", "cache")


def _write(results: list[ProbeResult], out: Path) -> None:
    """results.jsonl (all fields) and results.csv (scalars plus CI bounds), each replaced atomically."""
    atomic_write(out / "results.jsonl", "".join(json.dumps(r.record()) + "\n" for r in results))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    ci_fields = ("accuracy_ci", "balanced_accuracy_ci", "auroc_ci", "skill_ci")
    writer.writerow([*CSV_FIELDS, *[f"{c}_{e}" for c in ci_fields for e in ("low", "high")]])
    for r in results:
        rec = r.record()
        cis = [(rec[c] or [None, None])[e] for c in ci_fields for e in (0, 1)]
        writer.writerow([rec[f] for f in CSV_FIELDS] + cis)
    atomic_write(out / "results.csv", buffer.getvalue())
