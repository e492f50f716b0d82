"""What a VQA run asks: the conditions, the prompts and samples chosen, the swap partners, and the work items
(one prompt under one condition for one sample) in the order they are generated."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.sources import DataSource
from ..errors import UserError, bad_choice
from .tasks import Prompt, Task

CONDITIONS = ("image", "no-image", "blank", "swap")


SHARED = ("no-image", "blank")  # conditions whose input does not depend on the sample
CHUNK = 64  # work items per part file; fixed, so a resumed run finds the same grid whatever the batch size


@dataclass(frozen=True)
class Item:
    """A unit of generation: a prompt under a condition, for one sample (or for all, under shared conditions)."""

    condition: str
    prompt: Prompt
    sample: int  # -1 under shared conditions

    @property
    def key(self) -> str:
        """The parts files' key of this item (`item_key`)."""
        return item_key(self.condition, self.prompt.id, self.sample)


def check_conditions(conditions) -> list[str]:
    """Validated condition names, in canonical order."""
    if isinstance(conditions, str):
        conditions = [c.strip() for c in conditions.split(",") if c.strip()]
    for name in conditions:
        if name not in CONDITIONS:
            raise bad_choice("condition", name, CONDITIONS)
    if "image" not in conditions:
        raise UserError("conditions must include 'image' (the controls are measured against it)")
    return [c for c in CONDITIONS if c in conditions]


def select_prompts(task: Task, wanted) -> list[Prompt]:
    """The task's prompts, or those whose id or kind is listed in `wanted` (comma-separated or a list)."""
    prompts = task.prompts()
    if not wanted:
        return prompts
    if isinstance(wanted, str):
        wanted = [w.strip() for w in wanted.split(",") if w.strip()]
    kinds = {"yes_no", "multiple_choice", "open", "describe", "paraphrase"}
    ids = {p.id for p in prompts} | {p.id.rsplit("-", 1)[0] for p in prompts if p.kind == "multiple_choice"}
    for name in wanted:
        if name not in kinds and name not in ids:
            raise bad_choice(f"prompt of task {task.name}", name, sorted(kinds) + sorted(ids))

    def keep(p: Prompt) -> bool:
        kind = "paraphrase" if p.group else p.kind
        return kind in wanted or p.id in wanted or (p.kind == "multiple_choice" and p.id.rsplit("-", 1)[0] in wanted)

    return [p for p in prompts if keep(p)]


def map_classes(task: Task, source: DataSource) -> dict[int, str]:
    """Task class of each source class index: same name, or a task synonym equal to the source's class name."""
    def norm(text: str) -> str:
        return text.lower().replace("_", " ").replace("-", " ").strip()

    lookup = {norm(name): name for name in task.classes}
    lookup.update({norm(s): name for name, synonyms in task.classes.items() for s in synonyms})
    mapping = {}
    for index, name in enumerate(source.classes):
        if norm(name) not in lookup:
            raise UserError(f"data class {name!r} is not a class of task {task.name}; task classes: "
                            f"{', '.join(task.classes)} (add the data's name as a synonym in the task file)")
        mapping[index] = lookup[norm(name)]
    return mapping


def select_samples(source: DataSource, *, split: str | None, limit: int | None, seed: int) -> np.ndarray:
    """Row indices asked about: the given split (default: test when the source has splits, else all), at most
    `limit` of them (a seeded random subset, kept in source order)."""
    if split is None:
        split = "test" if source.has_splits else "all"
    valid = ("all", "train", "val", "test")
    if split not in valid:
        raise bad_choice("split", split, valid)
    rows = np.arange(len(source))
    if split != "all":
        rows = np.array([i for i, s in enumerate(source.samples) if s.split == split], dtype=int)
        if not len(rows):
            raise UserError(f"data {source.spec} has no samples in split {split!r}; valid: all"
                            + (", train, val, test" if source.has_splits else ""))
    if limit is not None:
        if limit < 1:
            raise UserError(f"limit must be a positive integer, got {limit}")
        if limit < len(rows):
            rows = np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
    return rows


def swap_partners(source: DataSource, rows: np.ndarray, *, seed: int) -> dict[int, int]:
    """For each row, a row of another class from another patient (uniform over the other classes), fixed by `seed`."""
    rng = np.random.default_rng(seed + 7)
    labels = np.array([source.samples[i].label for i in rows])
    groups = np.array([source.samples[i].group for i in rows])
    partners = {}
    for i, row in enumerate(rows):
        others = [k for k in np.unique(labels) if k != labels[i]]
        if not others:
            continue
        pool = rows[(labels == rng.choice(others)) & (groups != groups[i])]
        if len(pool):
            partners[int(row)] = int(rng.choice(pool))
    return partners


def plan_items(prompts: list[Prompt], rows: np.ndarray, conditions: list[str],
               asks: dict[int, str] | None = None) -> list[Item]:
    """Every generation to run, in a fixed order (descriptions only under the image condition). With `asks`
    (a question set's task), each sample gets only the prompt it maps to."""
    items = []
    for condition in conditions:
        for prompt in prompts:
            if prompt.kind == "describe" and condition != "image":
                continue
            if condition in SHARED:
                items.append(Item(condition, prompt, -1))
            else:
                items += [Item(condition, prompt, int(row)) for row in rows
                          if asks is None or asks.get(int(row)) == prompt.id]
    return items


def shown_image(item: Item, swaps: dict[int, int]) -> int:
    """The row whose image an item shows (-1: none or the blank image, the same for every item)."""
    if item.condition == "image":
        return item.sample
    return swaps.get(item.sample, -1) if item.condition == "swap" else -1


def generation_order(items: list[Item], swaps: dict[int, int]) -> list[Item]:
    """Items in the order a model that shares prefixes generates them: by condition, then by the image shown, so
    the prompts about one image fall in the same chunk and in consecutive batches, and the adapter runs the image
    and the chat's prefix once. A pure function of the items: a resumed run finds the same chunks whatever the
    batch size (other models keep the planned order, one prompt about many images per batch)."""
    rank = {name: i for i, name in enumerate(CONDITIONS)}
    images = {}
    for item in items:
        images.setdefault((item.condition, shown_image(item, swaps)), len(images))

    def key(item: Item):
        # within an image, questions of similar length together (less padding between prefix and question), short
        # to long and long to short on alternate images, so a batch spanning two images joins similar lengths
        image = (item.condition, shown_image(item, swaps))
        length = len(item.prompt.render())
        return rank[item.condition], image[1], item.sample, length if images[image] % 2 == 0 else -length

    return sorted(items, key=key)


def image_chunks(items: list[Item], swaps: dict[int, int]) -> list[list[Item]]:
    """Chunks of whole images (a chunk closes once it holds CHUNK items), so no image's prompts are split
    between two chunks' batches. A pure function of the items, like the fixed grid."""
    chunks, current, last = [], [], None
    for item in items:
        image = (item.condition, shown_image(item, swaps))
        if len(current) >= CHUNK and image != last:
            chunks.append(current)
            current = []
        current.append(item)
        last = image
    return chunks + [current] if current else chunks


def item_key(condition: str, prompt_id: str, sample: int) -> str:
    """The parts files' key of one generation (`sample` is -1 under shared conditions)."""
    return f"{condition}|{prompt_id}|{sample}"
