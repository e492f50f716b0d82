"""Qwen2-VL and Qwen2.5-VL: a native-resolution tower over packed patch sequences, merged 2x2 into the LM."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..points import block_name, is_vision_block
from .base import Point, PointBatch, find_module
from .hf_vlm import PROJECTOR_ORDER, HFVLMAdapter
from .registry import register


@register("qwen2-vl", model_types=("qwen2_vl",))
@dataclass
class Qwen2VLAdapter(HFVLMAdapter):
    """Qwen2-VL: tower tokens of all images are packed into one sequence; points are split per image.

    The patch merger (LayerNorm + MLP over 2x2 neighbours) is the projector; the tower has no final norm of its
    own, so there is no `vision.post`, and the merger reads the last block.
    """

    model_class = "Qwen2VLForConditionalGeneration"
    share_prefix = False  # multimodal rotary positions are computed over the whole sequence

    def find_parts(self):
        self.visual = find_module(self.model, ("model.visual", "visual"), what="vision tower")
        merger = find_module(self.visual, ("merger",), what="patch merger")
        tower = nn.ModuleDict({name: mod for name, mod in self.visual.named_children() if name != "merger"})
        return tower, merger

    def vision_points(self):
        blocks = find_module(self.visual, ("blocks",), what="vision blocks")
        packed = dict(layout="packed")
        points = [Point("vision.embed", blocks[0], order=0, pre=True, **packed)]
        points += [Point(block_name(i), block, order=i + 1, **packed) for i, block in enumerate(blocks)]
        return points

    def projector_point(self):
        merge = self.visual.spatial_merge_size ** 2
        return Point("projector", self.projector, "packed", order=PROJECTOR_ORDER, stage="projector", merge=merge)

    def find_reads_point(self):
        return block_name(sum(1 for name in self.points if is_vision_block(name)) - 1)

    def forward(self, inputs, stage):
        if stage == "lm":
            self.base(**inputs)
        else:
            self.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        return {}

    def point_batch(self, inputs) -> PointBatch:
        batch = super().point_batch(inputs)
        batch.counts = [int(c) for c in inputs["image_grid_thw"].prod(-1).tolist()]
        if "input_ids" not in inputs:
            batch.size = len(batch.counts)
        return batch


@register("qwen2.5-vl", model_types=("qwen2_5_vl",))
@dataclass
class Qwen25VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: as Qwen2-VL, with window attention in the tower (pooling does not depend on token order)."""

    model_class = "Qwen2_5_VLForConditionalGeneration"
