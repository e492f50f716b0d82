"""timm image models (`timm:NAME`, `timm:NAME?checkpoint=FILE.safetensors`), also used for open_clip timm towers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..points import block_name
from .base import Adapter, Point
from .registry import register


def timm_points(model: nn.Module, *, dry_run: bool = True) -> list[Point]:
    """Hook points of a timm model: ViT `blocks` (with `num_prefix_tokens`) or CNN feature stages."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) > 0:
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        has_cls = getattr(model, "cls_token", None) is not None
        seq = dict(layout="seq", prefix=prefix, has_cls=has_cls)
        points = [Point("vision.embed", blocks[0], order=0, pre=True, **seq)]
        points += [Point(block_name(i), block, order=i + 1, **seq) for i, block in enumerate(blocks)]
        norm = getattr(model, "norm", None)
        if isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity):
            points.append(Point("vision.post", norm, order=len(blocks) + 1, **seq))
        return points
    stages = [model.get_submodule(info["module"]) for info in model.feature_info]
    points = [Point(block_name(i), stage, "map", order=i + 1) for i, stage in enumerate(stages)]
    return points


@register("timm")
@dataclass
class TimmAdapter(Adapter):
    """A timm classifier backbone; `vision.pooled` is its pre-logits feature."""

    @classmethod
    def load(cls, target: str, *, spec: str, vision_only: bool, dtype: torch.dtype, checkpoint: str | None = None,
             model_kwargs: dict | None = None, trust_remote_code: bool = False):
        """Create `target` with timm, from a local safetensors `checkpoint` or timm's pretrained weights."""
        import timm

        try:
            model = timm.create_model(target, pretrained=checkpoint is None, num_classes=0, **(model_kwargs or {}))
        except (RuntimeError, TypeError) as exc:
            raise UserError(f"timm cannot create {target!r}: {str(exc).splitlines()[0]}") from None
        if checkpoint is not None:
            load_state(model, checkpoint)
        model = model.to(dtype).eval()
        config = timm.data.resolve_model_data_config(model)
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if img_size is not None:  # a model built at another size than its pretrained config says
            config["input_size"] = (3, *img_size)
        transform = timm.data.create_transform(**config)
        return cls(spec=spec, model=model, processor=transform, loaded="vision")

    def __post_init__(self):
        points = timm_points(self.model)
        points.append(Point("vision.pooled", None, "vector", order=len(points) + 1))
        self.points = {p.name: p for p in points}

    def prepare(self, images, prompt=None):
        return {"pixel_values": torch.stack([self.processor(image) for image in images])}

    def forward(self, inputs, stage):
        features = self.model.forward_features(inputs["pixel_values"])
        return {"vision.pooled": self.model.forward_head(features, pre_logits=True)}


def load_state(model: nn.Module, checkpoint: str) -> None:
    """Load a safetensors (or weights-only torch) state dict into `model`, strictly but ignoring the head."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("head.", "fc.", "classifier."))]
    if missing:
        raise UserError(f"checkpoint {path} lacks {len(missing)} weights of the model, e.g. {missing[0]}")
