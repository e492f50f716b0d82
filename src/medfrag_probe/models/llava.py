"""LLaVA-1.5 (Llama or Mistral language model) and LLaVA-NeXT: a CLIP tower read at a chosen layer."""

from __future__ import annotations

from dataclasses import dataclass

from ..points import block_name, is_vision_block
from .hf_vlm import HFVLMAdapter
from .registry import register


@register("llava", model_types=("llava",))
@dataclass
class LlavaAdapter(HFVLMAdapter):
    """LLaVA-1.5: the projector reads `vision_feature_layer` (default -2), patch tokens only by default."""

    model_class = "LlavaForConditionalGeneration"
    tower_family = "clip"

    def find_reads_point(self) -> str:
        layer = self.model.config.vision_feature_layer
        if not isinstance(layer, int):
            self.info["reads_layers"] = list(layer)
            layer = layer[-1]
        n_blocks = sum(1 for name in self.points if is_vision_block(name))
        index = layer if layer >= 0 else n_blocks + 1 + layer  # hidden_states[0] is the embedding output
        self.info["reads_tokens"] = "patch" if self.model.config.vision_feature_select_strategy == "default" else "all"
        return "vision.embed" if index == 0 else block_name(index - 1)


@register("llava-next", model_types=("llava_next",))
@dataclass
class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT: vision and projector points are taken on the base (whole-image) view of the anyres tiles."""

    model_class = "LlavaNextForConditionalGeneration"

    def image_inputs(self, inputs):
        pixels = inputs["pixel_values"]
        return {"pixel_values": pixels[:, 0] if pixels.ndim == 5 else pixels}

    def forward(self, inputs, stage):
        if stage == "lm":
            return super().forward(inputs, stage)
        out = self.tower(**self.image_inputs(inputs), output_hidden_states=True)
        if stage == "projector":
            config = self.model.config
            feats = out.hidden_states[config.vision_feature_layer]
            self.projector(feats[:, 1:] if config.vision_feature_select_strategy == "default" else feats)
        return {}
