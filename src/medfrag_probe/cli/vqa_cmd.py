"""`medfrag-probe vqa` (generate and score answers), `vqa import` (score answers made elsewhere) and `vqa export`
(a task with its data for VLMEvalKit and lmms-eval)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import Device, Dtype, TrustRemoteCode

app = typer.Typer(no_args_is_help=True, invoke_without_command=True, rich_markup_mode=None,
                  help="Ask a VLM the task's questions under controls; parse, score and measure robustness.")

Task = Annotated[str, typer.Option("--task", "-t", help="Task name under configs/tasks/, a path to a task file, or "
                                   "hf-questions (the data set's own closed questions).")]


@app.callback()
def vqa_command(
    ctx: typer.Context,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="A VLM spec (see `models`).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Data spec (imagefolder:, manifest:, "
                                                "medmnist:, hf-dataset:, synth:).")] = None,
    task: Annotated[Optional[str], typer.Option("--task", "-t", help="Task name under configs/tasks/, a path to a "
                                                "task file, or hf-questions (the data set's own closed "
                                                "questions).")] = None,
    conditions: Annotated[str, typer.Option(help="image, no-image, blank, swap (comma-separated).")] = "image",
    prompts: Annotated[Optional[str], typer.Option(help="Keep these prompt ids or kinds (yes_no, multiple_choice, "
                                                   "open, describe, paraphrase); default all.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("probes/vqa"),
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length limit (tokens).")] = 32,
    describe_tokens: Annotated[int, typer.Option(help="Description length limit (tokens).")] = 128,
    describe_with: Annotated[str, typer.Option(help="Description classifier: vlm, encoder:SPEC, llm:SPEC or "
                                               "none.")] = "vlm",
    answer_mode: Annotated[str, typer.Option(help="generate (greedy text, parsed) or score (closed questions: the "
                                             "probability of each option's first answer token).")] = "generate",
    split: Annotated[Optional[str], typer.Option(help="all, train, val or test (default: test when the data has "
                                                 "splits, else all).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Ask about at most N samples (a seeded subset).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the swap pairing, subsets and description probes.")] = 0,
    device: Device = "auto",
    dtype: Dtype = "float32",
    overwrite: Annotated[bool, typer.Option(help="Replace answers of a different run in --out.")] = False,
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Generate answers (greedy, chat template, left-padded batches) and write answers.jsonl + summary.json."""
    if ctx.invoked_subcommand is not None:
        return
    from ..answering import vqa
    from ..errors import UserError

    missing = [name for name, value in (("--model", model), ("--data", data), ("--task", task)) if not value]
    if missing:
        raise UserError(f"vqa needs {', '.join(missing)} (or the subcommand `vqa import FILE`)")
    summary = vqa(model, data, task, conditions=conditions, prompts=prompts, out=out, batch_size=batch_size,
                  max_new_tokens=max_new_tokens, describe_tokens=describe_tokens, device=device, dtype=dtype,
                  seed=seed, split=split, limit=limit, describe_with=None if describe_with == "none" else describe_with,
                  overwrite=overwrite, trust_remote_code=trust_remote_code, answer_mode=answer_mode)
    _report(summary, out)


def _report(summary: dict, out: Path) -> None:
    from ..answering.run import headline

    typer.echo(f"{summary['model']} on {summary['data']}: {headline(summary)} -> {out / 'summary.json'}")


@app.command("import", no_args_is_help=True)
def import_command(
    file: Annotated[Path, typer.Argument(help="Answers made elsewhere: JSONL, JSON, CSV, TSV or XLSX (lmms-eval "
                                         "samples, VLMEvalKit predictions, or sample_id/prompt_id/response rows).")],
    data: Annotated[str, typer.Option("--data", "-d", help="The data spec the answers are about.")],
    task: Task,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("probes/vqa-import"),
    model: Annotated[str, typer.Option(help="Model name to record (match the probe caches' model to bridge).")] = "",
    id_field: Annotated[str, typer.Option(help="Field holding the sample id (dotted for nested, e.g. "
                                          "doc.image_id).")] = "",
    by_position: Annotated[bool, typer.Option(help="Integer ids are positions in the data.")] = False,
    condition: Annotated[str, typer.Option(help="Condition of rows without one.")] = "image",
    kind: Annotated[Optional[str], typer.Option(help="Kind of questions that match no task prompt: yes_no or "
                                                "open.")] = None,
) -> None:
    """Parse and score answers produced by another tool with the same parser and measures."""
    from ..answering.importer import import_answers

    summary = import_answers(file, data, task, out=out, model=model, id_field=id_field, by_position=by_position,
                             condition=condition, kind=kind)
    _report(summary, out)


@app.command("export", no_args_is_help=True)
def export_command(
    data: Annotated[str, typer.Option("--data", "-d", help="Data spec of the images to ask about.")],
    task: Task,
    out: Annotated[Path, typer.Option(help="Output folder (vlmevalkit/ and lmms_eval/ go under it).")],
    prompts: Annotated[Optional[str], typer.Option(help="Keep these prompt ids or kinds; default every yes_no, "
                                                   "multiple_choice and open prompt.")] = None,
    split: Annotated[Optional[str], typer.Option(help="all, train, val or test (default: test when the data has "
                                                 "splits, else all).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="At most N samples (a seeded subset).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subset.")] = 0,
    name: Annotated[Optional[str], typer.Option(help="Dataset/task name in the harnesses (default "
                                                "medfrag_TASK).")] = None,
) -> None:
    """Write the task with its images as a VLMEvalKit custom-dataset TSV and an lmms-eval task; answer with those
    harnesses, then score their prediction files with `vqa import`."""
    from ..answering.export import export_task

    paths = export_task(data, task, out, prompts=prompts, split=split, limit=limit, seed=seed, name=name)
    typer.echo(f"{paths['questions']} questions about {paths['images']} images -> {paths['vlmevalkit']} and "
               f"{paths['lmms_eval']}")
