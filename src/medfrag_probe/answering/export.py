"""`vqa export`: a task with its data, written for other evaluation harnesses, so their models (vLLM, API models,
sharded big models) can answer; `vqa import` then scores those answers with this package's parser and measures.

    from medfrag_probe.answering.export import export_task
    export_task("imagefolder:/data/brain", "brain-tumor-mri", "exports/brain", split="test")

Writes under `out`:

- `vlmevalkit/<NAME>.tsv`: a VLMEvalKit custom dataset (`index, image` as base64 PNG, `question`, option columns
  `A, B, ...` for multiple choice, `answer`, plus `sample_id, prompt_id, kind`). VLMEvalKit keeps the extra columns in
  its prediction file (`..._<NAME>.xlsx`, with a `prediction` column), which `vqa import` reads directly.
- `lmms_eval/<NAME>/`: an lmms-eval task (`<NAME>.yaml`, `utils.py`, `data.jsonl`, `images/`): a `generate_until`
  task over the JSON data; run it with `--include_path` on that folder and `--log_samples`, then import the
  `*_samples_<NAME>.jsonl` it writes (each record's `doc` carries `sample_id` and `prompt_id`).

Each row is one closed or open question (yes/no, multiple choice, open) about one image; descriptions are left out
(they need the description pipeline, which runs here). The rendered prompt text is exactly what `vqa` sends.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

from .._fs import atomic_write
from .._log import info
from ..data.images import ImageError
from ..data.sources import DataSource, open_source
from ..errors import UserError
from .plan import map_classes, plan_items, select_prompts, select_samples
from .tasks import resolve_task

KINDS = ("yes_no", "multiple_choice", "open")


def export_task(data, task, out: str | Path, *, prompts=None, split: str | None = None, limit: int | None = None,
                seed: int = 0, name: str | None = None, max_new_tokens: int = 32) -> dict:
    """Write the VLMEvalKit TSV and the lmms-eval task of (`data`, `task`) under `out`; return their paths."""
    source = data if isinstance(data, DataSource) else open_source(data)
    task = resolve_task(task, source)
    class_map = map_classes(task, source)
    chosen = [p for p in select_prompts(task, prompts) if p.kind in KINDS]
    if not chosen:
        raise UserError(f"no exportable prompt (yes_no, multiple_choice, open) among those of task {task.name}")
    rows = select_samples(source, split=split, limit=limit, seed=seed)
    name = _name(name or f"medfrag_{task.name}")
    out = Path(out)
    images, failed = _images(source, rows)
    table = []
    # the questions `vqa` would ask under the image condition, grouped by image (a stable sort keeps prompt order)
    for item in sorted(plan_items(chosen, rows, ["image"], asks=task.asks), key=lambda item: item.sample):
        if item.sample not in images:
            continue
        sample, prompt = source.samples[item.sample], item.prompt
        expected = task.expected(prompt, class_map[sample.label])
        table.append({"index": len(table), "sample_id": sample.id, "prompt_id": prompt.id, "kind": prompt.kind,
                      "question": prompt.render(), "answer": _shown(expected, prompt), "row": item.sample,
                      "options": prompt.options})
    if not table:
        raise UserError(f"nothing to export: no readable image among the {len(rows)} selected samples")
    paths = {"vlmevalkit": _vlmevalkit(table, images, out / "vlmevalkit" / f"{name}.tsv"),
             "lmms_eval": _lmms_eval(table, images, out / "lmms_eval" / name, name, max_new_tokens)}
    info(f"vqa export: {len(table)} questions about {len(images)} images ({len(failed)} unreadable) -> "
         f"{paths['vlmevalkit']}, {paths['lmms_eval']}")
    return {**{k: str(v) for k, v in paths.items()}, "questions": len(table), "images": len(images),
            "failed": failed}


def _name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "medfrag_task"


def _shown(expected: str | None, prompt) -> str:
    if expected is None:
        return ""
    if prompt.kind == "yes_no":
        return expected.capitalize()
    return expected.replace("_", " ") if prompt.kind == "open" else expected


def _images(source: DataSource, rows) -> tuple[dict[int, bytes], dict[str, str]]:
    """PNG bytes of each readable image (decoded by this package's rules, so the harness sees what `vqa` shows)."""
    images, failed = {}, {}
    for row in rows:
        try:
            image = source.image(int(row))
        except ImageError as exc:
            failed[source.samples[int(row)].id] = str(exc)
            continue
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        images[int(row)] = buffer.getvalue()
    return images, failed


def _vlmevalkit(table: list[dict], images: dict[int, bytes], path: Path) -> Path:
    letters = sorted({letter for r in table for letter in r["options"]})
    columns = ["index", "image", "question", *letters, "answer", "sample_id", "prompt_id", "kind"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for r in table:
        record = {"index": r["index"], "image": base64.b64encode(images[r["row"]]).decode(),
                  "question": _one_line(r["question"] if r["kind"] != "multiple_choice" else _stem(r["question"])),
                  "answer": r["answer"], "sample_id": r["sample_id"], "prompt_id": r["prompt_id"], "kind": r["kind"]}
        record.update({letter: r["options"].get(letter, "").replace("_", " ") for letter in letters})
        writer.writerow(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return path


def _stem(rendered: str) -> str:
    """The question of a rendered multiple-choice prompt without its option lines (VLMEvalKit lists the options)."""
    return rendered.split("\n")[0]


def _one_line(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", "\\n")


UTILS = '''"""lmms-eval hooks of a task exported by medfrag-probe (`medfrag-probe vqa export`); answers are scored back
with `medfrag-probe vqa import`, which reads `doc.sample_id` and `doc.prompt_id` of each logged sample."""

from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent


def doc_to_visual(doc):
    return [Image.open(HERE / doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    answer = results[0].strip().lower() if results else ""
    return {"exact_match": float(answer.rstrip(".").startswith(doc["answer"].lower()))}
'''


def _lmms_eval(table: list[dict], images: dict[int, bytes], folder: Path, name: str, max_new_tokens: int) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for row, data in images.items():
        target = folder / "images" / f"{row:07d}.png"
        if not target.is_file():
            atomic_write(target, data)
    lines = [json.dumps({"index": r["index"], "sample_id": r["sample_id"], "prompt_id": r["prompt_id"],
                         "kind": r["kind"], "question": r["question"], "answer": r["answer"],
                         "image": f"images/{r['row']:07d}.png"}) for r in table]
    atomic_write(folder / "data.jsonl", "\n".join(lines) + "\n")
    atomic_write(folder / "utils.py", UTILS)
    data_file = (folder / "data.jsonl").resolve()
    yaml_text = "\n".join([
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file))}",
        "test_split: test",
        "output_type: generate_until",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: answer",
        "generation_kwargs:",
        f"  max_new_tokens: {max_new_tokens}",
        "  temperature: 0",
        "  do_sample: false",
        "process_results: !function utils.process_results",
        "metric_list:",
        "  - metric: exact_match",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
        "  exported_by: medfrag-probe",
        ""])
    atomic_write(folder / f"{name}.yaml", yaml_text)
    return folder
