"""open_clip models (`open_clip:ARCH[/PRETRAINED]`, `open_clip:hf-hub:ORG/NAME`, `open_clip:local-dir:PATH`):
ViT towers and timm towers such as BiomedCLIP's. Only the image tower is kept after loading."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from ..points import block_name
from .base import Adapter, Point
from .registry import register
from .timm_adapter import timm_points


def _transpose(value: torch.Tensor) -> torch.Tensor:
    return value.transpose(0, 1).detach()


def vit_points(visual: nn.Module) -> list[Point]:
    """Points of open_clip's own VisionTransformer (CLS first; `vision.post` = ln_post over all tokens)."""
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    select = None if batch_first else _transpose
    prefix = 1 if getattr(visual, "class_embedding", None) is not None else 0
    seq = dict(layout="seq", prefix=prefix, has_cls=prefix == 1)
    points = [Point("vision.embed", blocks[0], order=0, pre=True, select=select, **seq)]
    points += [Point(block_name(i), b, order=i + 1, select=select, **seq) for i, b in enumerate(blocks)]
    if getattr(visual, "attn_pool", None) is None and not getattr(visual, "final_ln_after_pool", False):
        points.append(Point("vision.post", visual.ln_post, order=len(blocks) + 1, **seq))
    return points


@register("open_clip")
@dataclass
class OpenClipAdapter(Adapter):
    """An open_clip image tower; `vision.pooled` is `encode_image` (unnormalised)."""

    @classmethod
    def load(cls, target: str, *, spec: str, vision_only: bool, dtype: torch.dtype, trust_remote_code: bool = False):
        """Create the model and its evaluation transform with open_clip."""
        import open_clip

        name, _, pretrained = target.partition("/") if not target.startswith(("hf-hub:", "local-dir:")) else (
            target, "", "")
        try:
            model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained or None)
        except RuntimeError as exc:
            valid = ", ".join(open_clip.list_models()[:12])
            raise UserError(f"open_clip cannot create {target!r} ({str(exc).splitlines()[0]}); "
                            f"architectures include {valid}, ...") from None
        visual = model.visual.to(dtype).eval()
        return cls(spec=spec, model=visual, processor=transform, loaded="vision")

    def __post_init__(self):
        trunk = getattr(self.model, "trunk", None)
        points = timm_points(trunk) if trunk is not None else vit_points(self.model)
        points.append(Point("vision.pooled", None, "vector", order=len(points) + 1))
        self.points = {p.name: p for p in points}

    def prepare(self, images, prompt=None):
        return {"pixel_values": torch.stack([self.processor(image) for image in images])}

    def forward(self, inputs, stage):
        out = self.model(inputs["pixel_values"])
        return {"vision.pooled": out[0] if isinstance(out, tuple) else out}
