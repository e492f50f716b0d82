"""Helpers shared by the transformers adapters: tower hook points, config reading and vision-only loading."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..points import block_name
from .base import Point, find_module

TOWER_CORE = ("vision_model", "")
LM_CANDIDATES = ("model.language_model", "language_model.model", "language_model")


def vit_tower_points(tower: nn.Module, *, family: str, projection: nn.Module | None = None) -> list[Point]:
    """Hook points of a CLIP- or SigLIP-family transformers tower (`family` is 'clip' or 'siglip')."""
    core = find_module(tower, TOWER_CORE, what="vision transformer")
    layers = find_module(core, ("encoder.layers", "encoder.layer"), what="vision encoder layers")
    post_ln = find_module(core, ("post_layernorm",), what="post layer norm", required=False)
    has_cls = family == "clip"
    seq = dict(layout="seq", prefix=1 if has_cls else 0, has_cls=has_cls)
    points = [Point("vision.embed", layers[0], order=0, pre=True, **seq)]
    points += [Point(block_name(i), layer, order=i + 1, **seq) for i, layer in enumerate(layers)]
    n = len(layers)
    if family == "clip":
        # transformers applies CLIP's post_layernorm to the CLS token only; apply it to every token here, so that
        # vision.post is the normalised token grid (its CLS row equals the model's pooler_output)
        if post_ln is not None:
            points.append(Point("vision.post", layers[-1], order=n + 1, select=_apply(post_ln), **seq))
            pooled_module = projection if projection is not None else post_ln
            points.append(Point("vision.pooled", pooled_module, "vector", order=n + 2))
    else:
        if post_ln is not None:
            points.append(Point("vision.post", post_ln, order=n + 1, **seq))
        head = find_module(core, ("head",), what="pooling head", required=False)
        if head is not None:
            points.append(Point("vision.pooled", projection or head, "vector", order=n + 2))
    return points


def _apply(module: nn.Module):
    def select(value: torch.Tensor) -> torch.Tensor:
        # .forward, not __call__: the module's own hooks (it may be another point, even the stop point) must not fire
        return module.forward(value).detach()
    return select


def lm_points(lm: nn.Module, *, start: int = 1000) -> list[Point]:
    """`lm.block.NN` points over a transformers decoder's layers."""
    layers = find_module(lm, ("layers", "model.layers"), what="language-model layers")
    return [Point(block_name(i, lm=True), layer, "lm", order=start + i, stage="lm") for i, layer in enumerate(layers)]


def read_config(target: str, *, trust_remote_code: bool = False) -> dict:
    """The raw `config.json` of a local directory or a hub id (from the local cache when offline)."""
    path = Path(target).expanduser()
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            raise UserError(f"{path} has no config.json; is it a transformers checkpoint directory?")
        return json.loads(file.read_text())
    if path.exists():
        raise UserError(f"{path} is a file; give the checkpoint directory")
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(target, "config.json")).read_text())
    except Exception as exc:  # noqa: BLE001 - any hub failure is reported the same way
        raise UserError(f"cannot read config.json of {target!r} (no local directory, and the hub or its cache "
                        f"did not give it: {type(exc).__name__}); pass a local checkpoint directory") from None


def vision_only_config(config, *, text_attr: str = "text_config"):
    """A copy of a VLM config whose language model has no layers and an 8-token vocabulary.

    Loading the checkpoint into it reads only the vision tower and projector weights; the tiny language model
    left over is dropped after loading.
    """
    config = copy.deepcopy(config)
    text = getattr(config, text_attr)
    text.num_hidden_layers = 0
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = []
    text.vocab_size = 8
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(getattr(text, key, None), int) and getattr(text, key) >= 8:
            setattr(text, key, None)
    return config


def drop_language_model(model: nn.Module) -> None:
    """Remove the (empty) language model and LM head left by a vision-only load."""
    for owner_path, attr in (("model", "language_model"), ("", "language_model"), ("", "lm_head")):
        owner = find_module(model, (owner_path,), what="owner", required=False)
        if owner is not None and isinstance(getattr(owner, attr, None), nn.Module):
            setattr(owner, attr, None)


def torch_dtype(name: str) -> torch.dtype:
    """Map a dtype name to torch."""
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise UserError(f"unknown dtype {name!r}; valid: float32, bfloat16, float16")
    return table[name]


def load_pretrained(cls, target: str, *, config=None, dtype: torch.dtype, trust_remote_code: bool = False,
                    vision_only: bool = False):
    """`cls.from_pretrained` with our defaults; vision-only loads skip the language-model weights."""
    import transformers

    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code)
    if config is not None:
        kwargs["config"] = config
    if vision_only:
        kwargs["ignore_mismatched_sizes"] = True
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # unused language-model weights are expected in vision-only loads
    try:
        model = cls.from_pretrained(target, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if vision_only:
        drop_language_model(model)
    return model.eval()
