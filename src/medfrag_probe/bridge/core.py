"""`bridge`: set probe skill against VQA skill per (model, data) and attribute the failure to vision or reasoning.

    from medfrag_probe.bridge import bridge
    records = bridge("probes/tiny-llava", "probes/vqa/tiny-llava", out="probes/bridge")
    records[0]["verdict"]          # vision-limited | reasoning-limited | both | sound | inconclusive

Inputs: probe output folders (results.jsonl + per-sample predictions) and VQA output folders (summary.json +
answers.jsonl), or parents holding several. A VQA run is joined to the probe results of the same model (tower +
projector fingerprint, else the model spec) and data (fingerprint, else spec), sample by sample on sample id.

Skills are chance-normalised balanced accuracies, `(bacc - 1/K) / (1 - 1/K)`, so a probe and a VQA answer are on one
scale: 0 is chance, 1 perfect. The VQA class of a sample is the majority of the classes its answers name under the
image condition; a sample with no answer is credited at chance (1/K) in the skill, so a model that never answers has
skill 0 and only confidently wrong answers go below it; a sample whose answers could not be read (unparsed) is
credited 0, and `answered_rate`, `abstained_rate` and `unparsed_rate` are reported. The per-sample table and
McNemar's test count a sample right only when it names the right class (`vqa.measures` states the one rule).

Probe points, both reported:
- `reads`: the vision point the language model reads (from the cache), mean pooling where present;
- `best`: chosen per outer fold by the linear probe's held-out score on that fold's training rows (inner CV or the
  validation split), never on test rows; each test row is predicted by the point chosen for its fold.
The verdict uses `best` (the most the vision side demonstrably holds), chosen among vision and projector points only:
language-model states already mix in the prompt. The stage curve shows every point, language-model points once per
pooling (`image`, `last`).

Verdict rule (defaults `seen_skill = 0.5`, `min_gap = 0.05`), from 95% patient-level paired bootstrap intervals. A
side is decided only when its interval lies wholly on one side of its threshold:
- seen: the lower bound of the probe skill CI (or of the VQA skill CI) is at least `seen_skill` -- the image
  representation carries the class signal; not seen: the upper bound of the probe skill CI is below `seen_skill`;
  otherwise undecided.
- lost: the lower bound of the gap CI (probe skill - VQA skill) exceeds `min_gap` -- the answer loses part of what
  the encoder holds; kept: the upper bound of the gap CI is below `min_gap`; otherwise undecided.
`reasoning-limited` = seen and lost; `sound` = seen and kept; `both` = not seen and lost; `vision-limited` = not seen
and not shown lost (the vision side failed; whether the answers lose even the little there is stays open unless
loss is shown). Every other combination is `inconclusive`: seen undecided, or seen with the gap undecided. An
inconclusive record names the undecided side (`undecided`) and, for it, how far from its threshold an effect must
lie to be decided at this n (`detectable_distance`, the CI half-width) and roughly how many samples would decide the
current estimate (`n_needed = n * (half-width / |estimate - threshold|)^2`, intervals narrowing as 1/sqrt(n)).
Attribution of the distance from a perfect answer: `vision_deficit = 1 - probe_skill`,
`reasoning_deficit = probe_skill - vqa_skill` (they sum to `1 - vqa_skill`).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._fs import atomic_write
from .._log import info
from ..errors import UserError
from ..probes.compare import read_predictions
from ..probes.metrics import bootstrap_weights, interval, record_inflation, stretch_replicates
from ..probes.run import point_order
from ..vqa.measures import ABSTAINED, UNPARSED, sample_votes

VERDICTS = ("vision-limited", "reasoning-limited", "both", "sound", "inconclusive")
MISSING_CODES = {ABSTAINED: -1, UNPARSED: -2}  # VQA class codes of samples that name no class
REPLICATES = 1000


@dataclass(frozen=True)
class BridgeRecord:
    """One (model, data): probe vs VQA skill, the gap with its paired CI, the verdict and the per-sample table."""

    model: str
    data: str
    task: str
    point: str
    pooling: str
    probe_skill: float
    probe_skill_ci: list | None
    vqa_skill: float
    vqa_skill_ci: list | None
    gap: float
    gap_ci: list | None
    vision_deficit: float
    reasoning_deficit: float
    verdict: str
    mcnemar_p: float
    recoverable_errors: int
    n: int
    table: dict
    reads_point: str
    reads_skill: float | None
    reads_skill_ci: list | None
    reads_gap: float | None
    reads_gap_ci: list | None
    best_points: dict
    description_skill: float | None
    description_point: str
    seen: bool | None = None  # None: undecided
    lost: bool | None = None
    undecided: list = field(default_factory=list)
    detectable_distance: dict = field(default_factory=dict)
    n_needed: dict = field(default_factory=dict)
    probe_auroc: float | None = None
    vqa_auroc: float | None = None  # scored mode only: the answers' option probabilities
    answered_rate: float | None = None
    abstained_rate: float | None = None
    unparsed_rate: float | None = None
    stages: list = field(default_factory=list)
    rule: dict = field(default_factory=dict)
    model_fingerprint: str = ""
    vision_fingerprint: str = ""
    data_fingerprint: str = ""
    samples: str = ""


@dataclass
class _Joined:
    """Probe and VQA per-sample predictions of one (model, data) on their shared samples."""

    ids: np.ndarray
    groups: np.ndarray
    labels: np.ndarray  # class indices
    classes: list[str]
    probe_pred: np.ndarray
    vqa_pred: np.ndarray  # class index, -1 when unanswered
    weights: np.ndarray
    probe_inflation: float = 1.0  # the probe interval's design-effect widening (`probes.metrics.inflation`)


def bridge(probes, vqa, *, out: str | Path = "probes/bridge", probe: str = "linear", seen_skill: float = 0.5,
           min_gap: float = 0.05, pairs=(), order=None, replicates: int = REPLICATES,
           figures: bool = True) -> list[dict]:
    """Join probe results and VQA answers; write bridge.jsonl, stages.csv, pairs.jsonl and figures under `out`.

    `probes` / `vqa`: a folder or a list of folders. `pairs`: (generalist, medical) model specs compared per data.
    `order`: data specs in ladder order (default: order of first appearance).
    """
    runs = find_vqa_runs(vqa)
    results = read_probe_results(probes)
    out = Path(out)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    rule = {"seen_skill": seen_skill, "min_gap": min_gap, "probe": probe, "replicates": replicates}
    records, joined = [], {}
    for run in runs:
        matched = match_results(results, run, probe=probe)
        if not matched:
            info(f"bridge: no {probe} probe results for {run['summary']['model']} on {run['summary']['data']}; "
                 "skipped")
            continue
        record, join = _bridge_one(run, matched, out=out, rule=rule)
        records.append(record)
        joined[(record.model, record.data)] = join
        info(f"bridge {record.model} on {record.data}: probe skill {record.probe_skill:.3f}, VQA skill "
             f"{record.vqa_skill:.3f}, gap {record.gap:+.3f} {_fmt(record.gap_ci)} -> {record.verdict}")
    if not records:
        raise UserError("bridge found no VQA run with matching probe results (same model and data); "
                        f"VQA runs: {', '.join(r['summary']['model'] + ' on ' + r['summary']['data'] for r in runs)}")
    pair_rows = paired_deltas(records, joined, pairs, replicates=replicates)
    _write(records, pair_rows, out)
    if figures:
        from .figures import bridge_figures

        bridge_figures([asdict(r) for r in records], out, order=order)
    return [asdict(r) for r in records]


def _fmt(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "[n/a]"


def _folders(paths) -> list[Path]:
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    for path in paths:
        if not Path(path).is_dir():
            raise UserError(f"{path} is not a folder")
    return [Path(p) for p in paths]


def find_vqa_runs(paths) -> list[dict]:
    """Every VQA output folder (with summary.json and answers.jsonl) in or under `paths`."""
    runs, folders = [], _folders(paths)
    for root in folders:
        for summary in sorted([root / "summary.json", *root.glob("*/summary.json"), *root.glob("*/*/summary.json")]):
            if summary.is_file() and (summary.parent / "answers.jsonl").is_file():
                runs.append({"dir": summary.parent, "summary": json.loads(summary.read_text())})
    if not runs:
        raise UserError(f"no VQA results (summary.json + answers.jsonl) in {', '.join(map(str, folders))}; "
                        "run `medfrag-probe vqa` first")
    return runs


def read_probe_results(paths) -> list[dict]:
    """Probe records of every results.jsonl in or under `paths`, with their predictions paths resolved."""
    rows = []
    for root in _folders(paths):
        for path in sorted({root / "results.jsonl", *root.glob("*/results.jsonl")}):
            if not path.is_file() or path.parent.name == "description":
                continue
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                rec["predictions"] = str(_resolve_predictions(rec.get("predictions", ""), path.parent))
                rows.append(rec)
    if not rows:
        raise UserError(f"no probe results (results.jsonl) in {paths}; run `medfrag-probe probe` first")
    return rows


def _resolve_predictions(path: str, folder: Path) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    return folder / "predictions" / candidate.name  # the results folder was moved or read from elsewhere


def match_results(results: list[dict], run: dict, *, probe: str) -> list[dict]:
    """Probe records of the VQA run's data (fingerprint, else spec) and model: the same model spec when any result
    has it, else the same tower + projector fingerprint (a checkpoint read from another path). Two models that share
    tower and projector (a base and its LM-only fine-tune) keep their own results."""
    s = run["summary"]

    def same(rec, key, fallback):
        if rec.get(key) and s.get(key):
            return rec[key] == s[key]
        return rec.get(fallback) == s.get(fallback)

    candidates = [r for r in results if r["probe"] == probe and same(r, "data_fingerprint", "data")]
    by_spec = [r for r in candidates if r.get("model") == s.get("model")]
    if by_spec:
        return by_spec
    fingerprint = s.get("model_fingerprint")
    return [r for r in candidates if fingerprint and r.get("model_fingerprint") == fingerprint]


def read_answers(folder: Path) -> list:
    """answers.jsonl as light records (attribute access)."""
    from types import SimpleNamespace

    with (folder / "answers.jsonl").open() as fh:
        return [SimpleNamespace(**json.loads(line)) for line in fh]


def _bridge_one(run: dict, matched: list[dict], *, out: Path, rule: dict) -> tuple[BridgeRecord, dict]:
    summary = run["summary"]
    answers = [r for r in read_answers(run["dir"]) if r.condition == "image"]
    vqa_class = sample_votes(answers, len(summary.get("classes") or {r.label for r in answers}))
    rename = summary.get("class_map", {})
    reads_point = summary.get("reads_point") or matched[0].get("reads_point", "")
    reads = _reads_result(matched, reads_point)
    best_pred, best_points = select_best(matched, fallback=reads)
    join = _join(best_pred, vqa_class, rename, replicates=rule["replicates"],
                 inflation=best_pred.get("inflation", 1.0))
    scores = _paired(join)
    table, p_value = mcnemar(join)
    verdict, evidence = decide(scores, n=len(join.ids), seen_skill=rule["seen_skill"], min_gap=rule["min_gap"])
    reads_scores = None
    if reads is not None:
        reads_join = _join(read_predictions(reads["predictions"]), vqa_class, rename, replicates=rule["replicates"],
                           inflation=record_inflation(reads))
        reads_scores = _paired(reads_join)
    description = _description(run)
    name = f"{_slug(summary['model'])}__{_slug(summary['data'])}"
    samples = out / "samples" / f"{name}.csv"
    _write_samples(join, samples)
    record = BridgeRecord(
        model=summary["model"], data=summary["data"], task=summary.get("task", ""),
        point=Counter(best_points.values()).most_common(1)[0][0].split("/")[0], pooling=_pooling(best_points),
        probe_skill=scores["probe"], probe_skill_ci=scores["probe_ci"], vqa_skill=scores["vqa"],
        vqa_skill_ci=scores["vqa_ci"], gap=scores["gap"], gap_ci=scores["gap_ci"],
        vision_deficit=1 - scores["probe"], reasoning_deficit=scores["gap"], verdict=verdict, mcnemar_p=p_value,
        recoverable_errors=table["probe_right_vqa_wrong"], n=len(join.ids), table=table, reads_point=reads_point,
        **evidence,
        probe_auroc=_auroc(best_pred, join), vqa_auroc=(summary.get("scored") or {}).get("auroc"),
        answered_rate=float(np.mean(join.vqa_pred >= 0)), abstained_rate=float(np.mean(join.vqa_pred == -1)),
        unparsed_rate=float(np.mean(join.vqa_pred == -2)),
        reads_skill=reads_scores["probe"] if reads_scores else None,
        reads_skill_ci=reads_scores["probe_ci"] if reads_scores else None,
        reads_gap=reads_scores["gap"] if reads_scores else None,
        reads_gap_ci=reads_scores["gap_ci"] if reads_scores else None, best_points=best_points,
        description_skill=description[1], description_point=description[0],
        stages=stage_curve(matched, summary, vqa=scores), rule=rule,
        model_fingerprint=summary.get("model_fingerprint", ""),
        vision_fingerprint=summary.get("vision_fingerprint") or matched[0].get("vision_fingerprint", ""),
        data_fingerprint=summary.get("data_fingerprint", ""), samples=str(samples))
    return record, join


def _auroc(pred: dict, join: _Joined) -> float | None:
    """The selected probe's AUROC on the joined samples (the scale of the scored answers' AUROC)."""
    from ..probes.metrics import auroc

    rows = np.isin(pred["ids"], join.ids)
    return auroc(pred["labels"][rows], pred["proba"][rows], len(join.classes))


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


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text).strip("-")[:80]


def _pooling(best_points: dict) -> str:
    return Counter(v.split("/")[1].split(" ")[0] for v in best_points.values()).most_common(1)[0][0]


def _reads_result(matched: list[dict], reads_point: str) -> dict | None:
    at = [r for r in matched if r["point"] == reads_point]
    if not at:
        return None
    return next((r for r in at if r["pooling"] == "mean"), at[0])


def select_best(matched: list[dict], *, fallback: dict | None = None) -> tuple[dict, dict]:
    """Out-of-fold predictions where each fold's rows come from the point with the best held-out (training-side)
    score on that fold; returns the assembled predictions and {fold: "point/pooling"}. Without held-out scores (too
    few patients per class for inner CV) nothing is selected: `fallback` (the read point) is used for every fold."""
    # the encoder's side only (vision points and projector): language-model states already mix in the prompt
    scored = [r for r in matched if not r["point"].startswith("lm.")
              and any(v is not None for v in r.get("hyper", {}).get("val_score") or [])]
    if not scored:
        chosen = fallback or max((r for r in matched if not r["point"].startswith("lm.")),
                                 key=lambda r: point_order(r["point"]), default=None)
        if chosen is None:
            raise UserError("no vision or projector probe results to compare with the answers")
        preds = read_predictions_with_folds(chosen["predictions"])
        preds["inflation"] = record_inflation(chosen)
        return preds, {"all": f"{chosen['point']}/{chosen['pooling']} (no held-out scores: not selected)"}
    preds = {id(r): read_predictions_with_folds(r["predictions"]) for r in scored}
    base = preds[id(scored[0])]
    folds = sorted(set(base["fold"].tolist()))
    proba = np.full_like(base["proba"], np.nan)
    chosen = {}
    inflation = 1.0  # the widest of the chosen results' (each fold's rows come from one of them)
    for fold in folds:
        best = max(scored, key=lambda r: (_val(r, fold), -point_order(r["point"])[0]))
        chosen[str(fold)] = f"{best['point']}/{best['pooling']}"
        inflation = max(inflation, record_inflation(best))
        p = preds[id(best)]
        if not np.array_equal(p["ids"], base["ids"]):
            raise UserError(f"probe predictions {best['predictions']} list other samples than "
                            f"{scored[0]['predictions']}")
        rows = base["fold"] == fold
        proba[rows] = p["proba"][rows]
    return {**base, "proba": proba, "inflation": inflation}, chosen


def _val(record: dict, fold: int) -> float:
    scores = record["hyper"]["val_score"]
    value = scores[fold] if 0 <= fold < len(scores) else None
    return -np.inf if value is None else float(value)


def read_predictions_with_folds(path: str) -> dict:
    """A predictions CSV as arrays, with its fold column."""
    data = read_predictions(path)
    with open(path, newline="") as fh:
        data["fold"] = np.array([int(r["fold"]) for r in csv.DictReader(fh)])
    return data


def _join(pred: dict, vqa_class: dict, rename: dict, *, replicates: int, inflation: float = 1.0) -> _Joined:
    classes = [rename.get(c, c) for c in pred["classes"]]
    index = {c: k for k, c in enumerate(classes)}
    keep = np.array([i in vqa_class for i in pred["ids"]])
    if not keep.any():
        raise UserError("the probe predictions and the VQA answers share no sample id; were they made on the same "
                        "data?")
    ids = pred["ids"][keep]
    unknown = {c for c in vqa_class.values() if c not in MISSING_CODES and c not in index}
    if unknown:
        raise UserError(f"VQA classes {sorted(unknown)} are not among the probe's classes {classes}")
    vqa_pred = np.array([MISSING_CODES.get(vqa_class[i], index.get(vqa_class[i])) for i in ids])
    groups = pred["groups"][keep]
    return _Joined(ids=ids, groups=groups, labels=pred["labels"][keep], classes=classes,
                   probe_pred=pred["proba"][keep].argmax(1), vqa_pred=vqa_pred,
                   weights=bootstrap_weights(groups, replicates=replicates), probe_inflation=inflation)


def balanced_skill(correct: np.ndarray, labels: np.ndarray, n_classes: int, weights: np.ndarray | None = None):
    """Skill of balanced accuracy (mean per-class recall, chance-normalised); per bootstrap replicate when
    `weights` (R, n) is given."""
    w = np.ones((1, len(labels))) if weights is None else weights
    recalls = []
    for k in range(n_classes):
        rows = labels == k
        if rows.any():
            den = w[:, rows].sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                recalls.append(np.where(den > 0, (w[:, rows] * correct[rows]).sum(1) / den, np.nan))
    bacc = np.nanmean(np.stack(recalls), axis=0)
    chance = 1 / n_classes
    value = (bacc - chance) / (1 - chance)
    return float(value[0]) if weights is None else value


def _paired(join: _Joined) -> dict:
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
    """1 right, 0 wrong, 1/K abstained (-1), 0 unparsed (-2): the rule of `vqa.measures.credit`."""
    return np.where(pred == -1, 1.0 / n_classes, (pred == labels).astype(float))


def mcnemar(join: _Joined) -> tuple[dict, float]:
    """The 2x2 of probe-correct x VQA-correct and McNemar's exact (binomial) two-sided p-value."""
    from scipy.stats import binomtest

    probe_ok = join.probe_pred == join.labels
    vqa_ok = join.vqa_pred == join.labels
    table = {"both_right": int((probe_ok & vqa_ok).sum()), "probe_right_vqa_wrong": int((probe_ok & ~vqa_ok).sum()),
             "probe_wrong_vqa_right": int((~probe_ok & vqa_ok).sum()), "both_wrong": int((~probe_ok & ~vqa_ok).sum())}
    discordant = table["probe_right_vqa_wrong"] + table["probe_wrong_vqa_right"]
    p_value = 1.0 if discordant == 0 else float(binomtest(table["probe_right_vqa_wrong"], discordant, 0.5).pvalue)
    return table, p_value


def _description(run: dict) -> tuple[str, float | None]:
    """The description prompt chosen on its inner (training-side) score, never its test skill."""
    from ..probes.select import pick

    points = run["summary"].get("description", {}).get("points", [])
    chosen = pick([{**p, "pooling": "mean", "hyper": {"val_score": [p.get("inner_score")]}} for p in points])
    return (chosen["point"], chosen.get("skill")) if chosen else ("", None)


def stage_curve(matched: list[dict], summary: dict, *, vqa: dict) -> list[dict]:
    """Skill along the pipeline: vision points -> projector -> language-model points -> description -> answer.

    Each probe point contributes the pooling chosen on inner (training-side) scores (`probes.select.pick`), never
    on test scores; every value carries its 95% CI."""
    from ..probes.select import pick

    by_key: dict[str, list[dict]] = {}
    for r in matched:
        key = f"{r['point']}/{r['pooling']}" if r["point"].startswith("lm.") else r["point"]  # image and last apart
        by_key.setdefault(key, []).append(r)
    chosen = {key: pick(rs) for key, rs in by_key.items()}
    ranked = sorted(chosen.items(), key=lambda kv: (point_order(kv[1]["point"]), kv[1]["pooling"]))
    stages = [{"stage": _stage_of(r["point"]), "point": key, "pooling": r["pooling"], "skill": r["skill"],
               "skill_ci": r.get("skill_ci")} for key, r in ranked]
    for point in summary.get("description", {}).get("points", []):
        stages.append({"stage": "description", "point": point["point"], "pooling": "mean", "skill": point["skill"],
                       "skill_ci": point.get("skill_ci")})
    stages.append({"stage": "answer", "point": "answer", "pooling": "vote", "skill": vqa["vqa"],
                   "skill_ci": vqa["vqa_ci"]})
    return stages


def _stage_of(point: str) -> str:
    if point.startswith("lm."):
        return "language"
    return "projector" if point.startswith("projector") else "vision"


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


def _delta(a: BridgeRecord, b: BridgeRecord, ja: _Joined, jb: _Joined, *, replicates: int) -> dict:
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


def _write_samples(join: _Joined, path: Path) -> None:
    names = {**dict(enumerate(join.classes)), **{code: name for name, code in MISSING_CODES.items()}}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["sample_id", "group", "label", "probe_pred", "vqa_pred", "probe_correct", "vqa_correct"])
    for i in range(len(join.ids)):
        vqa = names[join.vqa_pred[i]]
        writer.writerow([join.ids[i], join.groups[i], names[join.labels[i]], names[join.probe_pred[i]], vqa,
                         int(join.probe_pred[i] == join.labels[i]), int(join.vqa_pred[i] == join.labels[i])])
    atomic_write(path, buffer.getvalue())


def _write(records: list[BridgeRecord], pairs: list[dict], out: Path) -> None:
    atomic_write(out / "bridge.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in records))
    atomic_write(out / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
    lines = ["model,data,stage,point,pooling,skill,skill_low,skill_high"]
    for r in records:
        for s in r.stages:
            ci = s.get("skill_ci") or [None, None]
            lines.append(",".join(str(v) for v in (r.model, r.data, s["stage"], s["point"], s["pooling"],
                                                    s["skill"], ci[0], ci[1])))
    atomic_write(out / "stages.csv", "\n".join(lines) + "\n")
