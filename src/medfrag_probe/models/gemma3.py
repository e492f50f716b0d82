"""Gemma 3 and MedGemma: a SigLIP tower whose final normalised tokens are pooled 4x4 and projected."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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

    def _last_probs(self, inputs: dict) -> torch.Tensor:
        return super()._last_probs(self.with_masks(inputs))

    def with_masks(self, inputs: dict) -> dict:
        """The inputs of a whole-sequence pass (no cache) with Gemma 3's two attention masks built here, as the
        `{"full_attention", "sliding_attention"}` dict the model accepts in place of the 2D padding mask.

        The masks are those transformers builds (causal, or bidirectional within each image's block of tokens, over
        the unpadded keys; the sliding one also within the window), as boolean products of index tensors.
        transformers builds the sliding one through `torch.vmap` because it is given as a custom mask function,
        which costs ~40 ms a pass on CPU: most of a tiny model's scored pass. Inputs it does not cover (another
        attention implementation, no token types) go through unchanged."""
        text = self.model.config.get_text_config()
        mask, types = inputs.get("attention_mask"), inputs.get("token_type_ids")
        if (getattr(text, "_attn_implementation", None) != "sdpa" or not torch.is_tensor(mask) or mask.ndim != 2
                or not torch.is_tensor(types) or types.shape != mask.shape or not getattr(text, "is_causal", True)):
            return inputs
        image = types == 1
        starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
        block = torch.where(image, starts.long().cumsum(1) - 1, -1)  # which image each token belongs to; -1: text
        at = torch.arange(mask.shape[1], device=mask.device)
        causal = at[None, :] <= at[:, None]  # (query, key)
        same_image = (block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0)
        full = (causal | same_image) & mask.bool()[:, None, :]
        masks = {"full_attention": full[:, None]}
        if isinstance(getattr(text, "sliding_window", None), int):
            masks["sliding_attention"] = (full & (at[None, :] > at[:, None] - text.sliding_window))[:, None]
        return {**inputs, "attention_mask": masks}
