"""The statistics of the bridge on joined samples: paired skills and gap, the verdict rule, McNemar's test and
paired model deltas (the rule itself is stated in `attribution.core`)."""

from __future__ import annotations

import numpy as np

from ..artifacts.bridge import BridgeRecord
from ..errors import UserError
from ..stats import abstention_credit, balanced_skill, bootstrap_weights, interval, stretch_replicates
from .join import Joined


def decide(scores: dict, *, n: int, seen_skill: float, min_gap: float) -> tuple[str, dict]:
    """The verdict of the module docstring from the skill and gap intervals, with the evidence for an undecided side."""
    probe_ci, vqa_ci, gap_ci = scores["probe_ci"], scores["vqa_ci"], scores["gap_ci"]
    seen = _side(probe_ci, seen_skill)
    if vqa_ci is not None and vqa_ci[0] >= seen_skill:
        seen = True
    lost = _side(gap_ci, min_gap, strict=True)
    if seen is True:
        verdict = {True: "reasoning-limited", False: "sound", None: "inconclusive"}[lost]
    elif seen is False:
        verdict = "both" if lost is True else "vision-limited"
    else:
        verdict = "inconclusive"
    undecided = []
    if seen is None:
        undecided.append(("probe_skill", scores["probe"], probe_ci, seen_skill))
    if verdict == "inconclusive" and lost is None:
        undecided.append(("gap", scores["gap"], gap_ci, min_gap))
    distance, needed = {}, {}
    for name, estimate, ci, threshold in undecided:
        if ci is None:
            continue
        half = (ci[1] - ci[0]) / 2
        distance[name] = half
        away = abs(estimate - threshold)
        needed[name] = int(np.ceil(n * (half / away) ** 2)) if away > 1e-9 else None
    return verdict, {"seen": seen, "lost": lost, "undecided": [u[0] for u in undecided],
                     "detectable_distance": distance, "n_needed": needed}


def _side(ci, threshold: float, *, strict: bool = False) -> bool | None:
    """True when the interval lies above the threshold (at or above unless `strict`), False when wholly below it,
    None when it straddles it (or is missing)."""
    if ci is None:
        return None
    if ci[0] > threshold or (not strict and ci[0] >= threshold):
        return True
    if ci[1] < threshold:
        return False
    return None


def paired_skills(join: Joined) -> dict:
    """Probe and VQA balanced skill of the joined samples, their gap, and 95% paired patient-bootstrap CIs."""
    K = len(join.classes)
    probe_ok = (join.probe_pred == join.labels).astype(float)
    vqa_ok = _vqa_credit(join.vqa_pred, join.labels, K)
    probe, vqa = balanced_skill(probe_ok, join.labels, K), balanced_skill(vqa_ok, join.labels, K)
    # the probe's replicates widened by its design effect (its models were fitted on finite data; the answers'
    # model was not fitted here, so theirs stay): the gap stays paired, replicate by replicate
    probe_boot = stretch_replicates(balanced_skill(probe_ok, join.labels, K, join.weights), probe,
                                    join.probe_inflation)
    vqa_boot = balanced_skill(vqa_ok, join.labels, K, join.weights)
    return {"probe": probe, "probe_ci": interval(probe_boot), "vqa": vqa, "vqa_ci": interval(vqa_boot),
            "gap": probe - vqa, "gap_ci": interval(probe_boot - vqa_boot), "probe_boot": probe_boot,
            "vqa_boot": vqa_boot}


def _vqa_credit(pred: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Credit of class codes: -1 abstained, -2 unparsed (`stats.abstention_credit`)."""
    return abstention_credit(pred == labels, pred == -1, n_classes)


def mcnemar(join: Joined) -> tuple[dict, float]:
    """The 2x2 of probe-correct x VQA-correct and McNemar's exact (binomial) two-sided p-value."""
    from scipy.stats import binomtest

    probe_ok = join.probe_pred == join.labels
    vqa_ok = join.vqa_pred == join.labels
    table = {"both_right": int((probe_ok & vqa_ok).sum()), "probe_right_vqa_wrong": int((probe_ok & ~vqa_ok).sum()),
             "probe_wrong_vqa_right": int((~probe_ok & vqa_ok).sum()), "both_wrong": int((~probe_ok & ~vqa_ok).sum())}
    discordant = table["probe_right_vqa_wrong"] + table["probe_wrong_vqa_right"]
    p_value = 1.0 if discordant == 0 else float(binomtest(table["probe_right_vqa_wrong"], discordant, 0.5).pvalue)
    return table, p_value


def paired_deltas(records: list[BridgeRecord], joined: dict, pairs, *, replicates: int) -> list[dict]:
    """Medical minus generalist probe and VQA skill per data, with paired bootstrap CIs over shared samples."""
    rows = []
    by_key = {(r.model, r.data): r for r in records}
    for generalist, medical in pairs:
        for data in dict.fromkeys(r.data for r in records):
            a, b = by_key.get((generalist, data)), by_key.get((medical, data))
            if a is None or b is None:
                continue
            rows.append(_delta(a, b, joined[(a.model, data)], joined[(b.model, data)], replicates=replicates))
    models = {r.model for r in records}
    for generalist, medical in pairs:
        for spec in (generalist, medical):
            if spec not in models:
                raise UserError(f"pair model {spec!r} has no bridge record; models: {', '.join(sorted(models))}")
    return rows


def _delta(a: BridgeRecord, b: BridgeRecord, ja: Joined, jb: Joined, *, replicates: int) -> dict:
    shared, ia, ib = np.intersect1d(ja.ids, jb.ids, return_indices=True)
    K = len(ja.classes)
    weights = bootstrap_weights(ja.groups[ia], replicates=replicates)
    labels = ja.labels[ia]
    out = {"generalist": a.model, "medical": b.model, "data": a.data, "n": int(len(shared)),
           "identical_vision_tower": bool(a.vision_fingerprint) and a.vision_fingerprint == b.vision_fingerprint}
    for name, pa, pb in (("probe", ja.probe_pred[ia], jb.probe_pred[ib]), ("vqa", ja.vqa_pred[ia], jb.vqa_pred[ib])):
        ok_a, ok_b = _vqa_credit(pa, labels, K), _vqa_credit(pb, labels, K)  # probes always answer
        skill_a, skill_b = balanced_skill(ok_a, labels, K), balanced_skill(ok_b, labels, K)
        delta = skill_b - skill_a
        boot_a, boot_b = balanced_skill(ok_a, labels, K, weights), balanced_skill(ok_b, labels, K, weights)
        if name == "probe":
            boot_a = stretch_replicates(boot_a, skill_a, ja.probe_inflation)
            boot_b = stretch_replicates(boot_b, skill_b, jb.probe_inflation)
        boot = boot_b - boot_a
        out[f"{name}_delta"] = delta
        out[f"{name}_delta_ci"] = interval(boot)
    return out
