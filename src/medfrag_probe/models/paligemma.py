"""PaliGemma: SigLIP tower, linear projector, Gemma decoder; prompts go in raw (no chat template)."""

from __future__ import annotations

from dataclasses import dataclass

from .hf_vlm import HFVLMAdapter
from .registry import register


@register("paligemma", model_types=("paligemma",))
@dataclass
class PaliGemmaAdapter(HFVLMAdapter):
    """PaliGemma (`PaliGemmaForConditionalGeneration`)."""

    model_class = "PaliGemmaForConditionalGeneration"
    tower_family = "siglip"

    def format_prompt(self, prompt: str) -> str:
        return prompt  # the processor prepends image tokens and BOS itself
