"""Gemma 3 and MedGemma: a SigLIP tower whose final normalised tokens are pooled 4x4 and projected."""

from __future__ import annotations

from dataclasses import dataclass

from .hf_vlm import HFVLMAdapter
from .registry import register


@register("gemma3", model_types=("gemma3",))
@dataclass
class Gemma3Adapter(HFVLMAdapter):
    """Gemma 3 / MedGemma (`Gemma3ForConditionalGeneration`)."""

    model_class = "Gemma3ForConditionalGeneration"
    tower_family = "siglip"

    def images_arg(self, images):
        return [[image] for image in images]
