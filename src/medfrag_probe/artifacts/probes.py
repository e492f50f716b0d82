"""Probe outputs: `results.jsonl` / `results.csv` (one `ProbeResult` per cache x point x pooling x probe), the
per-sample out-of-fold predictions under `predictions/`, and the learning-curve rows `curves__CACHE.jsonl`.

    OUT/results.jsonl            every field of every ProbeResult, one JSON object per line
    OUT/results.csv              the scalars and CI bounds, for spreadsheets
    OUT/predictions/NAME.csv     sample_id, group, split, fold, label, pred, correct, p_<class>...
    OUT/curves__CACHE.jsonl      learning-curve rows (balanced accuracy per training size)
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._fs import atomic_write
from ..errors import UserError
from ._record import Record, folders, jsonl_text, read_jsonl

RESULTS = "results.jsonl"
RESULTS_CSV = "results.csv"
PREDICTIONS = "predictions"
CSV_FIELDS = ("model", "data", "point", "pooling", "probe", "split", "n", "n_classes", "chance", "accuracy",
              "balanced_accuracy", "macro_f1", "auroc", "skill", "shuffled_accuracy", "selectivity",
              "majority_accuracy", "folds", "cache")
CSV_CIS = ("accuracy_ci", "balanced_accuracy_ci", "auroc_ci", "skill_ci")


@dataclass(frozen=True)
class ProbeResult(Record):
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


def write_results(out: str | Path, results: list[ProbeResult]) -> None:
    """`results.jsonl` (every field) and `results.csv` (scalars and CI bounds), each replaced atomically."""
    out = Path(out)
    atomic_write(out / RESULTS, jsonl_text(results))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([*CSV_FIELDS, *[f"{c}_{e}" for c in CSV_CIS for e in ("low", "high")]])
    for r in results:
        writer.writerow([r[f] for f in CSV_FIELDS] + [(r[c] or [None, None])[e] for c in CSV_CIS for e in (0, 1)])
    atomic_write(out / RESULTS_CSV, buffer.getvalue())


def read_results(folder: str | Path) -> list[ProbeResult]:
    """The results of one probe output folder; each `predictions` path points at the file as it lies now (the
    folder may have been moved since it was written)."""
    folder = Path(folder)
    path = folder / RESULTS
    if not path.is_file():
        raise UserError(f"no probe results in {folder} ({RESULTS} not found); run `medfrag-probe probe` first")
    results = []
    for n, row in enumerate(read_jsonl(path), start=1):
        result = ProbeResult.from_record(row, where=f"{path} line {n}")
        results.append(replace(result, predictions=str(_located(result.predictions, folder))))
    return results


def find_results(paths, *, skip=("description",)) -> list[ProbeResult]:
    """The results of every probe output folder in or directly under `paths` (folders named in `skip` aside)."""
    found = []
    for root in folders(paths):
        for path in sorted({root / RESULTS, *root.glob(f"*/{RESULTS}")}):
            if path.is_file() and path.parent.name not in skip:
                found += read_results(path.parent)
    if not found:
        raise UserError(f"no probe results ({RESULTS}) in {paths}; run `medfrag-probe probe` first")
    return found


def _located(path: str, folder: Path) -> Path:
    candidate = Path(path)
    if path and candidate.is_file():
        return candidate
    return folder / PREDICTIONS / candidate.name


def prediction_name(cache_stem: str, point: str, pooling: str, probe: str) -> str:
    """The predictions file name of one result (`knn@5` becomes `knn-k5`)."""
    return f"{cache_stem}__{point}__{pooling}__{probe.replace('@', '-k')}.csv"


@dataclass(frozen=True, eq=False)
class Predictions:
    """Per-sample out-of-fold predictions of one probe result: arrays over its evaluated samples.

    `labels` are class indices into `classes`; `proba` (n, K) the class probabilities; `folds` the outer fold that
    predicted each sample (-1 when unknown)."""

    ids: np.ndarray
    groups: np.ndarray
    splits: np.ndarray
    folds: np.ndarray
    labels: np.ndarray
    classes: list[str]
    proba: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def predicted(self) -> np.ndarray:
        """Predicted class indices (the most probable class)."""
        return self.proba.argmax(1)

    def take(self, rows) -> Predictions:
        """The predictions of `rows` (indices or a boolean mask)."""
        return replace(self, ids=self.ids[rows], groups=self.groups[rows], splits=self.splits[rows],
                       folds=self.folds[rows], labels=self.labels[rows], proba=self.proba[rows])


def write_predictions(path: str | Path, predictions: Predictions) -> None:
    """The predictions CSV (probabilities to 6 significant digits), replaced atomically."""
    p = predictions
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["sample_id", "group", "split", "fold", "label", "pred", "correct",
                     *[f"p_{c}" for c in p.classes]])
    for i, pred in enumerate(p.predicted):
        writer.writerow([p.ids[i], p.groups[i], p.splits[i], int(p.folds[i]), p.classes[p.labels[i]],
                         p.classes[pred], int(pred == p.labels[i]), *[f"{v:.6g}" for v in p.proba[i]]])
    atomic_write(path, buffer.getvalue())


def read_predictions(path: str | Path) -> Predictions:
    """A predictions CSV as arrays (files written before the `split` / `fold` columns read as "" / -1)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file {path} not found")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        classes = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
        rows = list(reader)
    if not classes or not rows or "sample_id" not in rows[0]:
        raise UserError(f"{path} is not a probe predictions file (no sample_id or p_<class> columns, or no rows)")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r["label"] for r in rows} - set(index))
    if unknown:
        raise UserError(f"{path}: labels {unknown} are not among its classes {classes}")
    return Predictions(
        ids=np.array([r["sample_id"] for r in rows]), groups=np.array([r.get("group", r["sample_id"]) for r in rows]),
        splits=np.array([r.get("split") or "" for r in rows]),
        folds=np.array([int(r.get("fold") or -1) for r in rows]),
        labels=np.array([index[r["label"]] for r in rows]), classes=classes,
        proba=np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64))


def curves_name(cache_stem: str) -> str:
    """The learning-curve rows file of one cache."""
    return f"curves__{cache_stem}.jsonl"


def write_curves(out: str | Path, cache_stem: str, rows: list[dict]) -> Path:
    """Learning-curve rows of one cache, replaced atomically."""
    return atomic_write(Path(out) / curves_name(cache_stem), jsonl_text(rows))


def read_curves(folder: str | Path) -> list[dict]:
    """Every learning-curve row in `folder` (none when it holds no curves)."""
    folder = Path(folder)
    return [row for path in sorted(folder.glob(curves_name("*"))) for row in read_jsonl(path)]
