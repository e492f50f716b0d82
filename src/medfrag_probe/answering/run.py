"""`vqa`: ask a VLM every prompt of a task about every image, under controls, and score the answers.

    from medfrag_probe.answering import vqa
    summary = vqa("tiny:llava", "synth:brain-mri?n=64", "synth-brain-mri", conditions=("image", "no-image"))
    summary["conditions"]["image"]["accuracy"]

Conditions: `image` (the sample's image), `no-image` (text only), `blank` (a uniform grey image of the sample's
size) and `swap` (an image of another class from another patient, fixed by the seed). `no-image` and `blank` do not
depend on the sample, so each prompt is generated once under them and its answer scored against every sample.
Generation is greedy through the processor's chat template, batched with left padding. For models that share
prefixes (`models.prefix`), the prompts about one image are generated in consecutive batches, so the image and the
chat text before it are run once per image; the answers are those of an unshared run.

Writes `OUT/answers.jsonl` (one `VQARecord` per sample x prompt x condition) and `OUT/summary.json`. Work is
written in fixed chunks of work items under `OUT/.parts/`, so a killed run resumes where it stopped; a run whose
model, data, task or settings differ from the parts found is refused unless `overwrite`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._fs import atomic_write, output_lock, read_stamp, remove_stale_tmp, stamp_differences, write_stamp
from .._log import info, is_quiet
from .._provenance import device_info, versions
from ..artifacts.answers import ANSWERS, SUMMARY, VQARecord, read_answers, read_summary, write_answers, write_summary
from ..data.images import ImageError
from ..data.sources import DataSource, decode_hint, open_source
from ..errors import UserError, bad_choice, option
from .parse import Parsed, parse_class, parse_option, parse_yes_no
from .tasks import Prompt, Task, resolve_task

CONDITIONS = ("image", "no-image", "blank", "swap")
ANSWER_MODES = ("generate", "score")
SCORED_KINDS = ("yes_no", "multiple_choice")  # closed questions: their options can be scored
SHARED = ("no-image", "blank")  # conditions whose input does not depend on the sample
CHUNK = 64  # work items per part file; fixed, so a resumed run finds the same grid whatever the batch size
BLANK_GREY = (128, 128, 128)


@dataclass(frozen=True)
class _Item:
    """A unit of generation: a prompt under a condition, for one sample (or for all, under shared conditions)."""

    condition: str
    prompt: Prompt
    sample: int  # -1 under shared conditions


def vqa(model, data, task, *, conditions=("image",), prompts=None, out: str | Path = "probes/vqa",
        batch_size: int = 8, max_new_tokens: int = 32, describe_tokens: int = 128, device: str = "auto",
        dtype: str = "float32", seed: int = 0, split: str | None = None, limit: int | None = None,
        describe_with: str | None = "vlm", overwrite: bool = False, trust_remote_code: bool = False,
        answer_mode: str = "generate") -> dict:
    """Generate, parse and score answers; write answers.jsonl and summary.json under `out`; return the summary.

    `model` is a model spec or a loaded adapter; `data` a data spec or source; `task` a task name, path or `Task`.
    `prompts` keeps only the prompt ids (or kinds: yes_no, multiple_choice, open, describe, paraphrase) listed.
    `describe_with` names the text classifier of the description pipeline (see `vqa.describe`), None to skip it.
    `answer_mode="score"` answers closed questions (yes/no, multiple choice) by the model's probability of each
    option's first answer token after the chat template (a constrained choice: no generation, no parsing); open
    questions and descriptions are still generated. Each scored record carries `option_probs`.
    """
    from ..devices import resolve_device
    from ..models.loading import load_adapter

    conditions = check_conditions(conditions)
    if answer_mode not in ANSWER_MODES:
        raise bad_choice("answer mode", answer_mode, ANSWER_MODES)
    if describe_with:
        from .describe import check_method

        check_method(describe_with)
    _check_numbers(batch_size=batch_size, max_new_tokens=max_new_tokens, describe_tokens=describe_tokens)
    source = data if isinstance(data, DataSource) else open_source(data)
    task = resolve_task(task, source)
    if task.asks is not None and "swap" in conditions:
        raise UserError("the image-swap control needs the answer to a question about the swapped image, which a "
                        f"question set does not give; drop 'swap' from the conditions of task {task.name}")
    class_map = map_classes(task, source)
    chosen = select_prompts(task, prompts)
    rows = select_samples(source, split=split, limit=limit, seed=seed)
    adapter = model if not isinstance(model, str) else load_adapter(model, lm=True, device=str(resolve_device(device)),
                                                                     dtype=dtype, trust_remote_code=trust_remote_code)
    if not adapter.can_generate:
        raise UserError(f"model {adapter.spec} ({adapter.arch}) is an image encoder and cannot answer questions; vqa "
                        "needs a vision-language model (llava, llava-next, gemma3, paligemma, qwen2-vl, ...)")
    out = Path(out)
    if answer_mode == "score" and not hasattr(adapter, "option_scores"):
        raise UserError(f"model {adapter.spec} cannot score options; use answer_mode 'generate'")
    identity = _identity(adapter, source, task, chosen, rows, conditions=conditions, seed=seed,
                         max_new_tokens=max_new_tokens, describe_tokens=describe_tokens,
                         **({"answer_mode": answer_mode} if answer_mode != "generate" else {}))
    if out.is_file():
        raise UserError(f"{option('out')} {out} is a file; vqa writes a folder (answers.jsonl, summary.json)")
    with output_lock(out, folder=True, what="VQA folder"):
        remove_stale_tmp(out)
        remove_stale_tmp(out / ".parts")
        parts = _start(out, identity, overwrite=overwrite, rows={s.id: i for i, s in enumerate(source.samples)})
        swaps = swap_partners(source, rows, seed=seed)
        items = plan_items(chosen, rows, conditions, asks=task.asks)
        start = time.perf_counter()
        _generate_all(adapter, source, items, swaps, parts, batch_size=batch_size,
                      tokens={"answer": max_new_tokens, "describe": describe_tokens}, scored=answer_mode == "score")
        records = _score(task, source, class_map, chosen, rows, swaps, conditions, _read_parts(parts))
        answered = {r.sample_id for r in records if r.condition == "image"}
        extra = {"class_map": {source.classes[k]: v for k, v in class_map.items()},
                 "failed_samples": [source.samples[r].id for r in rows if source.samples[r].id not in answered]}
        return _finish(records, out=out, parts=parts, task=task, source=source, adapter=adapter, identity=identity,
                       seconds=time.perf_counter() - start, describe_with=describe_with, seed=seed, device=device,
                       extra=extra)


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


def _check_numbers(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")


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
               asks: dict[int, str] | None = None) -> list[_Item]:
    """Every generation to run, in a fixed order (descriptions only under the image condition). With `asks`
    (a question set's task), each sample gets only the prompt it maps to."""
    items = []
    for condition in conditions:
        for prompt in prompts:
            if prompt.kind == "describe" and condition != "image":
                continue
            if condition in SHARED:
                items.append(_Item(condition, prompt, -1))
            else:
                items += [_Item(condition, prompt, int(row)) for row in rows
                          if asks is None or asks.get(int(row)) == prompt.id]
    return items


def _identity(adapter, source, task, prompts, rows, **settings) -> dict:
    prompt_text = json.dumps([[p.id, p.kind, p.render()] for p in prompts])
    prints = adapter.fingerprints()  # hashes every tower and projector weight: once per run
    return {"model": adapter.spec, "model_fingerprint": prints.get("model", ""),
            "vision_fingerprint": prints.get("vision", ""),
            "data": source.spec, "data_fingerprint": source.fingerprint(), "task": task.name,
            "prompts_fingerprint": hashlib.sha256(prompt_text.encode()).hexdigest()[:16],
            "rows_fingerprint": hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16],
            **{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in settings.items()}}


def _start(out: Path, identity: dict, *, overwrite: bool, rows: dict[str, int]) -> Path:
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


def _key(item: _Item) -> str:
    return item_key(item.condition, item.prompt.id, item.sample)


def item_key(condition: str, prompt_id: str, sample: int) -> str:
    """The parts files' key of one generation (`sample` is -1 under shared conditions)."""
    return f"{condition}|{prompt_id}|{sample}"


def _read_parts(parts: Path) -> dict[str, str]:
    """Responses generated so far, by work-item key (scored answers as {"response", "option_probs"})."""
    done = {}
    for path in sorted(parts.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row if row.get("option_probs") is not None else row["response"]
    return done


def _generate_all(adapter, source, items, swaps, parts: Path, *, batch_size: int, tokens: dict,
                  scored: bool = False) -> None:
    """Generate every chunk of work items not yet in the parts folder."""
    from tqdm.auto import tqdm

    done = _read_parts(parts)
    by_image = bool(getattr(adapter, "share_prefix", False))
    if by_image:
        items = generation_order(items, swaps)
        chunks = image_chunks(items, swaps)
    else:
        chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    todo = [(k, c) for k, c in enumerate(chunks) if not all(_key(item) in done for item in c)]
    if len(todo) < len(chunks):
        info(f"vqa: resuming; {len(chunks) - len(todo)} of {len(chunks)} chunks already answered")
    images = _ImageCache(source, adapter)
    reuse = getattr(adapter, "reusing_prefixes", None)
    bar = tqdm(total=sum(len(c) for _, c in todo), desc="vqa", unit="answer", disable=is_quiet())
    with reuse() if reuse is not None else nullcontext(), bar:
        for k, chunk in todo:
            rows = []
            for batch in _batches([it for it in chunk if _key(it) not in done], batch_size, scored=scored):
                for item, response in zip(batch, _answer(adapter, batch, images, swaps, tokens, scored=scored)):
                    rows.append({"key": _key(item), **(response if isinstance(response, dict)
                                                       else {"response": response})})
                bar.update(len(batch))
            atomic_write(parts / f"chunk-{k:06d}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def shown_image(item: _Item, swaps: dict[int, int]) -> int:
    """The row whose image an item shows (-1: none or the blank image, the same for every item)."""
    if item.condition == "image":
        return item.sample
    return swaps.get(item.sample, -1) if item.condition == "swap" else -1


def generation_order(items: list[_Item], swaps: dict[int, int]) -> list[_Item]:
    """Items in the order a model that shares prefixes generates them: by condition, then by the image shown, so
    the prompts about one image fall in the same chunk and in consecutive batches, and the adapter runs the image
    and the chat's prefix once. A pure function of the items: a resumed run finds the same chunks whatever the
    batch size (other models keep the planned order, one prompt about many images per batch)."""
    rank = {name: i for i, name in enumerate(CONDITIONS)}
    images = {}
    for item in items:
        images.setdefault((item.condition, shown_image(item, swaps)), len(images))

    def key(item: _Item):
        # within an image, questions of similar length together (less padding between prefix and question), short
        # to long and long to short on alternate images, so a batch spanning two images joins similar lengths
        image = (item.condition, shown_image(item, swaps))
        length = len(item.prompt.render())
        return rank[item.condition], image[1], item.sample, length if images[image] % 2 == 0 else -length

    return sorted(items, key=key)


def image_chunks(items: list[_Item], swaps: dict[int, int]) -> list[list[_Item]]:
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


def _batches(items: list[_Item], size: int, *, scored: bool = False):
    """Batches of items sharing a condition and an answer length (descriptions apart; scored items apart)."""
    by_kind: dict[tuple, list[_Item]] = {}
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


def _answer(adapter, batch: list[_Item], images: _ImageCache, swaps: dict[int, int], tokens: dict, *,
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


def class_probabilities(task: Task, prompt: Prompt, probs: dict | None) -> dict | None:
    """Scored option mass per task class: multiple-choice letters map to their classes; yes/no only with two
    classes (yes names the positive class, inverted for a negated wording)."""
    if not probs:
        return None
    if prompt.kind == "multiple_choice":
        return {prompt.options[letter]: p for letter, p in probs.items() if letter in prompt.options}
    positive = [c for c in task.classes if c in task.positive]
    negative = [c for c in task.classes if c not in task.positive]
    if prompt.kind != "yes_no" or len(positive) != 1 or len(negative) != 1:
        return None
    yes, no = (probs["no"], probs["yes"]) if prompt.negated else (probs["yes"], probs["no"])
    return {positive[0]: yes, negative[0]: no}


def option_texts(prompt: Prompt) -> list[str]:
    """What a scored closed question chooses among: yes/no, or the option letters."""
    return ["yes", "no"] if prompt.kind == "yes_no" else list(prompt.options)


def _scored(adapter, inputs, items: list[_Item]) -> list[dict]:
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


def parse_answer(task: Task, prompt: Prompt, response: str) -> Parsed:
    """Parse a response by the prompt's kind (descriptions are not parsed)."""
    if prompt.kind == "yes_no":
        return parse_yes_no(response, prompt.text)
    if prompt.kind == "multiple_choice":
        return parse_option(response, prompt.options)
    if prompt.kind == "open":
        return parse_class(response, task.classes)
    return Parsed(None, "description")


def implied_class(task: Task, prompt: Prompt, parsed: Parsed) -> str | None:
    """The class an answer names: the option's class, the open answer, or yes/no where it picks one class."""
    if not parsed.answered:
        return None
    if prompt.kind == "multiple_choice":
        return prompt.options.get(parsed.answer)
    if prompt.kind == "open":
        return parsed.answer
    if prompt.kind == "yes_no" and len(task.classes) == 2:  # with more classes a yes/no names no single class
        negative = [c for c in task.classes if c not in task.positive]
        said_yes = (parsed.answer == "yes") != prompt.negated
        chosen = task.positive if said_yes else negative
        return chosen[0] if len(chosen) == 1 else None
    return None


def _score(task, source, class_map, prompts, rows, swaps, conditions, responses) -> list[VQARecord]:
    """One record per sample x prompt x condition, shared-condition answers scored against every sample."""
    records = []
    asks = task.asks
    for item in plan_items(prompts, rows, conditions, asks=asks):
        response = responses.get(_key(item))
        probs = None
        if isinstance(response, dict):
            response, probs = response["response"], response.get("option_probs")
        if response is None:  # not generated, or its image could not be read
            continue
        for row in (rows if item.sample < 0 else [item.sample]):
            if item.condition == "swap" and int(row) not in swaps:
                continue
            if asks is not None and asks.get(int(row)) != item.prompt.id:  # a shared answer to another question
                continue
            records.append(_record(task, source, class_map, item.prompt, item.condition, int(row), response, swaps,
                                   probs))
    return records


def _record(task, source, class_map, prompt, condition, row, response, swaps, probs=None) -> VQARecord:
    sample = source.samples[row]
    label = class_map[sample.label]
    parsed = parse_answer(task, prompt, response)
    expected = task.expected(prompt, label)
    swap = {}
    if condition == "swap":
        partner = source.samples[swaps[row]]
        swap_label = class_map[partner.label]
        swap = dict(swap_id=partner.id, swap_label=swap_label, swap_expected=task.expected(prompt, swap_label))
    return VQARecord(sample_id=sample.id, prompt_id=prompt.id, condition=condition, response=response,
                     parsed=parsed.answer, correct=None if expected is None else parsed.answer == expected,
                     refused=parsed.kind == "refusal", answer_kind=parsed.kind, kind=prompt.kind, expected=expected,
                     class_pred=implied_class(task, prompt, parsed), label=label, group=sample.group,
                     split=sample.split, paraphrase=prompt.group, negated=prompt.negated, option_probs=probs,
                     class_probs=class_probabilities(task, prompt, probs), **swap)


def _finish(records, *, out, parts, task, source, adapter, identity, seconds, describe_with, seed, device,
            extra) -> dict:
    """Write answers.jsonl, run the description pipeline, write summary.json, drop the parts."""
    from .measures import summarise

    write_answers(out, records)
    summary = summarise(records, task)
    summary.update(model=adapter.spec, data=source.spec, task=task.name, classes=list(task.classes),
                   model_fingerprint=identity["model_fingerprint"], data_fingerprint=identity["data_fingerprint"],
                   vision_fingerprint=identity["vision_fingerprint"], reads_point=adapter.reads_point or "",
                   seconds=round(seconds, 2), identity=identity, versions=versions(), device=device_info(device),
                   **extra)
    if describe_with and any(r.kind == "describe" for r in records):
        from .describe import classify_descriptions

        summary["description"] = classify_descriptions(records, source=source, task=task, adapter=adapter,
                                                       method=describe_with, out=out / "description", seed=seed,
                                                       device=device)
    write_summary(out, summary)
    shutil.rmtree(parts, ignore_errors=True)
    info(f"vqa {adapter.spec} on {source.spec}: {headline(summary)}; wrote {out / 'answers.jsonl'}")
    return summary


def headline(summary: dict) -> str:
    """One line: accuracy (all / answered items), refusal rate and class skill under the image condition."""
    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    image = summary["conditions"].get("image", {})
    return (f"accuracy {fmt(image.get('accuracy'))} over {image.get('n_items', 0)} items (answered "
            f"{fmt(image.get('answered_accuracy'))}, refusals {fmt(image.get('refusal_rate'))}), class skill "
            f"{fmt(summary['classification'].get('skill'))}")
