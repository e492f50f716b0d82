"""`intervene`: ablating and patching the probe subspace of the projector tokens, on models whose answer is known
to use the image (the sound organism) or not (the reasoning-limited organism), and on directions absent from the
tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medfrag_probe import bridge, extract, intervene, probe, vqa
from medfrag_probe.errors import UserError
from medfrag_probe.intervention import closed_prompts, edited_tokens, leace
from medfrag_probe.models.loading import load_adapter


def _scores(adapter, images, shifts=None, prompts=("Which diagnosis best fits this brain MRI?",)):
    rows = [(k, q) for k in range(len(images)) for q in range(len(prompts))]  # image by image, as intervene asks
    inputs = adapter.chat_inputs([prompts[q] for _, q in rows], [images[k] for k, _ in rows])
    with edited_tokens(adapter, shifts, [k for k, _ in rows]):
        return np.array(adapter.option_scores(inputs, [["A", "B", "C", "D"]] * len(rows)))


def test_token_edits_reach_the_answers_and_a_zero_edit_changes_nothing(synth_images):
    adapter = load_adapter("tiny:llava", lm=True)
    images = synth_images[:4]
    width = adapter.model.config.text_config.hidden_size
    clean = _scores(adapter, images)
    assert np.array_equal(_scores(adapter, images, np.zeros((4, width))), clean)
    moved = _scores(adapter, images, np.random.default_rng(0).normal(0, 1, (4, width)))
    assert np.abs(moved - clean).max() > 1e-4


@pytest.mark.parametrize("arch", ["llava", "gemma3", "paligemma"])
def test_edits_under_shared_prefixes_equal_those_of_one_row_per_image(arch, synth_images):
    """Several prompts per image run the (edited) image once where the model shares prefixes; each image must still
    get its own shift, and the answers must be those of every row run on its own (PaliGemma shares nothing)."""
    adapter = load_adapter(f"tiny:{arch}", lm=True)
    images = synth_images[:3]
    prompts = ("Which diagnosis best fits this brain MRI?\nA. glioma\nB. meningioma\nC. none\nD. pituitary",
               "Is there a tumor? Answer A, B, C or D.")
    width = adapter.model.config.get_text_config().hidden_size
    shifts = np.random.default_rng(1).normal(0, 1, (3, width))
    shared = _scores(adapter, images, shifts, prompts)
    adapter.share_prefix = False
    try:
        alone = np.array([_scores(adapter, [image], shifts[k:k + 1], (prompt,))[0]
                          for k, image in enumerate(images) for prompt in prompts])
    finally:
        adapter.share_prefix = type(adapter).share_prefix
    assert np.allclose(shared, alone, atol=1e-4)
    assert np.abs(shared - _scores(adapter, images, None, prompts)).max() > 1e-4  # the shifts did reach the answers


@pytest.mark.parametrize("classes", [2, 4])
def test_leace_leaves_equal_class_means_and_no_linear_signal(classes):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(classes)
    labels = np.repeat(np.arange(classes), 150)
    mixing = rng.normal(size=(6, 20))  # a class code spread over 20 correlated dimensions
    x = rng.normal(size=(len(labels), 20)) + np.eye(classes, 6)[labels] @ mixing * 1.5
    mean, eraser, rank = leace(x, labels)
    erased = x - (x - mean) @ eraser.T
    assert rank == classes - 1
    means = np.array([erased[labels == k].mean(0) for k in range(classes)])
    assert np.abs(means - means.mean(0)).max() < 1e-6
    test = rng.permutation(len(labels))[:150]
    train = np.setdiff1d(np.arange(len(labels)), test)
    before = LogisticRegression(max_iter=2000).fit(x[train], labels[train]).score(x[test], labels[test])
    after = LogisticRegression(max_iter=2000).fit(erased[train], labels[train]).score(erased[test], labels[test])
    assert before > 0.9 and after < 1 / classes + 0.12


@pytest.mark.slow
def test_organisms_sound_uses_the_probed_signal_and_reasoning_and_vision_do_not(tmp_path):
    data = "synth:brain-mri?n=128&seed=3"
    records = {}
    for kind in ("sound", "reasoning", "vision"):
        spec = f"tiny:organism-{kind}"
        extract(spec, data, points="vision.post,projector", poolings="mean", out=tmp_path / f"{kind}.h5")
        probe([tmp_path / f"{kind}.h5"], out=tmp_path / f"probes-{kind}", probes=("linear",), figures=False,
              controls=False, replicates=200)
        records[kind] = intervene(spec, data, "synth-brain-mri", probes=tmp_path / f"probes-{kind}",
                                  out=tmp_path / f"int-{kind}", replicates=300)
    sound, reasoning, vision = records["sound"], records["reasoning"], records["vision"]
    assert sound["uses_probed_signal"] is True, sound["conclusion"]
    assert sound["causal_ci"][0] > 0.3 and sound["skill"]["clean"] > 0.5 and sound["answer_skill"]["clean"] > 0.6
    assert abs(sound["random_effect"]) < 0.05 and sound["answer_effect"] > 0.3
    assert sound["patch_follow_rate"] > 0.5 and sound["probe_patch_follow_rate"] > 0.3
    assert abs(sound["random_patch_follow_rate"]) < 0.05
    # the reasoning organism's option probabilities are flat whatever the image: erasing moves nothing that
    # matters (its most probable answer may still flip within near-ties, which the decision does not use)
    assert reasoning["uses_probed_signal"] is False, reasoning["conclusion"]
    assert abs(reasoning["causal_effect"]) < 0.02 and reasoning["causal_ci"][1] < 0.05
    assert abs(reasoning["patch_follow_rate"]) < 0.05
    # the blind tower's tokens hold no class signal: erasing it moves nothing at all
    assert vision["causal_effect"] == 0 and len(set(vision["p_right"].values())) == 1
    assert vision["uses_probed_signal"] is False
    assert sound["rank"] == 3 and sound["folds"] == 5 and sound["n"] == 128
    rows = (tmp_path / "int-sound" / "samples.csv").read_text().splitlines()
    assert len(rows) == 129 and rows[0].startswith("sample_id,group,label,fold,donor_id")


def test_bridge_joins_the_causal_check_to_the_verdict(tmp_path):
    spec, data = "tiny:organism-sound", "synth:chest-xray?n=96&seed=4"
    extract(spec, data, points="vision.post,projector", poolings="mean", out=tmp_path / "c.h5")
    probe([tmp_path / "c.h5"], out=tmp_path / "probes", probes=("linear",), figures=False, controls=False,
          replicates=100)
    vqa(spec, data, "synth-chest-xray", out=tmp_path / "vqa", prompts="yes_no,mc-diagnosis", describe_with=None,
        answer_mode="score")
    made = intervene(spec, data, "synth-chest-xray", probes=tmp_path / "probes", out=tmp_path / "int",
                     replicates=100, limit=48)
    assert made["n"] == 48 and made["n_prompts"] >= 6  # yes/no name a class with two classes
    (record,) = bridge(tmp_path / "probes", tmp_path / "vqa", out=tmp_path / "bridge", figures=False,
                       replicates=100, interventions=tmp_path / "int")
    assert record["causal_effect"] == pytest.approx(made["causal_effect"])
    assert record["causal_note"] == made["conclusion"] and "probed signal" in record["causal_note"]
    line = json.loads((tmp_path / "bridge" / "bridge.jsonl").read_text().splitlines()[0])
    assert line["uses_probed_signal"] == made["uses_probed_signal"]


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(UserError, match="vision-language model"):
        intervene("tiny:clip", "synth:brain-mri?n=16", "synth-brain-mri", out=tmp_path / "x")
    with pytest.raises(UserError, match="not a folder|no results|results"):
        intervene("tiny:llava", "synth:brain-mri?n=16", "synth-brain-mri", probes=tmp_path / "missing",
                  out=tmp_path / "x")
    extract("tiny:llava", "synth:brain-mri?n=64", points="vision.post", poolings="mean", out=tmp_path / "c.h5")
    probe([tmp_path / "c.h5"], out=tmp_path / "p", probes=("linear",), figures=False, controls=False,
          replicates=50)
    with pytest.raises(UserError, match="projector"):
        intervene("tiny:llava", "synth:brain-mri?n=64", "synth-brain-mri", probes=tmp_path / "p", out=tmp_path / "x")
    with pytest.raises(UserError, match="limit"):
        intervene("tiny:llava", "synth:brain-mri?n=64", "synth-brain-mri", limit=1, out=tmp_path / "x")


def test_closed_prompts_name_classes():
    from medfrag_probe.answering.tasks import load_task

    brain = closed_prompts(load_task("synth-brain-mri"))
    assert brain and all(p.kind == "multiple_choice" for p in brain)  # yes/no names no class among four
    chest = closed_prompts(load_task("synth-chest-xray"))
    assert {p.kind for p in chest} == {"multiple_choice", "yes_no"}


@pytest.mark.parametrize("name", ["llava-next", "llava-med", "gemma3", "paligemma", "qwen2-vl"])
def test_intervene_runs_on_every_tiny_vlm_architecture(tmp_path, name, synth_images):
    adapter = load_adapter(f"tiny:{name}", lm=True)
    width = adapter.model.config.get_text_config().hidden_size
    clean = _scores(adapter, synth_images[:2])
    assert np.array_equal(_scores(adapter, synth_images[:2], np.zeros((2, width))), clean)
    moved = _scores(adapter, synth_images[:2], np.random.default_rng(0).normal(0, 3, (2, width)))
    assert np.abs(moved - clean).max() > 1e-5, "the edit did not reach the language model"
    made = intervene(adapter, "synth:brain-mri?n=20", "synth-brain-mri", out=tmp_path / "i", folds=2,
                     replicates=20, batch_size=8)
    assert made["n"] == 20 and made["rank"] >= 1 and made["uses_probed_signal"] in (True, False, None)
    assert all(0 <= p <= 1 for p in made["p_right"].values())
    assert np.isfinite(made["causal_effect"]) and "probed signal" in made["conclusion"]
