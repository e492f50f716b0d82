"""`bridge`: set probe skill against VQA skill per (model, data) and attribute the failure to vision or reasoning.

    from medfrag_probe import bridge
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
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from .._fs import atomic_write
from .._log import info
from ..answering.measures import sample_votes
from ..artifacts.answers import VQARun, find_runs
from ..artifacts.bridge import SAMPLES, BridgeRecord, write_bridge
from ..artifacts.interventions import find_interventions
from ..artifacts.probes import Predictions, ProbeResult, find_results, read_predictions
from ..errors import UserError
from ..points import is_language, point_order, stage_of
from ..probes.metrics import record_inflation
from ..probes.select import pick
from ..specs import safe_name
from ..stats import auroc
from .join import MISSING_CODES, Joined, join, match_results, reads_result, select_best
from .scores import decide, mcnemar, paired_deltas, paired_skills

VERDICTS = ("vision-limited", "reasoning-limited", "both", "sound", "inconclusive")
REPLICATES = 1000


def bridge(probes, vqa, *, out: str | Path = "probes/bridge", probe: str = "linear", seen_skill: float = 0.5,
           min_gap: float = 0.05, pairs=(), order=None, replicates: int = REPLICATES,
           figures: bool = True, interventions=None) -> list[dict]:
    """Join probe results and VQA answers; write bridge.jsonl, stages.csv, pairs.jsonl and figures under `out`;
    return the bridge records as dicts.

    `probes` / `vqa`: a folder or a list of folders. `pairs`: (generalist, medical) model specs compared per data.
    `order`: data specs in ladder order (default: order of first appearance). `interventions`: folder(s) of
    `intervene` outputs; each record of the same model and data gains `causal_effect`, `causal_ci`,
    `patch_follow_rate`, `uses_probed_signal` and `causal_note` (does the answer depend on the probed signal?).
    """
    if not 0 <= seen_skill <= 1 or not -1 <= min_gap <= 1:
        raise UserError(f"seen_skill must lie in [0, 1] and min_gap in [-1, 1]; got {seen_skill} and {min_gap}")
    if replicates < 10:
        raise UserError(f"replicates must be >= 10, got {replicates}")
    runs = find_runs(vqa)
    results = find_results(probes)
    causal = find_interventions(interventions) if interventions is not None else []
    out = Path(out)
    (out / SAMPLES).mkdir(parents=True, exist_ok=True)
    rule = {"seen_skill": seen_skill, "min_gap": min_gap, "probe": probe, "replicates": replicates}
    records, joined = [], {}
    for run in runs:
        matched = match_results(results, run, probe=probe)
        if not matched:
            info(f"bridge: no {probe} probe results for {run.summary['model']} on {run.summary['data']}; skipped")
            continue
        record, joint = _bridge_one(run, matched, out=out, rule=rule)
        record = _with_intervention(record, causal)
        records.append(record)
        joined[(record.model, record.data)] = joint
        info(f"bridge {record.model} on {record.data}: probe skill {record.probe_skill:.3f}, VQA skill "
             f"{record.vqa_skill:.3f}, gap {record.gap:+.3f} {_fmt(record.gap_ci)} -> {record.verdict}")
    if not records:
        raise UserError("bridge found no VQA run with matching probe results (same model and data); VQA runs: "
                        + ", ".join(f"{r.summary['model']} on {r.summary['data']}" for r in runs))
    pair_rows = paired_deltas(records, joined, pairs, replicates=replicates)
    write_bridge(out, records, pair_rows)
    if figures:
        from .figures import bridge_figures

        bridge_figures([r.record() for r in records], out, order=order)
    return [r.record() for r in records]


def _with_intervention(record: BridgeRecord, found: list) -> BridgeRecord:
    """The record with the causal check of the same model and data joined (fingerprints, else specs)."""
    def same(a: str, b: str, spec_a: str, spec_b: str) -> bool:
        return a == b if a and b else spec_a == spec_b

    for r in found:
        if same(r.model_fingerprint, record.model_fingerprint, r.model, record.model) and \
                same(r.data_fingerprint, record.data_fingerprint, r.data, record.data):
            return replace(record, causal_effect=r.causal_effect, causal_ci=r.causal_ci,
                           random_effect=r.random_effect, random_ci=r.random_ci,
                           patch_follow_rate=r.patch_follow_rate, patch_follow_ci=r.patch_follow_ci,
                           uses_probed_signal=r.uses_probed_signal, causal_note=r.conclusion)
    if found:
        info(f"bridge: no intervention results for {record.model} on {record.data}")
    return record


def _fmt(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "[n/a]"


def _bridge_one(run: VQARun, matched: list[ProbeResult], *, out: Path, rule: dict) -> tuple[BridgeRecord, Joined]:
    summary = run.summary
    answers = [r for r in run.answers() if r.condition == "image"]
    vqa_class = sample_votes(answers, len(summary.get("classes") or {r.label for r in answers}))
    rename = summary.get("class_map", {})
    reads_point = summary.get("reads_point") or matched[0].reads_point
    reads = reads_result(matched, reads_point)
    best_pred, best_points, inflation = select_best(matched, fallback=reads)
    joint = join(best_pred, vqa_class, rename, replicates=rule["replicates"], inflation=inflation)
    scores = paired_skills(joint)
    table, p_value = mcnemar(joint)
    verdict, evidence = decide(scores, n=len(joint.ids), seen_skill=rule["seen_skill"], min_gap=rule["min_gap"])
    reads_scores = None
    if reads is not None:
        reads_scores = paired_skills(join(read_predictions(reads.predictions), vqa_class, rename,
                                          replicates=rule["replicates"], inflation=record_inflation(reads)))
    description = _description(run)
    samples = out / SAMPLES / f"{_slug(summary['model'])}__{_slug(summary['data'])}.csv"
    _write_samples(joint, samples)
    record = BridgeRecord(
        model=summary["model"], data=summary["data"], task=summary.get("task", ""),
        point=Counter(best_points.values()).most_common(1)[0][0].split("/")[0], pooling=_pooling(best_points),
        probe_skill=scores["probe"], probe_skill_ci=scores["probe_ci"], vqa_skill=scores["vqa"],
        vqa_skill_ci=scores["vqa_ci"], gap=scores["gap"], gap_ci=scores["gap_ci"],
        vision_deficit=1 - scores["probe"], reasoning_deficit=scores["gap"], verdict=verdict, mcnemar_p=p_value,
        recoverable_errors=table["probe_right_vqa_wrong"], n=len(joint.ids), table=table, reads_point=reads_point,
        **evidence,
        probe_auroc=_auroc(best_pred, joint), vqa_auroc=(summary.get("scored") or {}).get("auroc"),
        answered_rate=float(np.mean(joint.vqa_pred >= 0)), abstained_rate=float(np.mean(joint.vqa_pred == -1)),
        unparsed_rate=float(np.mean(joint.vqa_pred == -2)),
        reads_skill=reads_scores["probe"] if reads_scores else None,
        reads_skill_ci=reads_scores["probe_ci"] if reads_scores else None,
        reads_gap=reads_scores["gap"] if reads_scores else None,
        reads_gap_ci=reads_scores["gap_ci"] if reads_scores else None, best_points=best_points,
        description_skill=description[1], description_point=description[0],
        stages=stage_curve(matched, summary, vqa=scores), rule=rule,
        model_fingerprint=summary.get("model_fingerprint", ""),
        vision_fingerprint=summary.get("vision_fingerprint") or matched[0].vision_fingerprint,
        data_fingerprint=summary.get("data_fingerprint", ""), samples=str(samples))
    return record, joint


def _auroc(pred: Predictions, joint: Joined) -> float | None:
    """The selected probe's AUROC on the joined samples (the scale of the scored answers' AUROC)."""
    rows = np.isin(pred.ids, joint.ids)
    return auroc(pred.labels[rows], pred.proba[rows], len(joint.classes))


def _slug(text: str) -> str:
    return safe_name(text, keep="-.", limit=80)


def _pooling(best_points: dict) -> str:
    return Counter(v.split("/")[1].split(" ")[0] for v in best_points.values()).most_common(1)[0][0]


def _description(run: VQARun) -> tuple[str, float | None]:
    """The description prompt chosen on its inner (training-side) score, never its test skill."""
    points = run.summary.get("description", {}).get("points", [])
    chosen = pick([{**p, "pooling": "mean", "hyper": {"val_score": [p.get("inner_score")]}} for p in points])
    return (chosen["point"], chosen.get("skill")) if chosen else ("", None)


def stage_curve(matched: list[ProbeResult], summary: dict, *, vqa: dict) -> list[dict]:
    """Skill along the pipeline: vision points -> projector -> language-model points -> description -> answer.

    Each probe point contributes the pooling chosen on inner (training-side) scores (`probes.select.pick`), never
    on test scores; every value carries its 95% CI."""
    by_key: dict[str, list[ProbeResult]] = {}
    for r in matched:
        key = f"{r['point']}/{r['pooling']}" if is_language(r["point"]) else r["point"]  # image and last apart
        by_key.setdefault(key, []).append(r)
    chosen = {key: pick(rs) for key, rs in by_key.items()}
    ranked = sorted(chosen.items(), key=lambda kv: (point_order(kv[1]["point"]), kv[1]["pooling"]))
    stages = [{"stage": stage_of(r["point"]), "point": key, "pooling": r["pooling"], "skill": r["skill"],
               "skill_ci": r.get("skill_ci")} for key, r in ranked]
    for point in summary.get("description", {}).get("points", []):
        stages.append({"stage": "description", "point": point["point"], "pooling": "mean", "skill": point["skill"],
                       "skill_ci": point.get("skill_ci")})
    stages.append({"stage": "answer", "point": "answer", "pooling": "vote", "skill": vqa["vqa"],
                   "skill_ci": vqa["vqa_ci"]})
    return stages


def _write_samples(join: Joined, path: Path) -> None:
    names = {**dict(enumerate(join.classes)), **{code: name for name, code in MISSING_CODES.items()}}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["sample_id", "group", "label", "probe_pred", "vqa_pred", "probe_correct", "vqa_correct"])
    for i in range(len(join.ids)):
        vqa = names[join.vqa_pred[i]]
        writer.writerow([join.ids[i], join.groups[i], names[join.labels[i]], names[join.probe_pred[i]], vqa,
                         int(join.probe_pred[i] == join.labels[i]), int(join.vqa_pred[i] == join.labels[i])])
    atomic_write(path, buffer.getvalue())
