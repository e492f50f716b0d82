"""Poolings: how a captured tensor becomes one vector per image (or the token grid, on request).

`cls` first token (only where the tower has one), `mean` / `max` over patch tokens (CLS and register tokens
excluded), `tokens` the whole patch grid, `vector` for points that already are one vector per image
(`vision.pooled`), and for language-model points `image` (mean over image-token positions), `last` (the last
prompt position, where the answer is produced) and `mean` (mean over all attended positions).
CNN maps (B, C, H, W) pool over H x W.
"""

from __future__ import annotations

import torch

from .errors import UserError, bad_choice
from .models.base import Point, PointBatch

POOLINGS = ("cls", "mean", "max", "tokens", "vector", "image", "last")
_BY_LAYOUT = {"seq": ("cls", "mean", "max", "tokens"), "packed": ("mean", "max", "tokens"),
              "map": ("mean", "max", "tokens"), "vector": ("vector",), "lm": ("image", "last", "mean")}


def valid_poolings(point: Point) -> tuple[str, ...]:
    """Poolings that apply to `point`."""
    if point.layout == "seq" and not point.has_cls:
        return ("mean", "max", "tokens")
    return _BY_LAYOUT[point.layout]


def default_poolings(point: Point) -> tuple[str, ...]:
    """What extract stores when no `--poolings` is given."""
    return {"seq": ("cls", "mean") if point.has_cls else ("mean",), "packed": ("mean",), "map": ("mean",),
            "vector": ("vector",), "lm": ("image", "last")}[point.layout]


def plan_poolings(points: list[Point], requested: str | list[str] | None) -> dict[str, tuple[str, ...]]:
    """Map each point to the poolings to store; an explicit pooling that cannot apply is a `UserError`."""
    if requested is None or requested == "" or requested == []:
        return {p.name: default_poolings(p) for p in points}
    names = [r.strip() for r in requested.split(",")] if isinstance(requested, str) else list(requested)
    for name in names:
        if name not in POOLINGS:
            raise bad_choice("pooling", name, POOLINGS)
    plan = {}
    for point in points:
        valid = valid_poolings(point)
        if point.layout in ("vector", "lm"):
            chosen = tuple(n for n in names if n in valid) or default_poolings(point)
        else:
            bad = [n for n in names if n not in valid and n not in ("image", "last", "vector")]
            if bad:
                reason = " (this tower has no CLS token)" if bad[0] == "cls" else ""
                raise UserError(f"pooling {bad[0]!r} does not apply to {point.name}{reason}; "
                                f"valid there: {', '.join(valid)}")
            chosen = tuple(n for n in names if n in valid)
        if chosen:
            plan[point.name] = chosen
    if not plan:
        raise UserError(f"poolings {','.join(names)} apply to none of the chosen points")
    return plan


def pool(point: Point, value: torch.Tensor, pooling: str, batch: PointBatch) -> torch.Tensor:
    """Pool one captured tensor into (B, D), or (B, T, D) for `tokens`; computed in float32."""
    value = value.float()
    if point.layout == "vector":
        return value.reshape(value.shape[0], -1)
    if point.layout == "lm":
        return _pool_lm(value, pooling, batch)
    if point.layout == "packed":
        return _pool_packed(point, value, pooling, batch)
    if point.layout == "map":
        value = value.flatten(2).transpose(1, 2)  # (B, H*W, C)
    elif point.layout == "seq":
        if pooling == "cls":
            return value[:, 0]
        value = value[:, point.prefix:]
    return _reduce(value, pooling)


def _reduce(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "mean":
        return tokens.mean(dim=1)
    if pooling == "max":
        return tokens.amax(dim=1)
    if pooling == "tokens":
        return tokens
    raise bad_choice("pooling", pooling, POOLINGS)


def _pool_packed(point: Point, value: torch.Tensor, pooling: str, batch: PointBatch) -> torch.Tensor:
    counts = [c // point.merge for c in batch.counts]
    pieces = torch.split(value, counts)
    if pooling == "tokens":
        if len(set(counts)) > 1:
            raise UserError(f"'tokens' pooling of {point.name} needs equal token counts per image; "
                            f"got {sorted(set(counts))}: resize images to one size, or use mean/max")
        return torch.stack(pieces)
    return torch.stack([_reduce(p.unsqueeze(0), pooling)[0] for p in pieces])


def _pool_lm(value: torch.Tensor, pooling: str, batch: PointBatch) -> torch.Tensor:
    if pooling == "last":
        return value[:, -1]  # prompts are left-padded, so the last position is the answer position
    mask = batch.image_mask if pooling == "image" else batch.attention_mask
    if mask is None:
        raise UserError(f"pooling {pooling!r} needs a prompt with an image; none was given")
    mask = mask.to(value.device, value.dtype).unsqueeze(-1)
    return (value * mask).sum(1) / mask.sum(1).clamp(min=1)
