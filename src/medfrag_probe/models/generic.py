"""Any other transformers vision backbone loadable with AutoModel: ViTs (CLS, distillation and register tokens)
and CNNs with (B, C, H, W) feature maps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..points import block_name
from .base import Adapter, Point, find_module
from .hf_common import load_pretrained
from .registry import register

BLOCK_PATHS = ("encoder.layer", "encoder.layers", "encoder.stages", "encoder.blocks", "blocks", "stages", "layers")
NORM_PATHS = ("layernorm", "post_layernorm", "norm", "encoder.norm")


@register("auto")
@dataclass
class GenericAdapter(Adapter):
    """Backbone discovered by walking its module tree; layouts (tokens or maps) are read off a dry run."""

    @classmethod
    def load(cls, target: str, *, spec: str, vision_only: bool, dtype: torch.dtype, trust_remote_code: bool = False):
        """Load with AutoModel and AutoImageProcessor."""
        import transformers

        model = load_pretrained(transformers.AutoModel, target, dtype=dtype, trust_remote_code=trust_remote_code)
        processor = transformers.AutoImageProcessor.from_pretrained(target, trust_remote_code=trust_remote_code)
        return cls(spec=spec, model=model, processor=processor, loaded="vision")

    def __post_init__(self):
        blocks = find_module(self.model, BLOCK_PATHS, what="block list", required=False)
        blocks = blocks if blocks is not None else largest_module_list(self.model)
        self.prefix, has_cls = prefix_tokens(self.model)
        size = self.dry_run_size()
        shapes = self.dry_run(blocks, size)
        points = []
        for i, (block, shape) in enumerate(zip(blocks, shapes["blocks"])):
            points.append(Point(block_name(i), block, _layout(shape), order=i + 1, prefix=self.prefix, has_cls=has_cls))
        points.insert(0, Point("vision.embed", blocks[0], _layout(shapes["embed"]), order=0, pre=True,
                               prefix=self.prefix, has_cls=has_cls))
        norm = find_module(self.model, NORM_PATHS, what="final norm", required=False)
        if norm is not None and shapes.get("norm") is not None and len(shapes["norm"]) == 3:
            points.append(Point("vision.post", norm, "seq", order=len(blocks) + 1, prefix=self.prefix, has_cls=has_cls))
        if shapes.get("pooled"):
            points.append(Point("vision.pooled", None, "vector", order=len(blocks) + 2))
        self.points = {p.name: p for p in points}
        self.reads_point = None

    def dry_run_size(self) -> int:
        """Input side length for the shape-finding dry run."""
        for attr in ("crop_size", "size"):
            size = getattr(self.processor, attr, None)
            for key in ("height", "shortest_edge"):
                value = size.get(key) if hasattr(size, "get") else getattr(size, key, None)
                if value:
                    return int(value)
        return 224

    def dry_run(self, blocks: nn.ModuleList, size: int) -> dict:
        """Run one blank image and record the shapes of block inputs/outputs, the final norm and the pooler."""
        shapes: dict = {"blocks": [None] * len(blocks)}
        hooks = [blocks[0].register_forward_pre_hook(lambda m, a, k: shapes.__setitem__(
            "embed", tuple((a[0] if a else next(iter(k.values()))).shape)), with_kwargs=True)]
        for i, block in enumerate(blocks):
            hooks.append(block.register_forward_hook(_shape_hook(shapes["blocks"], i)))
        norm = find_module(self.model, NORM_PATHS, what="final norm", required=False)
        if norm is not None:
            hooks.append(norm.register_forward_hook(lambda m, a, o: shapes.__setitem__("norm", tuple(_first(o).shape))))
        try:
            param = next(self.model.parameters())
            with torch.inference_mode():
                out = self.model(pixel_values=torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device))
        finally:
            for hook in hooks:
                hook.remove()
        shapes["pooled"] = getattr(out, "pooler_output", None) is not None
        return shapes

    def prepare(self, images, prompt=None):
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}

    def forward(self, inputs, stage):
        out = self.model(pixel_values=inputs["pixel_values"])
        pooled = getattr(out, "pooler_output", None)
        return {"vision.pooled": pooled.flatten(1)} if pooled is not None else {}


def _first(output):
    from .hooks import first_tensor

    return first_tensor(output)


def _shape_hook(store: list, index: int):
    def hook(module, args, output):
        store[index] = tuple(_first(output).shape)
    return hook


def _layout(shape) -> str:
    return "map" if shape is not None and len(shape) == 4 else "seq"


def prefix_tokens(model: nn.Module) -> tuple[int, bool]:
    """Count leading non-patch tokens (CLS, distillation, registers) from the embedding parameters."""
    embeddings = find_module(model, ("embeddings", "vision_model.embeddings"), what="embeddings", required=False)
    if embeddings is None:
        return 0, False
    has_cls = getattr(embeddings, "cls_token", None) is not None
    count = int(has_cls) + int(getattr(embeddings, "distillation_token", None) is not None)
    registers = getattr(embeddings, "register_tokens", None)
    if isinstance(registers, torch.Tensor):
        count += registers.shape[1]
    return count, has_cls


def largest_module_list(model: nn.Module) -> nn.ModuleList:
    """The ModuleList with the most parameters: the backbone's blocks when no known path matches."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise RuntimeError(f"cannot find a block list in {type(model).__name__}")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))
