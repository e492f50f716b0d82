"""`vqa`: ask a VLM every prompt of a task about every image, under controls, and score the answers.

    from medfrag_probe import vqa
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

By job: `plan` (what is asked), `generation` (asking, resuming), `scoring` (reading the answers), `measures`
(the summary's statistics); this module runs them in order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from .._fs import output_lock, remove_stale_tmp
from .._log import info
from .._provenance import device_info, versions
from ..artifacts.answers import write_answers, write_summary
from ..data.sources import DataSource, open_source
from ..errors import UserError, bad_choice, option
from .generation import generate_all, read_parts, start_parts
from .plan import (
    check_conditions,
    map_classes,
    plan_items,
    select_prompts,
    select_samples,
    swap_partners,
)
from .scoring import score_answers
from .tasks import resolve_task

ANSWER_MODES = ("generate", "score")


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
        parts = start_parts(out, identity, overwrite=overwrite, rows={s.id: i for i, s in enumerate(source.samples)})
        swaps = swap_partners(source, rows, seed=seed)
        items = plan_items(chosen, rows, conditions, asks=task.asks)
        start = time.perf_counter()
        generate_all(adapter, source, items, swaps, parts, batch_size=batch_size,
                      tokens={"answer": max_new_tokens, "describe": describe_tokens}, scored=answer_mode == "score")
        records = score_answers(task, source, class_map, chosen, rows, swaps, conditions, read_parts(parts))
        answered = {r.sample_id for r in records if r.condition == "image"}
        extra = {"class_map": {source.classes[k]: v for k, v in class_map.items()},
                 "failed_samples": [source.samples[r].id for r in rows if source.samples[r].id not in answered]}
        return _finish(records, out=out, parts=parts, task=task, source=source, adapter=adapter, identity=identity,
                       seconds=time.perf_counter() - start, describe_with=describe_with, seed=seed, device=device,
                       extra=extra)


def _check_numbers(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")


def _identity(adapter, source, task, prompts, rows, **settings) -> dict:
    prompt_text = json.dumps([[p.id, p.kind, p.render()] for p in prompts])
    prints = adapter.fingerprints()  # hashes every tower and projector weight: once per run
    return {"model": adapter.spec, "model_fingerprint": prints.get("model", ""),
            "vision_fingerprint": prints.get("vision", ""),
            "data": source.spec, "data_fingerprint": source.fingerprint(), "task": task.name,
            "prompts_fingerprint": hashlib.sha256(prompt_text.encode()).hexdigest()[:16],
            "rows_fingerprint": hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16],
            **{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in settings.items()}}


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
