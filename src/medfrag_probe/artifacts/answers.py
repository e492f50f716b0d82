"""VQA outputs: `answers.jsonl` (one `VQARecord` per sample x prompt x condition) and `summary.json` (the scores,
identity and provenance of the run). `summary.json` is written last: a folder that holds it holds a finished run.

    OUT/answers.jsonl     every answer, how it was parsed and scored
    OUT/summary.json      conditions, classification, robustness measures, model/data identity, versions
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .._fs import atomic_write
from ..errors import UserError
from ._record import Record, folders, jsonl_text, read_jsonl

ANSWERS = "answers.jsonl"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class VQARecord(Record):
    """One answer: a sample, a prompt, a condition, the raw response and how it was scored."""

    sample_id: str
    prompt_id: str
    condition: str
    response: str
    parsed: str | None
    correct: bool | None
    refused: bool
    answer_kind: str
    kind: str
    expected: str | None
    class_pred: str | None
    label: str
    group: str
    split: str
    paraphrase: str = ""  # paraphrase group of the prompt ("" when none)
    negated: bool = False  # the prompt is a negation: its expected answer is inverted
    swap_id: str = ""
    swap_label: str = ""
    swap_expected: str | None = None
    option_probs: dict | None = None  # scored mode: probability of each option (yes/no, or option letters)
    class_probs: dict | None = None  # scored mode: the same mass per task class, where the options name classes


@dataclass(frozen=True)
class VQARun:
    """A finished VQA output folder: its summary, and its answers on demand."""

    folder: Path
    summary: dict

    def answers(self) -> list[VQARecord]:
        return read_answers(self.folder)


def write_answers(out: str | Path, records: list[VQARecord]) -> None:
    """`answers.jsonl`, replaced atomically."""
    atomic_write(Path(out) / ANSWERS, jsonl_text(records))


def write_summary(out: str | Path, summary: dict) -> None:
    """`summary.json`, replaced atomically; write it after the answers (it marks the run finished)."""
    atomic_write(Path(out) / SUMMARY, json.dumps(summary, indent=1))


def read_answers(folder: str | Path) -> list[VQARecord]:
    """The answers of one VQA output folder."""
    path = Path(folder) / ANSWERS
    if not path.is_file():
        raise UserError(f"no VQA answers in {folder} ({ANSWERS} not found); run `medfrag-probe vqa` first")
    return [VQARecord.from_record(row, where=f"{path} line {n}") for n, row in enumerate(read_jsonl(path), start=1)]


def read_summary(folder: str | Path) -> dict:
    """The summary of one finished VQA output folder."""
    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise UserError(f"no finished VQA run in {folder} ({SUMMARY} not found); run `medfrag-probe vqa` first")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not JSON ({exc.msg}); the file is damaged") from None
    if not isinstance(summary, dict) or "model" not in summary or "data" not in summary:
        raise UserError(f"{path} is not a VQA summary (no model or data)")
    return summary


def is_finished(folder: str | Path) -> bool:
    """Whether `folder` holds a finished VQA run (summary and answers)."""
    return (Path(folder) / SUMMARY).is_file() and (Path(folder) / ANSWERS).is_file()


def find_runs(paths, *, depth: int = 2) -> list[VQARun]:
    """Every finished VQA run in `paths` or up to `depth` folders below them."""
    runs, roots = [], folders(paths)
    for root in roots:
        candidates = [root, *(p for level in range(1, depth + 1) for p in root.glob("/".join(["*"] * level)))]
        for folder in sorted({c for c in candidates if is_finished(c)}, key=lambda c: c / SUMMARY):
            runs.append(VQARun(folder, read_summary(folder)))
    if not runs:
        raise UserError(f"no VQA results ({SUMMARY} + {ANSWERS}) in {', '.join(map(str, roots))}; "
                        "run `medfrag-probe vqa` first")
    return runs
