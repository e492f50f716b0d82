"""Shared prefixes: prompts about one image run the image and the chat's common start once, with the same answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medfrag_probe.answering import vqa
from medfrag_probe.data.sources import open_source

SHARING = ["llava", "llava-next", "gemma3"]  # chat templates that put the image first, causal attention
PROMPTS = ["Is there a tumor in this MRI?", "Which?\nA. glioma\nB. meningioma\nAnswer with a letter.",
           "Describe it.", "Is the scan normal? Answer yes or no.", "What is shown?"]


@pytest.fixture(scope="module")
def images():
    source = open_source("synth:brain-mri?n=4")
    return [source.image(i) for i in range(4)]


def _load(arch):
    from medfrag_probe.models.loading import load_adapter

    return load_adapter(f"tiny:{arch}", lm=True, device="cpu")


@pytest.mark.parametrize("arch", SHARING)
def test_prompts_about_one_image_share_its_prefix_and_get_the_same_answers(arch, images):
    adapter = _load(arch)
    inputs = adapter.chat_inputs(PROMPTS, [images[0]] * len(PROMPTS))
    shared = adapter.shared(inputs)
    assert shared is not None
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    assert (ids[:shared.start] == adapter.image_token_id).any(), "the shared prefix holds the image tokens"
    options = [["yes", "no"]] * len(PROMPTS)
    with_sharing = adapter.generate(inputs, max_new_tokens=10), adapter.option_scores(inputs, options)
    adapter.share_prefix = False
    without = adapter.generate(inputs, max_new_tokens=10), adapter.option_scores(inputs, options)
    alone = [adapter.generate(adapter.chat_inputs([p], [images[0]]), max_new_tokens=10)[0] for p in PROMPTS]
    assert with_sharing[0] == without[0] == alone
    np.testing.assert_allclose(with_sharing[1], without[1], atol=1e-5)


@pytest.mark.parametrize("arch", ["paligemma", "qwen2-vl"])
def test_models_whose_prompt_changes_the_image_tokens_do_not_share(arch, images):
    """PaliGemma's prefix attends both ways (the image tokens see the question); Qwen2-VL's rotary positions span
    the whole sequence: neither has a causal prefix to reuse."""
    adapter = _load(arch)
    assert adapter.shared(adapter.chat_inputs(PROMPTS, [images[0]] * len(PROMPTS))) is None


def test_a_batch_of_several_images_runs_each_prefix_once_with_the_same_answers(images):
    """Rows about two images, interleaved: two prefixes run (the tower sees two images), rows answer as alone."""
    from medfrag_probe.models.prefix import prefix_lengths

    adapter = _load("llava")
    pictures = [images[i % 2] for i in range(len(PROMPTS))]
    inputs = adapter.chat_inputs(PROMPTS, pictures)
    lengths = prefix_lengths(inputs, adapter.image_token_id)
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    assert ids[lengths[0] - 1] == adapter.image_token_id != ids[lengths[0]]
    assert prefix_lengths(adapter.chat_inputs(PROMPTS[:2]), adapter.image_token_id) is None  # text only
    seen = []
    handle = adapter.tower.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(len(args[0] if args else kwargs["pixel_values"])),
        with_kwargs=True)
    try:
        answers = adapter.generate(inputs, max_new_tokens=10)
    finally:
        handle.remove()
    assert seen == [2]
    alone = [adapter.generate(adapter.chat_inputs([p], [i]), max_new_tokens=10)[0] for p, i in zip(PROMPTS, pictures)]
    assert answers == alone


def test_images_with_different_token_counts_share_with_left_padded_prefixes():
    """LLaVA-NeXT gives images of other shapes other numbers of image tokens: the shorter prefixes are padded."""
    from PIL import Image

    from medfrag_probe.models.prefix import prefix_lengths

    adapter = _load("llava-next")
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for h, w in [(64, 64), (32, 96),
                                                                                              (96, 32)]]
    inputs = adapter.chat_inputs(PROMPTS[:3], pictures)
    assert len(set(prefix_lengths(inputs, adapter.image_token_id))) == 3
    alone = [adapter.generate(adapter.chat_inputs([p], [i]), max_new_tokens=10)[0] for p, i in zip(PROMPTS, pictures)]
    assert adapter.generate(inputs, max_new_tokens=10) == alone
    adapter.share_prefix = False
    assert adapter.generate(inputs, max_new_tokens=10) == alone


def test_vqa_runs_each_image_through_the_tower_once_with_the_same_answers(tmp_path):
    """Eight prompts about each of three images in batches of three (batches span two images): the tower sees each
    image once (a prefix is reused by the next batch), against once per answer without sharing."""
    adapter = _load("llava")
    seen = []
    handle = adapter.tower.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(len(args[0] if args else kwargs["pixel_values"])),
        with_kwargs=True)
    answers = {}
    try:
        for share in (True, False):
            adapter.share_prefix = share
            seen.clear()
            out = tmp_path / str(share)
            vqa(adapter, "synth:brain-mri?n=3", "synth-brain-mri", prompts="yes_no,multiple_choice", batch_size=3,
                max_new_tokens=6, describe_with=None, out=out)
            answers[share] = [(r["sample_id"], r["prompt_id"], r["response"]) for r in
                              map(json.loads, (out / "answers.jsonl").read_text().splitlines())]
            assert sum(seen) == (3 if share else 3 * 8)
    finally:
        handle.remove()
    assert answers[True] == answers[False]
    assert len(answers[True]) == 24
    assert adapter._prefix_memo is None, "the prefix memo lives only inside the vqa run"


def test_scored_vqa_with_and_without_sharing_gives_the_same_probabilities(tmp_path):
    adapter = _load("llava-next")
    probs = {}
    for share in (True, False):
        adapter.share_prefix = share
        out = tmp_path / str(share)
        vqa(adapter, "synth:brain-mri?n=3", "synth-brain-mri", prompts="yes_no,multiple_choice", batch_size=4,
            answer_mode="score", describe_with=None, out=out)
        records = map(json.loads, (out / "answers.jsonl").read_text().splitlines())
        probs[share] = [p for r in records for p in r["option_probs"].values()]
    np.testing.assert_allclose(probs[True], probs[False], atol=1e-5)


def test_no_sharing_where_the_rows_could_outgrow_a_sliding_window(images):
    """Padding between the prefix and each question would take places in a sliding attention window (tiny Gemma 3:
    64 tokens), so a batch that could reach past it is run as it is."""
    adapter = _load("gemma3")
    window = adapter.model.config.get_text_config().sliding_window
    inputs = adapter.chat_inputs(PROMPTS, [images[0]] * len(PROMPTS))
    room = window - inputs["input_ids"].shape[1]
    assert room > 1
    assert adapter.shared(inputs, new_tokens=room) is not None
    assert adapter.shared(inputs, new_tokens=room + 1) is None
    long = adapter.chat_inputs([p + " Please answer." * 8 for p in PROMPTS], [images[0]] * len(PROMPTS))
    assert adapter.shared(long) is None
    alone = [adapter.generate(adapter.chat_inputs([p], [images[0]]), max_new_tokens=10)[0]
             for p in [p + " Please answer." * 8 for p in PROMPTS]]
    assert adapter.generate(long, max_new_tokens=10) == alone


def test_prefix_keys_tell_images_apart_in_any_dtype():
    """The memo's key hashes the prefix tokens and the image tensor bytes, bfloat16 included (no NumPy dtype)."""
    import torch

    from medfrag_probe.models.prefix import _row_key

    ids = torch.tensor([[5, 9, 9, 7, 3], [5, 9, 9, 7, 4]])
    pixels = torch.rand(2, 3, 4, 4).to(torch.bfloat16)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    same = {**inputs, "pixel_values": pixels[[0, 0]]}
    assert _row_key(same, 0, 3, []) == _row_key(same, 1, 3, [])  # same image, same prefix, other question
    assert _row_key(inputs, 0, 3, []) != _row_key(inputs, 1, 3, [])  # another image
    assert _row_key(same, 0, 3, []) != _row_key(same, 0, 2, [])


def test_gemma3_masks_built_by_the_adapter_are_those_transformers_builds(images):
    """The adapter's own Gemma 3 masks (built without vmap) equal the ones transformers builds and hands its language
    model, for left-padded rows of different lengths, one past the sliding window; the logits are the same bit for
    bit."""
    import torch

    adapter = _load("gemma3")
    prompts = PROMPTS[:3] + ["Which? " + " ".join(["A. glioma B. meningioma C. pituitary"] * 4)]
    inputs = adapter.chat_inputs(prompts, images)
    lengths = inputs["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1
    assert int(lengths.max()) > adapter.model.config.get_text_config().sliding_window
    seen = []
    hook = adapter.model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["attention_mask"]), with_kwargs=True)
    try:
        with torch.inference_mode():
            theirs_logits = adapter.model(**inputs).logits
            mine = adapter.with_masks(inputs)["attention_mask"]
            mine_logits = adapter.model(**{**inputs, "attention_mask": mine}).logits
    finally:
        hook.remove()
    theirs = seen[0]
    # transformers builds the masks of the layer types the model has (5.4), or always both (later versions)
    assert set(theirs) <= set(mine) == {"full_attention", "sliding_attention"} and seen[1] is mine
    assert "sliding_attention" in theirs
    for kind in theirs:
        assert torch.equal(theirs[kind].expand_as(mine[kind]), mine[kind]), kind
    assert not torch.equal(mine["full_attention"], mine["sliding_attention"]), "the window cuts the longest row"
    assert torch.equal(theirs_logits, mine_logits)
    assert adapter.with_masks({k: v for k, v in inputs.items() if k != "token_type_ids"}).get("attention_mask") is \
        inputs["attention_mask"], "without token types the inputs go through unchanged"
