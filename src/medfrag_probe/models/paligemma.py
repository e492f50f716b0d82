"""PaliGemma: SigLIP tower, linear projector, Gemma decoder; prompts go in raw (no chat template)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hf_vlm import HFVLMAdapter
from .registry import register


@register("paligemma", model_types=("paligemma",))
@dataclass
class PaliGemmaAdapter(HFVLMAdapter):
    """PaliGemma (`PaliGemmaForConditionalGeneration`): `<image>` tokens, BOS, the prompt and a newline."""

    model_class = "PaliGemmaForConditionalGeneration"
    tower_family = "siglip"
    share_prefix = False  # the prompt attends to the image both ways (prefix LM): no causal prefix to share
    answer_token_type = 1  # answer tokens are the suffix: attended causally

    def format_prompt(self, prompt: str, *, image: bool = True) -> str:
        # the processor expands the leading <image> into the image tokens and adds BOS and the closing newline
        return f"{self.processor.image_token}{prompt}" if image else prompt

    def chat_inputs(self, prompts, images=None):
        if images is not None:
            return super().chat_inputs(prompts, images)
        tokenizer = self.processor.tokenizer
        texts = [f"{tokenizer.bos_token}{p}\n" for p in prompts]
        inputs = dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))
        inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])  # the whole prompt is the prefix
        return inputs
