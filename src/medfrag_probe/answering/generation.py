"""Asking the model: work items generated in fixed chunks of part files under `OUT/.parts/` (so a killed run resumes
where it stopped), in batches of one prompt kind, images decoded once per image, closed questions optionally
scored by option probabilities instead of generated."""

from __future__ import annotations

import json
import shutil
from contextlib import nullcontext
from pathlib import Path

from PIL import Image

from .._fs import atomic_write, read_stamp, stamp_differences, write_stamp
from .._log import info, is_quiet
from ..artifacts.answers import ANSWERS, SUMMARY, read_answers, read_summary
from ..data.images import ImageError
from ..data.sources import DataSource, decode_hint
from ..errors import UserError, option
from .plan import (
    CHUNK,
    SHARED,
    Item,
    generation_order,
    image_chunks,
    item_key,
)
from .tasks import Prompt

BLANK_GREY = (128, 128, 128)


SCORED_KINDS = ("yes_no", "multiple_choice")  # closed questions: their options can be scored


def start_parts(out: Path, identity: dict, *, overwrite: bool, rows: dict[str, int]) -> Path:
    """The parts folder for this run: resumed when its identity matches, refused when it does not."""
    parts = out / ".parts"
    meta = parts / "identity.json"
    finished = out / SUMMARY
    previous = read_stamp(meta)
    if previous is None and finished.is_file():
        previous = read_summary(out).get("identity")
    if previous is not None and previous != identity and not overwrite:
        diff = stamp_differences(previous, identity)
        raise UserError(f"{out} holds answers of a different run ({', '.join(diff)} differ); "
                        f"use {option('overwrite', True)} to replace them or {option('out')} to write elsewhere")
    if previous != identity or overwrite:
        shutil.rmtree(parts, ignore_errors=True)
    elif finished.is_file() and not meta.is_file():
        _restore_parts(out, parts, rows)
    parts.mkdir(parents=True, exist_ok=True)
    write_stamp(meta, identity)
    return parts


def _restore_parts(out: Path, parts: Path, rows: dict[str, int]) -> None:
    """A finished run asked again with nothing changed: its answers become the parts, so nothing is generated."""
    parts.mkdir(parents=True, exist_ok=True)
    restored = {}
    for rec in read_answers(out) if (out / ANSWERS).is_file() else []:
        sample = -1 if rec.condition in SHARED else rows[rec.sample_id]
        restored[item_key(rec.condition, rec.prompt_id, sample)] = {
            "response": rec.response, **({"option_probs": rec.option_probs} if rec.option_probs else {})}
    atomic_write(parts / "restored.jsonl", "".join(json.dumps({"key": k, **v}) + "\n" for k, v in restored.items()))


def read_parts(parts: Path) -> dict[str, str]:
    """Responses generated so far, by work-item key (scored answers as {"response", "option_probs"})."""
    done = {}
    for path in sorted(parts.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row if row.get("option_probs") is not None else row["response"]
    return done


def generate_all(adapter, source, items, swaps, parts: Path, *, batch_size: int, tokens: dict,
                  scored: bool = False) -> None:
    """Generate every chunk of work items not yet in the parts folder."""
    from tqdm.auto import tqdm

    done = read_parts(parts)
    by_image = bool(getattr(adapter, "share_prefix", False))
    if by_image:
        items = generation_order(items, swaps)
        chunks = image_chunks(items, swaps)
    else:
        chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    todo = [(k, c) for k, c in enumerate(chunks) if not all(item.key in done for item in c)]
    if len(todo) < len(chunks):
        info(f"vqa: resuming; {len(chunks) - len(todo)} of {len(chunks)} chunks already answered")
    images = _ImageCache(source, adapter)
    reuse = getattr(adapter, "reusing_prefixes", None)
    bar = tqdm(total=sum(len(c) for _, c in todo), desc="vqa", unit="answer", disable=is_quiet())
    with reuse() if reuse is not None else nullcontext(), bar:
        for k, chunk in todo:
            rows = []
            for batch in _batches([it for it in chunk if it.key not in done], batch_size, scored=scored):
                for item, response in zip(batch, _answer(adapter, batch, images, swaps, tokens, scored=scored)):
                    rows.append({"key": item.key, **(response if isinstance(response, dict)
                                                       else {"response": response})})
                bar.update(len(batch))
            atomic_write(parts / f"chunk-{k:06d}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _batches(items: list[Item], size: int, *, scored: bool = False):
    """Batches of items sharing a condition and an answer length (descriptions apart; scored items apart)."""
    by_kind: dict[tuple, list[Item]] = {}
    for item in items:
        key = (item.condition, item.prompt.kind == "describe", scored and item.prompt.kind in SCORED_KINDS)
        by_kind.setdefault(key, []).append(item)
    for group in by_kind.values():
        for i in range(0, len(group), size):
            yield group[i:i + size]


class _ImageCache:
    """Decoded images of the few rows a batch needs; a bad image is reported and answered as an empty response."""

    def __init__(self, source: DataSource, adapter=None):
        self.source = source
        self.keep = decode_hint(source, adapter)
        self.cache: dict[int, Image.Image | None] = {}
        self.errors: dict[int, str] = {}

    def get(self, row: int) -> Image.Image | None:
        if row not in self.cache:
            if len(self.cache) > 256:
                self.cache.clear()
            try:
                self.cache[row] = self.source.image(row, **self.keep)
            except ImageError as exc:
                self.errors[row] = str(exc)
                info(f"vqa: skipping {self.source.samples[row].id}: {exc}")
                self.cache[row] = None
        return self.cache[row]


def _answer(adapter, batch: list[Item], images: _ImageCache, swaps: dict[int, int], tokens: dict, *,
            scored: bool = False) -> list:
    """Responses of one batch (same condition): images chosen per condition, then one generate (or scoring) call;
    None where the image could not be read."""
    condition = batch[0].condition
    length = tokens["describe" if batch[0].prompt.kind == "describe" else "answer"]
    texts = [item.prompt.render() for item in batch]
    if scored and batch[0].prompt.kind in SCORED_KINDS:
        def run(inputs, items):
            return _scored(adapter, inputs, items)
    else:
        def run(inputs, items):
            return adapter.generate(inputs, max_new_tokens=length)
    if condition == "no-image":
        return run(adapter.chat_inputs(texts), batch)
    if condition == "blank":
        size = _first_size(images)
        pictures = [Image.new("RGB", size, BLANK_GREY) for _ in batch]
    else:
        rows = [item.sample if condition == "image" else swaps.get(item.sample, -1) for item in batch]
        pictures = [images.get(row) if row >= 0 else None for row in rows]
    keep = [i for i, p in enumerate(pictures) if p is not None]
    responses: list[str | None] = [None] * len(batch)
    if keep:
        answers = run(adapter.chat_inputs([texts[i] for i in keep], [pictures[i] for i in keep]),
                      [batch[i] for i in keep])
        for i, answer in zip(keep, answers):
            responses[i] = answer
    return responses


def option_texts(prompt: Prompt) -> list[str]:
    """What a scored closed question chooses among: yes/no, or the option letters."""
    return ["yes", "no"] if prompt.kind == "yes_no" else list(prompt.options)


def _scored(adapter, inputs, items: list[Item]) -> list[dict]:
    """Scored answers of one batch: the most probable option as the response, with every option's probability."""
    options = [option_texts(item.prompt) for item in items]
    probs = adapter.option_scores(inputs, options)  # case variants are scored together: "yes" is "Yes"
    out = []
    for opts, p in zip(options, probs):
        best = opts[max(range(len(opts)), key=lambda k: p[k])]
        out.append({"response": best.capitalize() if best in ("yes", "no") else best,
                    "option_probs": {o: round(float(v), 6) for o, v in zip(opts, p)}})
    return out


def _first_size(images: _ImageCache) -> tuple[int, int]:
    for row in range(len(images.source)):
        image = images.get(row)
        if image is not None:
            return image.size
    raise UserError(f"data {images.source.spec} has no readable image")
