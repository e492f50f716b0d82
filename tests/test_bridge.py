"""Bridge: verdicts on constructed cases with known answers, point selection, pairs, figures, end to end."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest

from medfrag_probe.answering.importer import import_answers
from medfrag_probe.attribution import VERDICTS, bridge
from medfrag_probe.cache import write_embeddings
from medfrag_probe.data.sources import open_source
from medfrag_probe.errors import UserError
from medfrag_probe.probes import probe

TASK = "synth-brain-mri"
BRIDGE_KEYS = {"model", "data", "point", "probe_skill", "vqa_skill", "gap", "gap_ci", "vision_deficit",
               "reasoning_deficit", "verdict", "mcnemar_p", "recoverable_errors"}


def write_cache(path, source, points: dict[str, np.ndarray], *, model: str, vision: str = "tower-a"):
    """A cache with the minimal schema plus the identity attributes extract writes."""
    samples = source.samples
    write_embeddings(path, ids=[s.id for s in samples], labels=[s.label for s in samples], classes=source.classes,
                     groups=[s.group for s in samples],
                     embeddings={name: X.astype(np.float32) for name, X in points.items()},
                     attrs=dict(model=model, data=source.spec, data_fingerprint=source.fingerprint(),
                                model_fingerprint=f"fp-{model}", vision_fingerprint=vision,
                                reads_point="vision.block.01"))


def embeddings(source, separation: float, rng, dim: int = 16) -> np.ndarray:
    labels = np.array([s.label for s in source.samples])
    X = rng.normal(size=(len(labels), dim))
    X[np.arange(len(labels)), labels] += separation
    return X


def write_answers(path, source, *, correct: float, rng):
    """Multiple-choice and open answers, right with probability `correct`, otherwise a random other class."""
    names = list(source.classes)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_id", "prompt_id", "response"])
        for s in source.samples:
            right = rng.random() < correct
            k = s.label if right else rng.choice([c for c in range(len(names)) if c != s.label])
            writer.writerow([s.id, "mc-diagnosis-fwd", f"The answer is ({chr(65 + k)})."])
            writer.writerow([s.id, "open-diagnosis", f"This looks like {names[k].replace('_', ' ')}."])


def case(tmp_path, *, seed: int, separation: float, correct: float, model: str = "fake-vlm", n: int = 160,
         extra: dict | None = None):
    source = open_source(f"synth:brain-mri?n={n}&seed={seed}")
    rng = np.random.default_rng(seed)
    cache = tmp_path / f"{model}.h5"
    write_cache(cache, source, {"vision.block.00": rng.normal(size=(n, 16)),
                                "vision.block.01": embeddings(source, separation, rng), **(extra or {})}, model=model)
    probe([cache], probes=("linear",), out=tmp_path / "probes", replicates=300, controls=False, seed=seed,
          figures=False)
    write_answers(tmp_path / f"{model}.csv", source, correct=correct, rng=rng)
    import_answers(tmp_path / f"{model}.csv", source, TASK, out=tmp_path / "vqa" / model, model=model)
    return source


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("separation, correct, n, verdict", [
    (6.0, 0.25, 160, "reasoning-limited"),  # the encoder separates the classes; the answers are random
    (0.0, 0.25, 160, "vision-limited"),  # noise embeddings, random answers
    (6.0, 1.0, 160, "sound"),  # both perfect: the gap is 0 with a tight interval
    (0.7, 0.0, 160, "both"),  # a weak signal (probe skill ~0.15) that the answers lose entirely
    (6.0, 0.925, 40, "inconclusive"),  # a real gap (~0.1) that 40 samples cannot tell from min_gap
    (6.0, 0.925, 400, "reasoning-limited"),  # the same process at 400 samples
])
def test_verdicts_on_constructed_cases_hold_across_seeds(tmp_path, seed, separation, correct, n, verdict):
    case(tmp_path, seed=seed, separation=separation, correct=correct, n=n)
    (record,) = bridge(tmp_path / "probes", tmp_path / "vqa", out=tmp_path / "bridge", replicates=300,
                       figures=False)
    assert record["verdict"] == verdict, {k: record[k] for k in ("probe_skill", "probe_skill_ci", "vqa_skill",
                                                                 "gap", "gap_ci")}
    assert BRIDGE_KEYS <= set(record)
    assert record["vision_deficit"] == pytest.approx(1 - record["probe_skill"])
    assert record["reasoning_deficit"] == pytest.approx(record["probe_skill"] - record["vqa_skill"])
    assert record["gap_ci"][0] <= record["gap"] <= record["gap_ci"][1]
    table = record["table"]
    assert sum(table.values()) == record["n"] == n
    assert record["recoverable_errors"] == table["probe_right_vqa_wrong"]
    if verdict == "reasoning-limited":
        assert record["mcnemar_p"] < 1e-3 and record["recoverable_errors"] > 0.05 * n
    if verdict == "inconclusive":  # the undecided side, how far an effect must be to decide it, and the n that would
        assert record["undecided"] == ["gap"] and record["seen"] is True and record["lost"] is None
        assert 0 < record["detectable_distance"]["gap"] < 0.3
        assert record["n_needed"]["gap"] > n
    else:
        assert record["undecided"] == [] and record["n_needed"] == {}


@pytest.mark.parametrize("probe_ci, vqa_ci, gap_ci, verdict, undecided", [
    ([0.80, 0.95], [0.10, 0.30], [0.55, 0.75], "reasoning-limited", []),
    ([0.80, 0.95], [0.82, 0.96], [-0.04, 0.04], "sound", []),
    ([0.80, 0.95], [0.70, 0.90], [-0.02, 0.20], "inconclusive", ["gap"]),  # seen; the gap straddles min_gap
    ([0.30, 0.70], [0.00, 0.20], [0.20, 0.60], "inconclusive", ["probe_skill"]),  # seen straddles seen_skill
    ([0.30, 0.70], [0.55, 0.70], [-0.20, 0.02], "sound", []),  # the answers themselves show the signal was seen
    ([-0.10, 0.20], [-0.15, 0.15], [-0.10, 0.15], "vision-limited", []),
    ([0.10, 0.40], [-0.60, -0.30], [0.50, 0.90], "both", []),
    ([-0.10, 0.20], [-0.15, 0.15], [0.02, 0.30], "vision-limited", []),  # loss not shown: vision is what failed
])
def test_verdict_rule_on_hand_made_intervals(probe_ci, vqa_ci, gap_ci, verdict, undecided):
    from medfrag_probe.attribution.core import decide

    mid = [sum(c) / 2 for c in (probe_ci, vqa_ci, gap_ci)]
    scores = {"probe": mid[0], "probe_ci": probe_ci, "vqa": mid[1], "vqa_ci": vqa_ci, "gap": mid[2], "gap_ci": gap_ci}
    got, evidence = decide(scores, n=100, seen_skill=0.5, min_gap=0.05)
    assert (got, evidence["undecided"]) == (verdict, undecided)
    if undecided == ["gap"]:  # half-width 0.11, estimate 0.09 from 0.05: (0.11 / 0.04)^2 = 7.6 times the samples
        assert evidence["n_needed"]["gap"] == 757 and evidence["detectable_distance"]["gap"] == pytest.approx(0.11)


def test_best_point_is_chosen_on_training_rows_and_reads_point_is_reported(tmp_path):
    source = open_source("synth:brain-mri?n=160&seed=0")
    rng = np.random.default_rng(11)
    lm = {"lm.block.00/image": embeddings(source, 20.0, rng), "lm.block.00/last": rng.normal(size=(160, 16))}
    case(tmp_path, seed=0, separation=3.0, correct=0.25, extra=lm)
    (record,) = bridge(tmp_path / "probes", tmp_path / "vqa", out=tmp_path / "bridge", replicates=200,
                       figures=False)
    # never the noise point, and never a language-model point (even a perfect one): the encoder's side only
    assert set(record["best_points"].values()) == {"vision.block.01/mean"}
    assert record["point"] == "vision.block.01"
    assert record["reads_point"] == "vision.block.01" and record["reads_skill"] == pytest.approx(record["probe_skill"])
    stages = [(s["stage"], s["point"]) for s in record["stages"]]
    assert stages == [("vision", "vision.block.00"), ("vision", "vision.block.01"),
                      ("language", "lm.block.00/image"), ("language", "lm.block.00/last"), ("answer", "answer")]
    assert record["stages"][2]["skill"] > 0.95 > record["probe_skill"]


def test_the_score_that_picks_a_point_never_sees_test_rows(tmp_path):
    """Replacing the features of fold 0's test rows by noise leaves fold 0's selection score unchanged (it comes from
    inner CV on fold 0's training rows) while fold 0's test accuracy collapses."""
    source = open_source("synth:brain-mri?n=160&seed=5")
    X = embeddings(source, 4.0, np.random.default_rng(5))
    runs = []
    for name, features in (("clean", X), ("spoiled", None)):
        if features is None:
            folds = _folds(runs[0][1])
            features = X.copy()
            test0 = np.array([folds[s.id] == 0 for s in source.samples])
            features[test0] = np.random.default_rng(0).normal(size=(test0.sum(), X.shape[1]))
        write_cache(tmp_path / f"{name}.h5", source, {"vision.block.01": features}, model=name)
        (result,) = probe([tmp_path / f"{name}.h5"], probes=("linear",), out=tmp_path / name, replicates=50,
                          controls=False, figures=False)
        runs.append((result.hyper["val_score"], result.predictions))
    assert runs[0][0][0] == runs[1][0][0]
    assert runs[0][0][1:] != runs[1][0][1:]  # elsewhere those rows are training rows, and they do count
    assert _fold_accuracy(runs[0][1], 0) > 0.9 and _fold_accuracy(runs[1][1], 0) < 0.5


def _folds(predictions) -> dict[str, int]:
    return {r["sample_id"]: int(r["fold"]) for r in csv.DictReader(open(predictions))}


def _fold_accuracy(predictions, fold: int) -> float:
    rows = [r for r in csv.DictReader(open(predictions)) if int(r["fold"]) == fold]
    return float(np.mean([int(r["correct"]) for r in rows]))


def test_pairs_report_paired_deltas_and_flag_identical_towers(tmp_path):
    source = open_source("synth:brain-mri?n=160&seed=4")
    rng = np.random.default_rng(4)
    towers = {"generalist": (embeddings(source, 1.0, rng), "tower-a"),
              "medical": (embeddings(source, 6.0, rng), "tower-b")}
    towers["medical-lm"] = towers["medical"]  # an LM-only fine-tune of `medical`: the same tower
    for model, correct in (("generalist", 0.25), ("medical", 0.9), ("medical-lm", 0.5)):
        X, vision = towers[model]
        write_cache(tmp_path / f"{model}.h5", source, {"vision.block.01": X}, model=model, vision=vision)
        probe([tmp_path / f"{model}.h5"], probes=("linear",), out=tmp_path / "probes" / model, replicates=200,
              controls=False, figures=False)
        write_answers(tmp_path / f"{model}.csv", source, correct=correct, rng=rng)
        import_answers(tmp_path / f"{model}.csv", source, TASK, out=tmp_path / "vqa" / model, model=model)
    bridge(tmp_path / "probes", tmp_path / "vqa", out=tmp_path / "bridge",
           pairs=[("generalist", "medical"), ("medical-lm", "medical")], replicates=300)
    pair, same_tower = [json.loads(line) for line in (tmp_path / "bridge" / "pairs.jsonl").read_text().splitlines()]
    assert pair["identical_vision_tower"] is False and same_tower["identical_vision_tower"] is True
    assert pair["probe_delta"] > 0.4 and pair["probe_delta_ci"][0] > 0.3  # a far better tower
    assert pair["vqa_delta"] > 0.5 and pair["vqa_delta_ci"][0] > 0.4
    assert same_tower["vqa_delta"] > 0.3 and same_tower["vqa_delta_ci"][0] > 0.2
    for name in ("stage_curves", "probe_vs_vqa", "ladder"):
        assert (tmp_path / "bridge" / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "bridge" / "stages.csv").open()))
    assert {r["model"] for r in rows} == {"generalist", "medical", "medical-lm"}


def test_unmatched_inputs_get_clear_errors(tmp_path):
    case(tmp_path, seed=0, separation=6.0, correct=0.5)
    with pytest.raises(UserError, match="no VQA results"):
        bridge(tmp_path / "probes", tmp_path / "probes", out=tmp_path / "b")
    with pytest.raises(UserError, match="no probe results"):
        bridge(tmp_path / "vqa", tmp_path / "vqa", out=tmp_path / "b")
    with pytest.raises(UserError, match="pair model 'nobody'"):
        bridge(tmp_path / "probes", tmp_path / "vqa", out=tmp_path / "b", pairs=[("fake-vlm", "nobody")],
               figures=False)
    other = tmp_path / "other"
    source = open_source("synth:brain-mri?n=40&seed=9")
    write_answers(tmp_path / "o.csv", source, correct=1.0, rng=np.random.default_rng(0))
    import_answers(tmp_path / "o.csv", source, TASK, out=other, model="someone-else")
    with pytest.raises(UserError, match="no VQA run with matching probe results"):
        bridge(tmp_path / "probes", other, out=tmp_path / "b")


def test_verdict_names_are_the_documented_ones():
    assert VERDICTS == ("vision-limited", "reasoning-limited", "both", "sound", "inconclusive")


def test_end_to_end_tiny_vlm_extract_probe_vqa_bridge(tmp_path):
    """A tiny LLaVA on the easy synthetic task, through the four commands as a user runs them."""
    from medfrag_probe.cli import main

    data = "synth:brain-mri?n=48&difficulty=0.1"
    steps = [["extract", "--model", "tiny:llava", "--data", data, "--out", str(tmp_path / "c.h5")],
             ["probe", str(tmp_path / "c.h5"), "--probes", "linear", "--replicates", "200", "--no-controls",
              "--out", str(tmp_path / "probes")],
             ["vqa", "--model", "tiny:llava", "--data", data, "--task", TASK, "--conditions", "image,no-image",
              "--prompts", "mc-diagnosis,open-diagnosis,desc-detail", "--describe-tokens", "16",
              "--answer-mode", "score", "--out", str(tmp_path / "vqa")],
             ["bridge", "--probes", str(tmp_path / "probes"), "--vqa", str(tmp_path / "vqa"), "--out",
              str(tmp_path / "bridge"), "--replicates", "300"]]
    for argv in steps:
        with pytest.raises(SystemExit) as exit_info:
            main(["--quiet", *argv])
        assert exit_info.value.code == 0, argv
    (record,) = [json.loads(line) for line in (tmp_path / "bridge" / "bridge.jsonl").read_text().splitlines()]
    assert BRIDGE_KEYS <= set(record) and record["n"] == 48
    assert record["model"] == "tiny:llava" and record["reads_point"] == "vision.block.02"
    # scored multiple choice: the answers get an AUROC on the probe's scale, and the bridge reports both
    assert 0 <= record["vqa_auroc"] <= 1 and 0 <= record["probe_auroc"] <= 1
    assert record["answered_rate"] + record["abstained_rate"] + record["unparsed_rate"] == pytest.approx(1.0)
    # random tower and random language model: neither the probe nor the answers find the class
    assert record["probe_skill_ci"][1] < 0.5 and record["verdict"] == "vision-limited"
    assert record["answered_rate"] == 1.0  # a scored choice always names a class
    stages = [s["stage"] for s in record["stages"]]
    assert stages[0] == "vision" and stages[-2:] == ["description", "answer"] and "projector" in stages
    with open(record["samples"]) as fh:
        assert len(list(csv.DictReader(fh))) == 48
    for name in ("stage_curves", "probe_vs_vqa", "ladder"):
        assert (tmp_path / "bridge" / "figures" / f"{name}.png").stat().st_size > 5000


def test_models_sharing_a_tower_keep_their_own_probe_results(tmp_path):
    """A base model and its LM-only fine-tune have the same tower + projector fingerprint; each VQA run is joined to
    the probes of its own model spec, not to both."""
    source = open_source("synth:brain-mri?n=160&seed=6")
    rng = np.random.default_rng(6)
    for model, separation in (("base", 6.0), ("tuned", 0.0)):
        write_cache(tmp_path / f"{model}.h5", source, {"vision.block.01": embeddings(source, separation, rng)},
                    model=model)
        with h5py.File(tmp_path / f"{model}.h5", "a") as fh:
            fh.attrs["model_fingerprint"] = "shared"
        probe([tmp_path / f"{model}.h5"], probes=("linear",), out=tmp_path / "probes" / model, replicates=100,
              controls=False, figures=False)
        write_answers(tmp_path / f"{model}.csv", source, correct=0.25, rng=rng)
        import_answers(tmp_path / f"{model}.csv", source, TASK, out=tmp_path / "vqa" / model, model=model)
        summary = tmp_path / "vqa" / model / "summary.json"
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "model_fingerprint": "shared"}))
    records = {r["model"]: r for r in bridge(tmp_path / "probes", tmp_path / "vqa", out=tmp_path / "b",
                                             replicates=100, figures=False)}
    assert records["base"]["probe_skill"] > 0.9 and records["tuned"]["probe_skill"] < 0.3


def test_the_probes_design_effect_widens_its_interval_and_the_gap_interval(tmp_path):
    """The bridge widens the probe's replicates by the probe result's design effect (the answers' stay): the probe
    interval grows by the recorded factor about the estimate, and the gap interval grows with it."""
    from medfrag_probe.probes.metrics import inflation

    case(tmp_path, seed=0, separation=1.2, correct=0.6)
    results = tmp_path / "probes" / "results.jsonl"
    records = [json.loads(line) for line in results.read_text().splitlines()]

    def bridged(effect: dict, folder: str) -> dict:
        for r in records:
            r["design_effect"] = effect
        results.write_text("".join(json.dumps(r) + "\n" for r in records))
        return bridge(tmp_path / "probes", tmp_path / "vqa", out=tmp_path / folder, replicates=300, figures=False)[0]

    plain, wide = bridged({}, "b0"), bridged({"balanced_accuracy": 4.0}, "b1")
    factor = inflation(4.0, records[0]["permutations"])
    assert records[0]["permutations"] == 20 and factor == pytest.approx(2 * 2.0930 / 1.96, abs=1e-3)  # 2 t(19) / z
    assert wide["probe_skill"] == plain["probe_skill"] and wide["vqa_skill_ci"] == plain["vqa_skill_ci"]
    for side in (0, 1):
        assert abs(wide["probe_skill_ci"][side] - wide["probe_skill"]) == pytest.approx(
            factor * abs(plain["probe_skill_ci"][side] - plain["probe_skill"]), rel=1e-6)
    assert np.diff(wide["gap_ci"])[0] > 1.3 * np.diff(plain["gap_ci"])[0]
