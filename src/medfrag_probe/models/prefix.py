"""Shared prefixes: several prompts about one image, with the image and the common start of the chat run once.

Each row's prefix is its tokens up to and including its last image token (the chat templates of LLaVA, LLaVA-NeXT
and Gemma 3 put the image first). A batch is answered in two steps: the language model runs each distinct prefix of
the batch once (tower and projector included, one image per prefix) and keeps the key/value cache; then every row
continues from its prefix's cache with its own question. Within `reusing_prefixes`, the prefixes a batch shares with
the previous batch are not run again.

Rows are laid out as `padding | prefix | padding | own tokens` with the padding masked, and the position of each
token is its count of unmasked tokens before it (what `generate` derives from the attention mask), so every row
sees the positions and context it has when run alone: the answers are those of the unshared run, up to
floating-point summation order. Not shared: prefix-LM models (PaliGemma: the image tokens attend to the
question), multimodal rotary positions (Qwen2-VL), and batches that could reach past a sliding attention window
(the padding would take places in it).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
from dataclasses import dataclass

import torch

IMAGE_KEYS = ("pixel_values", "image_sizes")  # per-row image inputs (one image per row)


@dataclass
class SharedBatch:
    """A batch re-laid around its prefixes: their cache (one row per batch row) and the rows' full inputs."""

    cache: object
    inputs: dict  # input_ids, attention_mask (padding | prefix | padding | own tokens), other per-token tensors
    start: int  # width of the prefix block

    def positions(self) -> torch.Tensor:
        """Position of each token: the number of unmasked tokens before it."""
        return positions(self.inputs["attention_mask"])


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def prefix_lengths(inputs: dict, image_token_id: int | None) -> list[int] | None:
    """Each row's prefix length (its tokens through its last image token), or None when the batch cannot share:
    a row without image tokens or without tokens after them, or image inputs that are not one per row."""
    ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
    if image_token_id is None or ids is None or mask is None:
        return None
    if any(inputs.get(k) is not None and len(inputs[k]) != len(ids) for k in IMAGE_KEYS):
        return None
    lengths = []
    for row, keep in zip(ids, mask.bool()):
        row = row[keep]
        image = (row == image_token_id).nonzero()
        if not len(image) or int(image[-1]) + 1 >= len(row):
            return None
        lengths.append(int(image[-1]) + 1)
    return lengths


def laid_width(inputs: dict, lengths: list[int]) -> int:
    """Width of the re-laid rows: the widest prefix plus the widest question."""
    own = [int(keep.sum()) - n for keep, n in zip(inputs["attention_mask"], lengths)]
    return max(lengths) + max(own)


@dataclass
class _Prefix:
    """One prefix's place in the cache of the forward that ran it (its row; the last `length` positions)."""

    cache: object
    row: int
    length: int


class PrefixMemo:
    """The prefixes of the last batch: the next batch runs only those it does not share with it."""

    def __init__(self):
        self.entries: dict[str, _Prefix] = {}


def _row_key(inputs: dict, row: int, length: int, tokenwise: list[str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    keep = inputs["attention_mask"][row].bool()
    parts = [(k, inputs[k][row][keep][:length]) for k in ("input_ids", *tokenwise)]
    parts += [(k, inputs[k][row]) for k in IMAGE_KEYS if inputs.get(k) is not None]
    for name, value in parts:
        digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(value.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())  # any dtype
    return digest.hexdigest()


@torch.inference_mode()
def prefill(model, inputs: dict, lengths: list[int], memo: PrefixMemo | None = None) -> SharedBatch:
    """Run each distinct prefix of the batch once (those of the previous batch come from `memo`) and lay the rows
    out as padding | prefix | padding | own tokens, with a cache of one row per row."""
    ids = inputs["input_ids"]
    tokenwise = [k for k, v in inputs.items()
                 if torch.is_tensor(v) and k not in ("input_ids", "attention_mask") and v.shape == ids.shape]
    keys = [_row_key(inputs, r, n, tokenwise) for r, n in enumerate(lengths)]
    known = memo.entries if memo is not None else {}
    missing = [keys.index(k) for k in dict.fromkeys(keys) if k not in known]
    fresh = _run_prefixes(model, inputs, lengths, missing, tokenwise) if missing else []
    entries = {**{k: known[k] for k in keys if k in known}, **{keys[r]: e for r, e in zip(missing, fresh)}}
    if memo is not None:
        memo.entries = entries  # the next batch most often asks about the same images
    cache = _stack([entries[k] for k in keys], max(lengths))
    laid = _layout(inputs, range(len(ids)), lengths, tokenwise, questions=True)
    return SharedBatch(cache=cache, inputs=laid, start=max(lengths))


def _layout(inputs: dict, rows, lengths: list[int], tokenwise: list[str], *, questions: bool) -> dict:
    """The given rows re-laid, padding masked: `padding | prefix` (the prefixes, left-padded to the longest), or
    with `questions`, `padding | prefix | padding | question` (questions left-padded to the longest as well)."""
    mask = inputs["attention_mask"].bool()
    pad_id = int(inputs["input_ids"][~mask][0]) if (~mask).any() else 0
    rows = list(rows)
    width = max(lengths[r] for r in rows)
    own = {r: int(mask[r].sum()) - lengths[r] if questions else 0 for r in rows}
    widest = max(own.values())
    laid: dict[str, list] = {k: [] for k in ("input_ids", *tokenwise, "attention_mask")}
    for r in rows:
        n, lead, gap = lengths[r], width - lengths[r], widest - own[r]
        for name in ("input_ids", *tokenwise):
            row = inputs[name][r][mask[r]][:n + own[r]]
            fill = row.new_full((), pad_id if name == "input_ids" else 0)
            laid[name].append(torch.cat([fill.expand(lead), row[:n], fill.expand(gap), row[n:]]))
        ones = torch.ones(n + own[r], dtype=inputs["attention_mask"].dtype, device=mask.device)
        laid["attention_mask"].append(torch.cat([ones.new_zeros(lead), ones[:n], ones.new_zeros(gap), ones[n:]]))
    return {k: torch.stack(v) for k, v in laid.items()}


def _run_prefixes(model, inputs, lengths, rows: list[int], tokenwise) -> list[_Prefix]:
    """One forward over the given rows' prefixes, left-padded to the longest."""
    prefix = _layout(inputs, rows, lengths, tokenwise, questions=False)
    images = {k: inputs[k][rows] for k in IMAGE_KEYS if inputs.get(k) is not None}
    out = model(**prefix, **images, position_ids=positions(prefix["attention_mask"]), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None:
        raise RuntimeError(f"{type(model).__name__} returned no key/value cache for the shared prefix")
    return [_Prefix(cache, i, lengths[r]) for i, r in enumerate(rows)]


def _stack(prefixes: list[_Prefix], width: int):
    """A cache with one row per prefix, each left-padded (zeros, masked) to `width` positions.

    Built from the layers' key and value tensors (`cache.layers[i].keys/.values`, transformers 5); the layers are
    copied shallowly and given new tensors, so the memo's caches are never written to."""
    template = prefixes[0].cache
    stacked = copy.copy(template)
    stacked.layers = []
    for index, layer in enumerate(template.layers):
        new = copy.copy(layer)
        for name in ("keys", "values"):
            rows = []
            for p in prefixes:
                tensor = getattr(p.cache.layers[index], name)[p.row:p.row + 1, :, -p.length:]
                pad = tensor.new_zeros((1, tensor.shape[1], width - p.length, *tensor.shape[3:]))
                rows.append(torch.cat([pad, tensor], dim=2))
            setattr(new, name, torch.cat(rows))
        if isinstance(getattr(new, "cumulative_length", None), int):
            new.cumulative_length = width
        stacked.layers.append(new)
    return stacked


def branch(cache):
    """A cache that a forward may extend while `cache` stays as it is: the layers are copied shallowly, and the
    layers of transformers' dynamic caches extend by concatenation into new tensors, never writing in place."""
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


def cache_argument(model) -> str:
    """The keyword a model's forward takes its key/value cache by (`cache` from transformers 5.2x on)."""
    return "cache" if accepts(model, "cache") else "past_key_values"


def accepts(model, name: str) -> bool:
    """Whether the model's forward takes keyword `name` (looked up once per model class)."""
    return name in _parameters(type(model).forward)


@functools.cache
def _parameters(forward) -> frozenset[str]:
    return frozenset(inspect.signature(forward).parameters)
