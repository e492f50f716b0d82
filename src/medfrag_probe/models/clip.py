"""CLIP and SigLIP image encoders from transformers (dual-encoder checkpoints load their vision side only)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Adapter, find_module
from .hf_common import load_pretrained, vit_tower_points
from .registry import register


@dataclass
class HFEncoderAdapter(Adapter):
    """A transformers image tower; `vision.pooled` is the projected image embedding where there is one."""

    family = "clip"
    full_class = ""
    tower_class = ""

    @classmethod
    def load(cls, target: str, *, spec: str, vision_only: bool, dtype: torch.dtype, trust_remote_code: bool = False):
        """Load the vision side of a checkpoint and its image processor."""
        import transformers

        config = transformers.AutoConfig.from_pretrained(target, trust_remote_code=trust_remote_code)
        klass = getattr(transformers, cls.full_class if hasattr(config, "vision_config") else cls.tower_class)
        model = load_pretrained(klass, target, dtype=dtype, trust_remote_code=trust_remote_code)
        processor = transformers.AutoImageProcessor.from_pretrained(target, trust_remote_code=trust_remote_code)
        return cls(spec=spec, model=model, processor=processor, loaded="vision")

    def __post_init__(self):
        self.tower = find_module(self.model, ("vision_model", ""), what="vision model")
        projection = find_module(self.model, ("visual_projection",), what="projection", required=False)
        self.points = {p.name: p for p in vit_tower_points(self.tower, family=self.family, projection=projection)}
        self.reads_point = None

    def prepare(self, images, prompt=None):
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}

    def forward(self, inputs, stage):
        self.model(pixel_values=inputs["pixel_values"])
        return {}

    def components(self):
        return {"vision": self.model}


@register("clip", model_types=("clip", "clip_vision_model"))
@dataclass
class ClipAdapter(HFEncoderAdapter):
    """CLIP ViT: CLS token, pre-norm, `vision.pooled` = visual projection of the normalised CLS."""

    family = "clip"
    full_class = "CLIPVisionModelWithProjection"
    tower_class = "CLIPVisionModel"


@register("siglip", model_types=("siglip", "siglip_vision_model"))
@dataclass
class SiglipAdapter(HFEncoderAdapter):
    """SigLIP ViT: no CLS token (`cls` pooling is refused); `vision.pooled` = attention-pooling head."""

    family = "siglip"
    full_class = "SiglipVisionModel"
    tower_class = "SiglipVisionModel"
