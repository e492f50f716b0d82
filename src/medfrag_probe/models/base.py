"""The adapter contract: how an architecture exposes hook points, preprocessing and its forward pass."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError

STAGES = ("vision", "projector", "lm")
LAYOUTS = ("seq", "packed", "map", "vector", "lm")


@dataclass(frozen=True, eq=False)
class Point:
    """A hook point: where to capture (`module`, or `pre`-hook on its input) and how its tensor is laid out.

    `layout` is `seq` (B, T, D) with `prefix` leading non-patch tokens (CLS, registers), `packed` (sum of T_i, D)
    split per image by `PointBatch.counts`, `map` (B, C, H, W), `vector` (B, D), or `lm` (B, L, D) hidden states
    of the language model. `order` ranks points along the forward pass; `stage` says which part must run.
    """

    name: str
    module: nn.Module | None
    layout: str
    order: int
    stage: str = "vision"
    prefix: int = 0
    has_cls: bool = False
    pre: bool = False
    select: Callable[[torch.Tensor], torch.Tensor] | None = None
    merge: int = 1


@dataclass
class PointBatch:
    """What pooling needs beyond the captured tensors: per-image packed token counts, LM image-token masks."""

    size: int
    counts: list[int] | None = None
    image_mask: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None


def find_module(root: nn.Module, candidates: Sequence[str], *, what: str, required: bool = True) -> nn.Module | None:
    """Return the first submodule found among dotted `candidates` (paths move between transformers versions)."""
    for path in candidates:
        module = root
        for part in path.split(".") if path else []:
            module = getattr(module, part, None)
            if module is None:
                break
        if module is not None:
            return module
    if required:
        raise RuntimeError(f"cannot find the {what} in {type(root).__name__}; tried {', '.join(candidates)}")
    return None


def processor_side(processor) -> int | None:
    """The largest output side of a transformers image processor or a torchvision transform (None if unknown)."""
    proc = getattr(processor, "image_processor", processor)
    sides: list[float] = []
    # Qwen2-VL-style processors (patch merging, dynamic resolution) keep pixel counts in shortest/longest_edge
    counts = hasattr(proc, "merge_size")
    for attr in ("size", "crop_size"):
        value = getattr(proc, attr, None)
        if isinstance(value, (int, float)):
            sides.append(float(value))
            continue
        for key in ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width", "max_pixels"):
            item = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
            if isinstance(item, (int, float)) and item > 0:
                pixels = key == "max_pixels" or (counts and key.endswith("_edge"))
                sides.append(float(item) ** 0.5 if pixels else float(item))
    if isinstance(getattr(proc, "max_pixels", None), (int, float)):  # Qwen2-VL's dynamic resolution
        sides.append(float(proc.max_pixels) ** 0.5)
    for step in getattr(proc, "transforms", []) or []:  # torchvision Compose (open_clip, timm)
        size = getattr(step, "size", None)
        if isinstance(size, int):
            sides.append(float(size))
        elif isinstance(size, (tuple, list)):
            sides += [float(v) for v in size if isinstance(v, (int, float))]
    return int(max(sides)) if sides else None


def tensor_digest(modules: dict[str, nn.Module | None]) -> str:
    """SHA-256 over the parameters and persistent buffers of `modules` (names relative to each module)."""
    digest = hashlib.sha256()
    for label, module in modules.items():
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{label}.{name}:{data.dtype}:{tuple(data.shape)}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


@dataclass
class Adapter:
    """A loaded model seen through model-agnostic hook points.

    Subclasses set `arch`, build `points` in `__post_init__`, and implement `prepare` (images -> model inputs; runs
    in DataLoader workers) and `forward` (inputs -> a forward pass that reaches `stage`).
    """

    spec: str
    model: nn.Module
    processor: object = None
    reads_point: str | None = None
    loaded: str = "full"  # "vision" when only the vision tower and projector were loaded
    points: dict[str, Point] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    arch = ""  # set by the registry decorator
    can_generate = False  # VLMs that answer questions (`chat_inputs` and `generate`)

    def prepare(self, images: list, prompt: str | None = None) -> dict[str, torch.Tensor]:
        """Turn RGB images (and an optional task prompt) into model inputs."""
        raise NotImplementedError

    def input_side(self) -> int | None:
        """The largest side, in pixels, that the processor resizes images to (None when it cannot be read).

        Used to decode very large images at a reduced size: nothing the model sees is lost below this size."""
        return processor_side(self.processor)

    def decode_side(self) -> int:
        """Images may be decoded at a reduced size whose shorter side stays >= twice the processor's largest input
        side and >= 1,024 px (2,048 px when the input side is unknown); see `data.images`. Images under twice this
        side are never touched."""
        side = self.input_side()
        return max(2 * side, 1024) if side else 2048

    def chat_inputs(self, prompts: list[str], images: list | None = None) -> dict[str, torch.Tensor]:
        """Left-padded model inputs for one chat turn per prompt, each with its image (or none: text only)."""
        raise NotImplementedError(f"{type(self).__name__} does not generate text")

    def generate(self, inputs: dict[str, torch.Tensor], *, max_new_tokens: int) -> list[str]:
        """Greedy continuation of each row of `inputs`, decoded without special tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not generate text")

    def forward(self, inputs: dict[str, torch.Tensor], stage: str) -> None:
        """Run the model far enough to reach every point of `stage`."""
        raise NotImplementedError

    def point_batch(self, inputs: dict[str, torch.Tensor]) -> PointBatch:
        """Pooling context for a batch; overridden by packed-token and language-model adapters."""
        first = next(iter(inputs.values()))
        return PointBatch(size=len(first))

    def components(self) -> dict[str, nn.Module | None]:
        """The modules whose weights make the fingerprint: vision tower and projector."""
        return {"vision": self.model}

    def fingerprints(self) -> dict[str, str]:
        """Weight hashes: `vision`, `projector` and their combination `model`."""
        parts = self.components()
        out = {name: tensor_digest({name: module}) for name, module in parts.items() if module is not None}
        out["model"] = tensor_digest(parts)
        return out

    def select_points(self, patterns: str | Sequence[str] | None) -> list[Point]:
        """Points matching comma-separated names or globs (`vision.block.*`); default: vision points + projector."""
        if patterns is None or patterns == "" or patterns == []:
            patterns = ["vision.*", "projector*"]
        if isinstance(patterns, str):
            patterns = [p.strip() for p in patterns.split(",") if p.strip()]
        chosen: dict[str, Point] = {}
        for pattern in patterns:
            regex = re.compile("^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$")
            hits = [p for name, p in self.points.items() if regex.match(name)]
            if not hits and "*" not in pattern:
                raise UserError(f"model {self.spec} has no hook point {pattern!r}; valid: {self.point_summary()}")
            chosen.update((p.name, p) for p in hits)
        if not chosen:
            raise UserError(f"no hook point of {self.spec} matches {','.join(patterns)}; valid: {self.point_summary()}")
        if any(p.stage == "lm" for p in chosen.values()) and self.loaded != "full":
            raise UserError("language-model points need the full model; it was loaded vision-only")
        return sorted(chosen.values(), key=lambda p: p.order)

    def point_summary(self) -> str:
        """Compact list of point names, collapsing numbered blocks into ranges."""
        names, blocks = [], {}
        for name in self.points:
            match = re.match(r"^(vision|lm)\.block\.(\d+)$", name)
            if match:
                blocks.setdefault(match.group(1), []).append(match.group(2))
                if len(blocks[match.group(1)]) == 1:
                    names.append(f"{match.group(1)}.block.*")
            else:
                names.append(name)
        return ", ".join(n if not n.endswith(".block.*") else
                         f"{n[:-1]}{blocks[n.split('.')[0]][0]}..{blocks[n.split('.')[0]][-1]}" for n in names)
