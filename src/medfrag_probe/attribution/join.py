"""Joining one VQA run to the probe results of the same model and data, sample by sample.

A VQA run is matched to the probe results of the same model (the same model spec when any result has it, else the
same tower + projector fingerprint) and data (fingerprint, else spec). The probe side is the `best` point chosen per
outer fold on held-out training-side scores (`select_best`), or the point the language model reads (`reads_result`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..answering.measures import ABSTAINED, UNPARSED
from ..artifacts.answers import VQARun
from ..artifacts.probes import Predictions, ProbeResult, read_predictions
from ..errors import UserError
from ..points import is_language, point_order
from ..probes.metrics import record_inflation
from ..stats import bootstrap_weights

MISSING_CODES = {ABSTAINED: -1, UNPARSED: -2}  # VQA class codes of samples that name no class


@dataclass
class Joined:
    """Probe and VQA per-sample predictions of one (model, data) on their shared samples."""

    ids: np.ndarray
    groups: np.ndarray
    labels: np.ndarray  # class indices
    classes: list[str]
    probe_pred: np.ndarray
    vqa_pred: np.ndarray  # class index; -1 abstained, -2 unparsed
    weights: np.ndarray
    probe_inflation: float = 1.0  # the probe interval's design-effect widening (`stats.inflation`)


def match_results(results: list[ProbeResult], run: VQARun, *, probe: str) -> list[ProbeResult]:
    """Probe results of the VQA run's data (fingerprint, else spec) and model: the same model spec when any result
    has it, else the same tower + projector fingerprint (a checkpoint read from another path). Two models that share
    tower and projector (a base and its LM-only fine-tune) keep their own results."""
    s = run.summary

    def same(result, key, fallback):
        if result.get(key) and s.get(key):
            return result[key] == s[key]
        return result.get(fallback) == s.get(fallback)

    candidates = [r for r in results if r.probe == probe and same(r, "data_fingerprint", "data")]
    by_spec = [r for r in candidates if r.model == s.get("model")]
    if by_spec:
        return by_spec
    fingerprint = s.get("model_fingerprint")
    return [r for r in candidates if fingerprint and r.model_fingerprint == fingerprint]


def reads_result(matched: list[ProbeResult], reads_point: str) -> ProbeResult | None:
    """The result at the point the language model reads, mean pooling where present."""
    at = [r for r in matched if r.point == reads_point]
    if not at:
        return None
    return next((r for r in at if r.pooling == "mean"), at[0])


def select_best(matched: list[ProbeResult], *, fallback: ProbeResult | None = None
                ) -> tuple[Predictions, dict, float]:
    """Out-of-fold predictions where each fold's rows come from the point with the best held-out (training-side)
    score on that fold; returns them, {fold: "point/pooling"} and the interval widening to apply (the widest of the
    chosen results'). Without held-out scores (too few patients per class for inner CV) nothing is selected:
    `fallback` (the read point) is used for every fold. Only the encoder's side competes (vision points and
    projector): language-model states already mix in the prompt."""
    scored = [r for r in matched if not is_language(r.point)
              and any(v is not None for v in r.hyper.get("val_score") or [])]
    if not scored:
        chosen = fallback or max((r for r in matched if not is_language(r.point)),
                                 key=lambda r: point_order(r.point), default=None)
        if chosen is None:
            raise UserError("no vision or projector probe results to compare with the answers")
        return (read_predictions(chosen.predictions),
                {"all": f"{chosen.point}/{chosen.pooling} (no held-out scores: not selected)"},
                record_inflation(chosen))
    preds = {id(r): read_predictions(r.predictions) for r in scored}
    base = preds[id(scored[0])]
    proba = np.full_like(base.proba, np.nan)
    chosen, inflation = {}, 1.0
    for fold in sorted(set(base.folds.tolist())):
        best = max(scored, key=lambda r: (_val(r, fold), -point_order(r.point)[0]))
        chosen[str(fold)] = f"{best.point}/{best.pooling}"
        inflation = max(inflation, record_inflation(best))
        p = preds[id(best)]
        if not np.array_equal(p.ids, base.ids):
            raise UserError(f"probe predictions {best.predictions} list other samples than {scored[0].predictions}")
        rows = base.folds == fold
        proba[rows] = p.proba[rows]
    return replace(base, proba=proba), chosen, inflation


def _val(result: ProbeResult, fold: int) -> float:
    scores = result.hyper["val_score"]
    value = scores[fold] if 0 <= fold < len(scores) else None
    return -np.inf if value is None else float(value)


def join(pred: Predictions, vqa_class: dict, rename: dict, *, replicates: int, inflation: float = 1.0) -> Joined:
    """The probe predictions and the VQA class of each sample, on the samples both have; VQA class names are
    mapped onto the probe's through `rename` (the data's class names -> the task's)."""
    classes = [rename.get(c, c) for c in pred.classes]
    index = {c: k for k, c in enumerate(classes)}
    keep = np.array([i in vqa_class for i in pred.ids])
    if not keep.any():
        raise UserError("the probe predictions and the VQA answers share no sample id; were they made on the same "
                        "data?")
    ids = pred.ids[keep]
    unknown = {c for c in vqa_class.values() if c not in MISSING_CODES and c not in index}
    if unknown:
        raise UserError(f"VQA classes {sorted(unknown)} are not among the probe's classes {classes}")
    vqa_pred = np.array([MISSING_CODES.get(vqa_class[i], index.get(vqa_class[i])) for i in ids])
    groups = pred.groups[keep]
    return Joined(ids=ids, groups=groups, labels=pred.labels[keep], classes=classes,
                  probe_pred=pred.proba[keep].argmax(1), vqa_pred=vqa_pred,
                  weights=bootstrap_weights(groups, replicates=replicates), probe_inflation=inflation)
