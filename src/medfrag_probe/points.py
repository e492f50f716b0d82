"""The hook-point vocabulary every stage shares: names, their order along the pipeline, and the stage they belong to.

    vision.embed  vision.block.NN  vision.post  vision.pooled  projector  lm.block.NN   (NN: 00-based, two digits)

A name is parsed here and nowhere else: adapters build names with `block_name`, probes and figures sort with
`point_order`, the bridge splits the encoder side from the language side with `stage_of` / `is_language`.
Names outside the vocabulary (a user's own) sort after the known ones, alphabetically, and count as vision points.
"""

from __future__ import annotations

import re

VISION, PROJECTOR, LANGUAGE = "vision", "projector", "language"
_BLOCK = re.compile(r"^(vision|lm)\.block\.(\d+)$")
_FIXED = {"vision.embed": 0, "vision.post": 500, "vision.pooled": 501, "projector": 900}
_UNKNOWN = 5000


def block_name(index: int, *, lm: bool = False) -> str:
    """`vision.block.07` / `lm.block.07`."""
    return f"{'lm' if lm else 'vision'}.block.{index:02d}"


def block_index(name: str) -> int | None:
    """The block number of `vision.block.NN` / `lm.block.NN`, else None."""
    match = _BLOCK.match(name)
    return int(match.group(2)) if match else None


def point_order(name: str) -> tuple[int, str]:
    """Sort key along the pipeline: embed, vision blocks, post, pooled, projector, language blocks, others."""
    match = _BLOCK.match(name)
    if match:
        return ((1 if match.group(1) == "vision" else 2000) + int(match.group(2)), name)
    return (_FIXED.get(name, _UNKNOWN), name)


def stage_of(name: str) -> str:
    """`vision`, `projector` or `language`: the part of the model whose output the point is."""
    if is_language(name):
        return LANGUAGE
    return PROJECTOR if name == PROJECTOR or name.startswith(PROJECTOR + ".") else VISION


def is_language(name: str) -> bool:
    """Whether the point is a language-model state (it mixes in the prompt, so it is not the encoder's alone)."""
    return name.startswith("lm.")


def is_vision_block(name: str) -> bool:
    """Whether the point is `vision.block.NN`."""
    return name.startswith("vision.block.") and block_index(name) is not None
