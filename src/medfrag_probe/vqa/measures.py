"""Robustness measures over scored VQA records (`summarise`), each defined in one place.

Items are (sample, prompt) pairs with an expected answer (descriptions are not items). Standard errors are clustered
by image: items of one sample are not independent, so `se = sqrt(G/(G-1) * sum_g r_g^2) / n` with `r_g` the summed
residuals of sample g; `*_ci` is the normal interval `value +- 1.96 se`, clipped to [0, 1].

- accuracy: correct / all items (refusals, hedges and unknowns count as wrong); answered_accuracy: over answered items.
- spread: standard deviation (ddof=1) and range of per-prompt accuracy under the image condition, overall and per kind.
- flip_rate: share of (sample, paraphrase group) whose answered plain (non-negated) paraphrases disagree;
  negation_flip_rate: share of answered negated items whose inverted answer disagrees with the majority plain answer.
- text_only_agreement: share of items answered with and without the image whose answers are equal.
- swap_sensitivity: among items whose expected answer differs for the swapped-in image, the share whose answer
  changed; swap_follows: the share answered correctly for the swapped-in image.
- quadrants (per sample, over the paraphrase items, or the yes/no items when the task has no paraphrases):
  consistent = every answered item gives the same answer (after undoing negations); image-reliant = at least one
  answer changes when the image is removed (to another answer, or to none). Ideal = consistent and reliant,
  Fragile = inconsistent and reliant, Dangerous = consistent but not reliant, Worst = neither.
- classification: each sample's class is the majority of the classes its answers name under the image condition
  (ties -> the earliest prompt; none -> unanswered). Balanced accuracy counts unanswered samples wrong; skill
  (chance-normalised) credits them at chance, 1/K, so abstaining scores 0 and only wrong answers go below it.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from ..probes.metrics import skill

Z95 = 1.959964


def clustered_se(values, clusters) -> float | None:
    """Standard error of the mean of `values`, clustered by `clusters` (CR1 small-sample correction)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    _, inverse = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    groups = inverse.max() + 1
    if groups < 2:
        return None
    sums = np.bincount(inverse, weights=values - values.mean(), minlength=groups)
    return float(np.sqrt(groups / (groups - 1) * (sums ** 2).sum()) / len(values))


def rate(values, clusters) -> dict:
    """Mean of 0/1 `values` with its clustered SE and 95% interval."""
    if not len(values):
        return {"value": None, "se": None, "ci": None, "n": 0}
    value = float(np.mean(values))
    se = clustered_se(values, clusters)
    ci = None if se is None else [max(0.0, value - Z95 * se), min(1.0, value + Z95 * se)]
    return {"value": value, "se": se, "ci": ci, "n": len(values)}


def item_stats(records) -> dict:
    """Accuracy (all and answered), refusal / hedge / unknown rates over scored items."""
    items = [r for r in records if r.expected is not None]
    if not items:
        return {"n_items": 0, "accuracy": None, "answered_accuracy": None, "refusal_rate": None}
    ids = [r.sample_id for r in items]
    acc = rate([bool(r.correct) for r in items], ids)
    answered = [r for r in items if r.answer_kind == "answer"]
    ans = rate([bool(r.correct) for r in answered], [r.sample_id for r in answered])
    kinds = Counter(r.answer_kind for r in items)
    return {"n_items": len(items), "n_samples": len(set(ids)), "accuracy": acc["value"], "accuracy_se": acc["se"],
            "accuracy_ci": acc["ci"], "answered_accuracy": ans["value"], "answered_accuracy_se": ans["se"],
            "answered_rate": len(answered) / len(items), "refusal_rate": kinds["refusal"] / len(items),
            "hedge_rate": kinds["hedge"] / len(items), "unknown_rate": kinds["unknown"] / len(items)}


def summarise(records, task) -> dict:
    """Every measure of the module docstring, as one JSON-ready dict."""
    by_condition = defaultdict(list)
    for r in records:
        by_condition[r.condition].append(r)
    image = by_condition["image"]
    return {
        "n_records": len(records),
        "conditions": {c: {**item_stats(rs), "by_kind": _by_kind(rs)} for c, rs in by_condition.items()},
        "prompts": prompt_table(image),
        "spread": spread(image),
        "paraphrase": paraphrase_flips(image),
        "text_only": paired_agreement(image, by_condition.get("no-image", [])),
        "blank": paired_agreement(image, by_condition.get("blank", [])),
        "swap": swap_sensitivity(image, by_condition.get("swap", [])),
        "quadrants": quadrants(image, by_condition.get("no-image", [])),
        "classification": classification(image, list(task.classes)),
    }


def _by_kind(records) -> dict:
    kinds = sorted({r.kind for r in records if r.expected is not None})
    return {k: item_stats([r for r in records if r.kind == k]) for k in kinds}


def prompt_table(records) -> list[dict]:
    """Per-prompt accuracy, answered accuracy and refusal rate (image condition)."""
    by_prompt = defaultdict(list)
    for r in records:
        if r.expected is not None:
            by_prompt[r.prompt_id].append(r)
    table = []
    for prompt_id, rs in by_prompt.items():
        stats = item_stats(rs)
        table.append({"prompt_id": prompt_id, "kind": rs[0].kind, "accuracy": stats["accuracy"],
                      "accuracy_se": stats["accuracy_se"], "answered_accuracy": stats["answered_accuracy"],
                      "refusal_rate": stats["refusal_rate"], "answered_rate": stats["answered_rate"],
                      "n": stats["n_items"]})
    return table


def spread(records) -> dict:
    """Std and range of per-prompt accuracy, overall and per prompt kind."""
    table = prompt_table(records)

    def one(rows):
        acc = np.array([r["accuracy"] for r in rows], dtype=float)
        if not len(acc):
            return None
        best, worst = rows[int(acc.argmax())]["prompt_id"], rows[int(acc.argmin())]["prompt_id"]
        return {"std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, "range": float(acc.max() - acc.min()),
                "min": float(acc.min()), "max": float(acc.max()), "best_prompt": best, "worst_prompt": worst,
                "n_prompts": len(acc)}

    out = {"all": one(table)}
    out.update({kind: one([r for r in table if r["kind"] == kind]) for kind in sorted({r["kind"] for r in table})})
    return out


def paraphrase_flips(records) -> dict:
    """Flip rate of plain paraphrases per (sample, group), and of negated items against the plain majority."""
    groups = _paraphrase_groups(records)
    flips, flip_ids, neg, neg_ids = [], [], [], []
    for (sample, _group), items in groups.items():
        plain = [r.parsed for r, negated in items if not negated and r.answer_kind == "answer"]
        if len(plain) >= 2:
            flips.append(len(set(plain)) > 1)
            flip_ids.append(sample)
        counts = Counter(plain).most_common()
        if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
            continue
        majority = counts[0][0]
        for r, negated in items:
            if negated and r.answer_kind == "answer" and r.parsed in ("yes", "no"):
                neg.append(_invert(r.parsed) != majority)
                neg_ids.append(sample)
    f, n = rate(flips, flip_ids), rate(neg, neg_ids)
    return {"flip_rate": f["value"], "flip_rate_se": f["se"], "n_sets": f["n"], "negation_flip_rate": n["value"],
            "negation_flip_rate_se": n["se"], "n_negated": n["n"], "n_groups": len({g for _, g in groups})}


def _invert(answer: str) -> str:
    return {"yes": "no", "no": "yes"}.get(answer, answer)


def _paraphrase_groups(records) -> dict:
    """(sample, group) -> [(record, negated)] over paraphrase items (negated = expected answer inverted)."""
    groups = defaultdict(list)
    for r in records:
        if r.paraphrase:
            groups[(r.sample_id, r.paraphrase)].append((r, r.negated))
    return groups


def paired_agreement(image, other) -> dict:
    """Share of items answered under both conditions with the same answer, and accuracy under `other`."""
    if not other:
        return {"agreement": None, "n": 0, "accuracy": None}
    mine = {(r.sample_id, r.prompt_id): r for r in image if r.expected is not None}
    same, ids = [], []
    for r in other:
        base = mine.get((r.sample_id, r.prompt_id))
        if base is not None and base.answer_kind == "answer" and r.answer_kind == "answer":
            same.append(base.parsed == r.parsed)
            ids.append(r.sample_id)
    agree = rate(same, ids)
    return {"agreement": agree["value"], "agreement_se": agree["se"], "n": agree["n"],
            "accuracy": item_stats(other)["accuracy"]}


def swap_sensitivity(image, swapped) -> dict:
    """Whether answers change when the image is replaced by one of another class, where they should."""
    if not swapped:
        return {"sensitivity": None, "follows": None, "n": 0}
    mine = {(r.sample_id, r.prompt_id): r for r in image if r.expected is not None}
    changed, follows, ids = [], [], []
    for r in swapped:
        base = mine.get((r.sample_id, r.prompt_id))
        if base is None or r.swap_expected is None or r.swap_expected == r.expected:
            continue
        if base.answer_kind == "answer" and r.answer_kind == "answer":
            changed.append(base.parsed != r.parsed)
            follows.append(r.parsed == r.swap_expected)
            ids.append(r.sample_id)
    c, f = rate(changed, ids), rate(follows, ids)
    return {"sensitivity": c["value"], "sensitivity_se": c["se"], "follows": f["value"], "follows_se": f["se"],
            "n": c["n"]}


def quadrants(image, text_only) -> dict:
    """Ideal / Fragile / Dangerous / Worst shares of samples (consistency x image reliance)."""
    if not text_only:
        return {"note": "needs the no-image condition", "n": 0}
    paraphrased = any(r.paraphrase for r in image)
    items = {r.prompt_id for r in image if (r.paraphrase if paraphrased else r.kind == "yes_no")}
    blind = {(r.sample_id, r.prompt_id): r for r in text_only}
    per_sample = defaultdict(list)
    for r in image:
        if r.prompt_id in items:
            per_sample[r.sample_id].append((r, blind.get((r.sample_id, r.prompt_id))))
    names = {(True, True): "Ideal", (False, True): "Fragile", (True, False): "Dangerous", (False, False): "Worst"}
    counts, correct = Counter(), defaultdict(list)
    for pairs in per_sample.values():
        plain = [_invert(r.parsed) if r.negated else r.parsed for r, _ in pairs
                 if r.answer_kind == "answer" and r.parsed in ("yes", "no")]
        if len(plain) < 2:
            continue
        # an answer that becomes a refusal or no answer without the image also changed: the image mattered
        reliant = any(b is not None and r.answer_kind == "answer" and r.parsed != b.parsed for r, b in pairs)
        name = names[(len(set(plain)) == 1, reliant)]
        counts[name] += 1
        correct[name] += [bool(r.correct) for r, _ in pairs]
    total = sum(counts.values())
    return {"n": total, **{name: counts[name] / total if total else None for name in names.values()},
            "accuracy": {name: float(np.mean(correct[name])) if correct[name] else None for name in names.values()}}


def sample_classes(image) -> dict[str, str | None]:
    """Each sample's voted class under the image condition (None when no answer names a class)."""
    votes: dict[str, list[str]] = defaultdict(list)
    seen = set()
    for r in image:
        if r.expected is None:
            continue
        seen.add(r.sample_id)
        if r.class_pred is not None:
            votes[r.sample_id].append(r.class_pred)
    out = {}
    for sample in seen:
        counts = Counter(votes.get(sample, []))
        if not counts:
            out[sample] = None
            continue
        top = max(counts.values())
        out[sample] = next(c for c in votes[sample] if counts[c] == top)  # ties: the earliest prompt's class
    return out


def credit(labels, preds, n_classes: int) -> np.ndarray:
    """Per-sample credit of class answers: 1 right, 0 wrong, 1/K unanswered (an abstention carries no information,
    which is what chance carries; a confident wrong answer is worse)."""
    labels, preds = np.asarray(labels, dtype=object), np.asarray(preds, dtype=object)
    answered = np.array([p is not None for p in preds], dtype=bool)
    return np.where(answered, (preds == labels).astype(float), 1.0 / n_classes)


def class_scores(labels: list[str], preds: list[str | None], classes: list[str]) -> dict:
    """Accuracy and balanced accuracy (unanswered = wrong), and skill: chance-normalised balanced accuracy with an
    unanswered sample credited at chance (`credit`), so a model that never answers has skill 0, not below it."""
    labels, preds = np.array(labels, dtype=object), np.array(preds, dtype=object)
    chance = 1 / len(classes)
    present = [c for c in classes if (labels == c).any()]
    recalls = [float(np.mean(preds[labels == c] == c)) for c in present]
    gained = credit(labels, preds, len(classes))
    credited = [float(np.mean(gained[labels == c])) for c in present]
    balanced = float(np.mean(recalls)) if recalls else None
    return {"accuracy": float(np.mean(preds == labels)) if len(labels) else None, "balanced_accuracy": balanced,
            "skill": float(skill(np.mean(credited), chance)) if credited else None, "chance": chance,
            "answered_rate": float(np.mean([p is not None for p in preds])) if len(preds) else None,
            "n": int(len(labels))}


def classification(image, classes: list[str]) -> dict:
    """Class-level VQA scores: the per-sample vote, and each class-naming prompt on its own."""
    voted = sample_classes(image)
    label_of = {r.sample_id: r.label for r in image}
    ids = sorted(voted)
    out = class_scores([label_of[i] for i in ids], [voted[i] for i in ids], classes)
    per_prompt = {}
    for prompt_id in sorted({r.prompt_id for r in image if r.kind in ("multiple_choice", "open")}):
        rs = [r for r in image if r.prompt_id == prompt_id]
        per_prompt[prompt_id] = class_scores([r.label for r in rs], [r.class_pred for r in rs], classes)["skill"]
    out["skill_by_prompt"] = per_prompt
    return out
