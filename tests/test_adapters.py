"""Every adapter: its hook points resolve, and their values equal references from the model's own outputs."""

from __future__ import annotations

import pytest
import torch

from medfrag_probe.extraction import capture
from medfrag_probe.models.loading import load_adapter, load_registry
from medfrag_probe.models.registry import ARCHITECTURES
from medfrag_probe.models.tiny import TINY
from medfrag_probe.pooling import default_poolings, pool

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _run(adapter, images, names=None, prompt=None):
    inputs = adapter.prepare(images, prompt)
    points = [p for p in adapter.points.values() if names is None or p.name in names]
    captured = capture(adapter, points, inputs)
    return inputs, captured, adapter.point_batch(inputs)


def _pooled(adapter, captured, batch, name, pooling):
    return pool(adapter.points[name], captured[name], pooling, batch)


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_point_resolves_and_pools(name, synth_images):
    adapter = load_adapter(f"tiny:{name}")
    inputs, captured, batch = _run(adapter, synth_images[:3])
    assert set(captured) == set(adapter.points), "a hook point was not reached"
    for point in adapter.points.values():
        for pooling in default_poolings(point):
            value = pool(point, captured[point.name], pooling, batch)
            assert value.shape[0] == 3 and value.ndim == 2 and torch.isfinite(value).all()
    if adapter.reads_point is not None:
        assert adapter.reads_point in adapter.points


def test_registry_covers_every_architecture_family():
    load_registry()
    expected = {"llava", "llava-next", "llava-original", "gemma3", "paligemma", "qwen2-vl", "qwen2.5-vl", "clip",
                "siglip", "auto", "open_clip", "timm"}
    assert expected <= set(ARCHITECTURES)
    for cls in ARCHITECTURES.values():
        assert callable(cls.load) and cls.__doc__


def test_clip_points_equal_hidden_states(synth_images):
    adapter = load_adapter("tiny:clip")
    inputs, captured, batch = _run(adapter, synth_images[:4])
    with torch.no_grad():
        ref = adapter.model(pixel_values=inputs["pixel_values"], output_hidden_states=True)
    hidden = ref.hidden_states
    n = sum(1 for k in adapter.points if k.startswith("vision.block."))
    for i in range(n):
        got = _pooled(adapter, captured, batch, f"vision.block.{i:02d}", "mean")
        torch.testing.assert_close(got, hidden[i + 1][:, 1:].mean(1), atol=ATOL, rtol=0)
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.embed", "cls"), hidden[0][:, 0])
    # vision.post is the normalised grid: its CLS row is the model's pooled output, and pooled is the projection
    post_cls = _pooled(adapter, captured, batch, "vision.post", "cls")
    torch.testing.assert_close(adapter.model.visual_projection(post_cls), ref.image_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.pooled", "vector"), ref.image_embeds)


def test_siglip_has_no_cls_and_matches_outputs(synth_images):
    adapter = load_adapter("tiny:siglip")
    inputs, captured, batch = _run(adapter, synth_images[:4])
    with torch.no_grad():
        ref = adapter.model(pixel_values=inputs["pixel_values"], output_hidden_states=True)
    assert not adapter.points["vision.post"].has_cls and adapter.points["vision.post"].prefix == 0
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.post", "mean"),
                               ref.last_hidden_state.mean(1), atol=ATOL, rtol=0)
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.block.01", "max"),
                               ref.hidden_states[2].amax(1), atol=ATOL, rtol=0)
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.pooled", "vector"), ref.pooler_output)


def test_mean_pooling_excludes_cls_and_register_tokens(synth_images):
    adapter = load_adapter("tiny:vit-registers")
    point = adapter.points["vision.post"]
    assert point.prefix == 5 and point.has_cls  # CLS + 4 registers
    inputs, captured, batch = _run(adapter, synth_images[:2])
    with torch.no_grad():
        ref = adapter.model(pixel_values=inputs["pixel_values"])
    torch.testing.assert_close(pool(point, captured["vision.post"], "mean", batch),
                               ref.last_hidden_state[:, 5:].mean(1), atol=ATOL, rtol=0)
    torch.testing.assert_close(pool(point, captured["vision.post"], "cls", batch), ref.last_hidden_state[:, 0])


def test_cnn_feature_maps_pool_over_space(synth_images):
    adapter = load_adapter("tiny:convnext")
    inputs, captured, batch = _run(adapter, synth_images[:2])
    with torch.no_grad():
        ref = adapter.model(pixel_values=inputs["pixel_values"], output_hidden_states=True)
    assert adapter.points["vision.block.02"].layout == "map"
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.block.02", "mean"),
                               ref.hidden_states[3].mean((2, 3)), atol=ATOL, rtol=0)
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.pooled", "vector"), ref.pooler_output)


@pytest.mark.parametrize("name", ["llava", "llava-mistral", "gemma3", "paligemma"])
def test_projector_equals_get_image_features(name, synth_images):
    adapter = load_adapter(f"tiny:{name}")
    inputs, captured, batch = _run(adapter, synth_images[:3])
    with torch.no_grad():
        feats = adapter.base.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
    torch.testing.assert_close(_pooled(adapter, captured, batch, "projector", "mean"), feats.mean(1), atol=ATOL, rtol=0)


def test_llava_reads_second_to_last_block_patch_tokens(synth_images):
    adapter = load_adapter("tiny:llava")
    assert adapter.reads_point == "vision.block.02" and adapter.info["reads_tokens"] == "patch"
    inputs, captured, batch = _run(adapter, synth_images[:2])
    with torch.no_grad():
        hidden = adapter.tower(pixel_values=inputs["pixel_values"], output_hidden_states=True).hidden_states
        projected = adapter.projector(hidden[-2][:, 1:])
    torch.testing.assert_close(captured["vision.block.02"], hidden[-2])
    torch.testing.assert_close(captured["projector"], projected, atol=ATOL, rtol=0)


def test_qwen2_vl_packed_tokens_split_per_image(synth_images):
    adapter = load_adapter("tiny:qwen2-vl")
    images = [synth_images[0], synth_images[1].resize((84, 56))]  # different sizes -> different token counts
    inputs, captured, batch = _run(adapter, images)
    assert len(set(batch.counts)) == 2
    with torch.no_grad():
        out = adapter.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    merged = torch.split(out.pooler_output, [c // 4 for c in batch.counts])
    expected = torch.stack([m.mean(0) for m in merged])
    torch.testing.assert_close(_pooled(adapter, captured, batch, "projector", "mean"), expected, atol=ATOL, rtol=0)
    tower = torch.split(out.last_hidden_state, batch.counts)
    torch.testing.assert_close(_pooled(adapter, captured, batch, adapter.reads_point, "max"),
                               torch.stack([t.amax(0) for t in tower]), atol=ATOL, rtol=0)


def test_open_clip_pooled_is_encode_image(synth_images):
    adapter = load_adapter("tiny:open-clip")
    inputs, captured, batch = _run(adapter, synth_images[:3])
    with torch.no_grad():
        ref = adapter.model(inputs["pixel_values"])
        tokens = adapter.model.transformer(adapter.model._embeds(inputs["pixel_values"]))
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.pooled", "vector"), ref)
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.block.02", "mean"),
                               tokens[:, 1:].mean(1), atol=ATOL, rtol=0)
    with torch.no_grad():
        post_cls = adapter.model.ln_post(tokens)[:, 0]
    torch.testing.assert_close(post_cls @ adapter.model.proj, ref, atol=ATOL, rtol=0)


def test_timm_prefix_tokens_and_pre_logits(synth_images):
    adapter = load_adapter("tiny:timm-vit")
    point = adapter.points["vision.post"]
    assert point.prefix == 3  # CLS + 2 registers
    inputs, captured, batch = _run(adapter, synth_images[:2])
    with torch.no_grad():
        feats = adapter.model.forward_features(inputs["pixel_values"])
        pre_logits = adapter.model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(pool(point, captured["vision.post"], "mean", batch), feats[:, 3:].mean(1))
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.pooled", "vector"), pre_logits)


@pytest.mark.parametrize("name", ["llava", "gemma3", "paligemma", "qwen2-vl"])
def test_lm_points_equal_output_hidden_states(name, synth_images):
    adapter = load_adapter(f"tiny:{name}", lm=True)
    inputs, captured, batch = _run(adapter, synth_images[:2], names={"lm.block.00", "lm.block.01"},
                                   prompt="Is there a tumor?")
    with torch.no_grad():
        ref = adapter.base(**inputs, output_hidden_states=True).hidden_states
    mask = batch.image_mask
    assert mask.sum() > 0
    hidden = ref[1]  # output of block 00
    torch.testing.assert_close(_pooled(adapter, captured, batch, "lm.block.00", "last"), hidden[:, -1],
                               atol=ATOL, rtol=0)
    image_mean = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(_pooled(adapter, captured, batch, "lm.block.00", "image"), image_mean,
                               atol=ATOL, rtol=0)
    # transformers applies the final norm to the last entry of hidden_states; block 01 is the last block here
    norm = adapter.base.language_model.norm
    torch.testing.assert_close(norm(captured["lm.block.01"]), ref[2], atol=ATOL, rtol=0)


def test_vision_only_load_has_no_language_model():
    adapter = load_adapter("tiny:llava")
    assert adapter.loaded == "vision"
    assert adapter.base.language_model is None and adapter.model.lm_head is None
    assert not any(k.startswith(("model.language_model", "lm_head")) for k in adapter.model.state_dict())
    assert not any(name.startswith("lm.") for name in adapter.points)


def test_vision_extraction_never_runs_the_language_model(synth_images):
    adapter = load_adapter("tiny:gemma3", lm=True)

    def refuse(*args, **kwargs):
        raise AssertionError("language model ran")

    adapter.base.language_model.forward = refuse
    names = {"vision.block.00", "vision.post", "projector"}
    _, captured, _ = _run(adapter, synth_images[:2], names=names)
    assert set(captured) == names


def test_forward_stops_after_last_requested_point(synth_images):
    adapter = load_adapter("tiny:clip")
    calls = []
    layers = adapter.tower.encoder.layers
    handles = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    try:
        _run(adapter, synth_images[:1], names={"vision.block.01"})
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]
    assert not any(h for layer in layers for h in layer._forward_hooks.values() if h.__name__ == "hook")


def test_llava_med_original_layout_equals_transformers_llava(synth_images):
    med = load_adapter("tiny:llava-med", lm=True)
    ref = load_adapter("tiny:llava-mistral", lm=True)
    assert med.arch == "llava-original"
    assert med.fingerprints() == ref.fingerprints()  # same tower and projector weights
    names = {"vision.block.02", "vision.post", "projector", "lm.block.01"}
    _, a, batch = _run(med, synth_images[:2], names=names, prompt="Is there a tumor?")
    _, b, _ = _run(ref, synth_images[:2], names=names - {"lm.block.01"})
    for name in names - {"lm.block.01"}:
        torch.testing.assert_close(a[name], b[name], atol=ATOL, rtol=0)
    assert a["lm.block.01"].shape[0] == 2 and torch.isfinite(a["lm.block.01"]).all()


def test_bare_clip_vision_model_derived_post_and_pooled(tmp_path, synth_images):
    """A CLIPVisionModel checkpoint: vision.post (derived) and vision.pooled share post_layernorm."""
    import transformers

    from medfrag_probe.models.tiny import _clip_vision

    torch.manual_seed(0)
    transformers.CLIPVisionModel(_clip_vision()).save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path)
    adapter = load_adapter(f"hf:{tmp_path}")
    inputs, captured, batch = _run(adapter, synth_images[:2])
    ref = adapter.model(pixel_values=inputs["pixel_values"])
    assert captured["vision.post"].shape[1] == 17
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.post", "cls"), ref.pooler_output)
    torch.testing.assert_close(_pooled(adapter, captured, batch, "vision.pooled", "vector"), ref.pooler_output)
