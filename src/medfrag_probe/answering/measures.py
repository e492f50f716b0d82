"""Robustness measures over scored VQA records (`summarise`), each defined in one place.

Items are (sample, prompt) pairs with an expected answer (descriptions are not items). Standard errors are clustered
by **patient** (the record's `group`; a sample without one is its own patient): items of one patient are not
independent, so `se = sqrt(G/(G-1) * sum_g r_g^2) / n` with `r_g` the summed residuals of patient g; `*_ci` is the
Wilson score interval at the effective sample size n / design effect with a t(G-1) quantile (`wilson_clustered`),
which holds its level near 0% and 100% where `value +- 1.96 se` does not.

- accuracy: correct / all items (refusals, hedges and unparsed responses count as wrong); answered_accuracy: over
  answered items; refusal_rate, hedge_rate and unparsed_rate (responses the parser could not read) apart.
- spread: standard deviation (ddof=1) and range of per-prompt accuracy under the image condition, overall and per kind.
- paraphrase_flip_rate (PSF-Med's definition): over *pairs* of plain (non-negated) paraphrases of one group asked
  about the same image, both answered yes/no, the share whose answers differ; paraphrase_set_inconsistency: the share
  of (sample, group) sets whose answered plain paraphrases do not all agree. negation_flip_rate: over pairs of a plain
  and a negated wording of one group about the same image, both answered, the share where the negated answer, once
  inverted, differs from the plain one.
- text_only_agreement: share of items answered with and without the image whose answers are equal.
- swap_sensitivity: among items whose expected answer differs for the swapped-in image, the share whose answer
  changed; swap_follows: the share answered correctly for the swapped-in image.
- quadrants (per sample, over the paraphrase items, or the yes/no items when the task has no paraphrases):
  consistent = every answered item gives the same answer (after undoing negations); image reliance is judged on
  items answered both with and without the image (and under blank, and under swap where the swapped-in image
  changes the expected answer, when present): reliant = at least one answer changes. Ideal = consistent and
  reliant, Fragile = inconsistent and reliant, Dangerous = consistent but not
  reliant, Worst = neither; a sample whose items are all answered with the image but none without it is
  `Abstains-blind` (it refuses or hedges without the image: it neither relies on the image nor ignores it).
- classification: each sample's class is the majority of the classes its answers name under the image condition
  (ties -> the earliest prompt). Only prompts that name a class vote: multiple choice and open questions, and yes/no
  questions only when the task has exactly two classes (then yes and no each name one class; with more classes a
  "no" would vote for the lone negative class while a "yes" names none). A sample whose class-naming answers name no
  class is `abstained` when every one of them is a refusal or hedge, else `unparsed`.
- One rule for the credit of a sample's class answer, used by `class_scores`, the bridge's skill and its McNemar
  table: right 1, wrong 0, abstained 1/K (an abstention carries no information, which is what chance carries; a
  confident wrong answer is worse), unparsed 0 (a response that names no class and does not abstain is not a right
  answer). McNemar and the per-sample table count a sample right only when it names the right class.
  `skill = (balanced credit - 1/K) / (1 - 1/K)`; `skill_by_kind` gives the same per prompt kind (yes/no: the
  balanced accuracy of the yes/no answers against their expected answers, chance 1/2).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from ..stats import abstention_credit, balanced_skill, rate


def item_stats(records) -> dict:
    """Accuracy (all and answered), refusal / hedge / unknown rates over scored items."""
    items = [r for r in records if r.expected is not None]
    if not items:
        return {"n_items": 0, "accuracy": None, "answered_accuracy": None, "refusal_rate": None}
    ids = [r.sample_id for r in items]
    acc = rate([bool(r.correct) for r in items], [patient(r) for r in items])
    answered = [r for r in items if r.answer_kind == "answer"]
    ans = rate([bool(r.correct) for r in answered], [patient(r) for r in answered])
    kinds = Counter(r.answer_kind for r in items)
    return {"n_items": len(items), "n_samples": len(set(ids)), "n_patients": len({patient(r) for r in items}),
            "accuracy": acc["value"], "accuracy_se": acc["se"], "accuracy_ci": acc["ci"],
            "answered_accuracy": ans["value"], "answered_accuracy_se": ans["se"],
            "answered_rate": len(answered) / len(items), "refusal_rate": kinds["refusal"] / len(items),
            "hedge_rate": kinds["hedge"] / len(items), "unparsed_rate": kinds["unknown"] / len(items),
            "unknown_rate": kinds["unknown"] / len(items)}


def patient(record) -> str:
    """The cluster of a record for standard errors and bootstraps: its patient, else its sample."""
    return getattr(record, "group", "") or f"sample:{record.sample_id}"


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
        "quadrants": quadrants(image, by_condition.get("no-image", []),
                               (by_condition.get("blank", []), by_condition.get("swap", []))),
        "classification": classification(image, list(task.classes)),
        "scored": scored_auroc(image, list(task.classes)),
    }


def sample_probabilities(image, classes: list[str]) -> dict[str, np.ndarray]:
    """Scored mode: each sample's class probabilities, the mean over its scored answers that name classes."""
    sums: dict[str, np.ndarray] = {}
    counts: Counter = Counter()
    for r in image:
        probs = getattr(r, "class_probs", None)
        if not probs:
            continue
        vec = np.array([probs.get(c, 0.0) for c in classes], dtype=float)
        sums[r.sample_id] = sums.get(r.sample_id, 0) + vec
        counts[r.sample_id] += 1
    return {k: v / counts[k] for k, v in sums.items()}


def scored_auroc(image, classes: list[str]) -> dict:
    """AUROC of the scored answers' class probabilities (binary, or macro one-vs-rest), on the probe's scale."""
    from ..stats import auroc

    probs = sample_probabilities(image, classes)
    if not probs:
        return {"auroc": None, "n": 0}
    label_of = {r.sample_id: r.label for r in image}
    ids = sorted(probs)
    y = np.array([classes.index(label_of[i]) for i in ids])
    return {"auroc": auroc(y, np.stack([probs[i] for i in ids]), len(classes)), "n": len(ids)}


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
    """Paraphrase flip rate over pairs, set inconsistency over groups, and negation flip rate over plain/negated
    pairs (definitions in the module docstring)."""
    groups = _paraphrase_groups(records)
    pairs, pair_ids, sets, set_ids, neg, neg_ids = [], [], [], [], [], []
    for items in groups.values():
        answered = [(r, negated) for r, negated in items if r.answer_kind == "answer" and r.parsed in ("yes", "no")]
        plain = [r.parsed for r, negated in answered if not negated]
        negated = [_invert(r.parsed) for r, n in answered if n]
        who = patient(items[0][0])
        for i in range(len(plain)):
            for j in range(i + 1, len(plain)):
                pairs.append(plain[i] != plain[j])
                pair_ids.append(who)
        if len(plain) >= 2:
            sets.append(len(set(plain)) > 1)
            set_ids.append(who)
        for a in plain:
            for b in negated:
                neg.append(a != b)
                neg_ids.append(who)
    f, s, n = rate(pairs, pair_ids), rate(sets, set_ids), rate(neg, neg_ids)
    return {"paraphrase_flip_rate": f["value"], "paraphrase_flip_rate_se": f["se"], "n_pairs": f["n"],
            "paraphrase_set_inconsistency": s["value"], "paraphrase_set_inconsistency_se": s["se"], "n_sets": s["n"],
            "flip_rate": f["value"], "flip_rate_se": f["se"],
            "negation_flip_rate": n["value"], "negation_flip_rate_se": n["se"], "n_negation_pairs": n["n"],
            "n_groups": len({g for _, g in groups})}


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
            ids.append(patient(base))
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
            ids.append(patient(base))
    c, f = rate(changed, ids), rate(follows, ids)
    return {"sensitivity": c["value"], "sensitivity_se": c["se"], "follows": f["value"], "follows_se": f["se"],
            "n": c["n"]}


def quadrants(image, text_only, controls=()) -> dict:
    """Ideal / Fragile / Dangerous / Worst shares of samples (consistency x image reliance on answered pairs), and
    Abstains-blind (answers with the image, none without it)."""
    if not text_only:
        return {"note": "needs the no-image condition", "n": 0}
    paraphrased = any(r.paraphrase for r in image)
    items = {r.prompt_id for r in image if (r.paraphrase if paraphrased else r.kind == "yes_no")}
    others = [{(r.sample_id, r.prompt_id): r for r in rs} for rs in (text_only, *controls) if rs]
    per_sample = defaultdict(list)
    for r in image:
        if r.prompt_id in items:
            per_sample[r.sample_id].append((r, [o.get((r.sample_id, r.prompt_id)) for o in others]))
    names = {(True, True): "Ideal", (False, True): "Fragile", (True, False): "Dangerous", (False, False): "Worst"}
    counts, correct = Counter(), defaultdict(list)
    for pairs in per_sample.values():
        plain = [_invert(r.parsed) if r.negated else r.parsed for r, _ in pairs
                 if r.answer_kind == "answer" and r.parsed in ("yes", "no")]
        if len(plain) < 2:
            continue
        compared = [(r, o) for r, alts in pairs for o in alts
                    if o is not None and r.answer_kind == "answer" and o.answer_kind == "answer"
                    and (o.condition != "swap" or o.swap_expected != o.expected)]
        if not compared:
            name = "Abstains-blind"
        else:
            name = names[(len(set(plain)) == 1, any(r.parsed != o.parsed for r, o in compared))]
        counts[name] += 1
        correct[name] += [bool(r.correct) for r, _ in pairs]
    total = sum(counts.values())
    labels = [*names.values(), "Abstains-blind"]
    return {"n": total, **{name: counts[name] / total if total else None for name in labels},
            "accuracy": {name: float(np.mean(correct[name])) if correct[name] else None for name in labels}}


ABSTAINED, UNPARSED = "<abstained>", "<unparsed>"
ABSTAINING = ("refusal", "hedge")  # the answer kinds credited at chance
VOTING = ("multiple_choice", "open")


def votes_from(record, n_classes: int) -> bool:
    """Whether a record's answer names a class (module docstring: yes/no only with two classes)."""
    return record.kind in VOTING or (record.kind == "yes_no" and n_classes == 2)


def missing_vote(answer_kinds) -> str:
    """What a sample (or item) that names no class counts as: ABSTAINED when every answer abstained, else UNPARSED."""
    return ABSTAINED if all(k in ABSTAINING for k in answer_kinds) else UNPARSED


def sample_votes(image, n_classes: int) -> dict[str, str]:
    """Each sample's voted class under the image condition, or ABSTAINED / UNPARSED (module docstring)."""
    votes: dict[str, list[str]] = defaultdict(list)
    answers: dict[str, list[str]] = defaultdict(list)
    for r in image:
        if r.expected is None or not votes_from(r, n_classes):
            continue
        answers[r.sample_id].append(r.answer_kind)
        if r.class_pred is not None:
            votes[r.sample_id].append(r.class_pred)
    out = {}
    for sample, kinds_seen in answers.items():
        counts = Counter(votes.get(sample, []))
        if counts:
            top = max(counts.values())
            out[sample] = next(c for c in votes[sample] if counts[c] == top)  # ties: the earliest prompt's class
        else:
            out[sample] = missing_vote(kinds_seen)
    return out


def credit(labels, preds, n_classes: int) -> np.ndarray:
    """Per-sample credit of class answers (`stats.abstention_credit`): 1 right, 0 wrong, 1/K abstained, 0 unparsed.
    None in `preds` means abstained."""
    labels, preds = np.asarray(labels, dtype=object), np.asarray(preds, dtype=object)
    abstained = np.array([p is None or p == ABSTAINED for p in preds], dtype=bool)
    return abstention_credit(preds == labels, abstained, n_classes)


def class_scores(labels: list[str], preds: list[str | None], classes: list[str]) -> dict:
    """Accuracy and balanced accuracy (a sample counts right only when it names its class), and skill:
    chance-normalised balanced credit (`credit`), so a model that always abstains has skill 0, not below it."""
    labels, preds = np.array(labels, dtype=object), np.array(preds, dtype=object)
    chance = 1 / len(classes)
    present = [c for c in classes if (labels == c).any()]
    recalls = [float(np.mean(preds[labels == c] == c)) for c in present]
    balanced = float(np.mean(recalls)) if recalls else None
    named = np.array([p is not None and p not in (ABSTAINED, UNPARSED) for p in preds], dtype=bool)
    return {"accuracy": float(np.mean(preds == labels)) if len(labels) else None, "balanced_accuracy": balanced,
            "skill": balanced_skill(credit(labels, preds, len(classes)), labels, len(classes)) if present else None,
            "chance": chance,
            "answered_rate": float(np.mean(named)) if len(preds) else None,
            "abstained_rate": float(np.mean([p is None or p == ABSTAINED for p in preds])) if len(preds) else None,
            "unparsed_rate": float(np.mean([p == UNPARSED for p in preds])) if len(preds) else None,
            "n": int(len(labels))}


def classification(image, classes: list[str]) -> dict:
    """Class-level VQA scores: the per-sample vote, each class-naming prompt on its own, and skill per kind."""
    voted = sample_votes(image, len(classes))
    label_of = {r.sample_id: r.label for r in image}
    ids = sorted(voted)
    out = class_scores([label_of[i] for i in ids], [voted[i] for i in ids], classes)
    per_prompt = {}
    for prompt_id in sorted({r.prompt_id for r in image if votes_from(r, len(classes))}):
        rs = [r for r in image if r.prompt_id == prompt_id and r.expected is not None]
        per_prompt[prompt_id] = class_scores([r.label for r in rs], [_record_vote(r) for r in rs], classes)["skill"]
    out["skill_by_prompt"] = per_prompt
    out["skill_by_kind"] = skill_by_kind(image, classes)
    return out


def _record_vote(record) -> str:
    return record.class_pred if record.class_pred is not None else missing_vote([record.answer_kind])


def skill_by_kind(image, classes: list[str]) -> dict:
    """Skill per prompt kind: class votes of multiple-choice and of open prompts; yes/no answers against their
    expected answers (balanced over expected yes and no, chance 1/2, abstentions credited at 1/2)."""
    out = {}
    label_of = {r.sample_id: r.label for r in image}
    for kind in VOTING:
        voted = sample_votes([r for r in image if r.kind == kind], len(classes))
        if voted:
            out[kind] = class_scores([label_of[i] for i in voted], list(voted.values()), classes)["skill"]
    yes_no = [r for r in image if r.kind == "yes_no" and r.expected in ("yes", "no")]
    if yes_no:
        preds = [r.parsed if r.answer_kind == "answer" else missing_vote([r.answer_kind]) for r in yes_no]
        out["yes_no"] = class_scores([r.expected for r in yes_no], preds, ["yes", "no"])["skill"]
    return out
