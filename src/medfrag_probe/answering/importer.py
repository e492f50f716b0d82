"""`vqa import`: answers produced elsewhere, parsed and scored exactly like `vqa`'s own.

    from medfrag_probe.answering.importer import import_answers
    import_answers("samples_brain.jsonl", "imagefolder:/data/brain", "brain-tumor-mri", model="llava-1.5-7b")

Accepted files: JSONL, a JSON list, CSV, TSV or .xlsx (VLMEvalKit's default; first sheet). Per row:

- sample: `sample_id` (or `doc.sample_id`) or the first of `id, image_id, image, image_path, doc.id, doc.image_id,
  doc.image_path, index, doc_id, question_id` that matches the data's sample ids (a path matches by its tail);
  `id_field` names another (dotted paths reach into nested records); `by_position` reads integer ids as positions
  in the data.
- prompt: `prompt_id` (or `doc.prompt_id`), else the question text (`question, prompt, input, doc.question`)
  matched to a task prompt; a question with option columns (`A, B, C, ...`, the VLMEvalKit layout) becomes a
  multiple-choice prompt whose options are mapped to task classes; other unmatched questions need `kind` (yes_no or
  open).
- response: the first of `response, prediction, filtered_resps, resps, output, pred, text` (lists are unwrapped;
  `answer` is never read as the response: it holds the ground truth in VLMEvalKit files).
- condition: `condition` when present, else `condition` argument (default image).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

from ..artifacts.answers import write_answers, write_summary
from ..data.sources import DataSource, open_source
from ..errors import UserError, bad_choice, option
from .parse import normalise, parse_class
from .plan import CONDITIONS, map_classes
from .scoring import score_record
from .tasks import Prompt, Task, load_task

ID_FIELDS = ("sample_id", "doc.sample_id", "id", "image_id", "image", "image_path", "doc.id", "doc.image_id",
             "doc.image_path", "index", "doc_id", "question_id")
QUESTION_FIELDS = ("question", "prompt", "input", "doc.question")
RESPONSE_FIELDS = ("response", "prediction", "filtered_resps", "resps", "output", "pred", "text")
KINDS = ("yes_no", "open")


def import_answers(file, data, task, *, out: str | Path = "probes/vqa-import", model: str = "", id_field: str = "",
                   by_position: bool = False, condition: str = "image", kind: str | None = None) -> dict:
    """Parse and score the answers in `file`; write answers.jsonl and summary.json under `out`; return the summary."""
    from .measures import summarise

    path = Path(file)
    rows = read_rows(path)
    task = task if isinstance(task, Task) else load_task(task)
    source = data if isinstance(data, DataSource) else open_source(data)
    if condition not in CONDITIONS:
        raise bad_choice("condition", condition, CONDITIONS)
    if kind is not None and kind not in KINDS:
        raise bad_choice("kind of unmatched questions", kind, KINDS)
    class_map = map_classes(task, source)
    locate = _SampleLocator(source, rows, id_field=id_field, by_position=by_position, path=path)
    prompts = _PromptMatcher(task, kind=kind, path=path)
    records = []
    for n, row in enumerate(rows, start=1):
        where = f"{path.name} row {n}"
        prompt = prompts.match(row, where)
        cond = str(_get(row, "condition") or condition)
        if cond not in ("image", "no-image", "blank"):
            raise UserError(f"{where}: condition {cond!r} cannot be imported; valid: image, no-image, blank")
        records.append(score_record(task, source, class_map, prompt, cond, locate(row, where), _response(row, where),
                                    {}))
    if not any(r.condition == "image" for r in records):
        raise UserError(f"{path} has no answers under the image condition")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_answers(out, records)
    summary = summarise(records, task)
    summary.update(model=model or f"imported:{path.stem}", data=source.spec, task=task.name, classes=list(task.classes),
                   model_fingerprint="", data_fingerprint=source.fingerprint(), vision_fingerprint="",
                   class_map={source.classes[k]: v for k, v in class_map.items()}, imported_from=str(path),
                   prompts_added=[p.id for p in prompts.added])
    write_summary(out, summary)
    return summary


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL, JSON-list, CSV or TSV file."""
    if not path.is_file():
        raise UserError(f"answers file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        return _xlsx_rows(path)
    if suffix == ".xls":
        raise UserError(f"{path}: the old binary .xls format is not read; save it as .xlsx, CSV or TSV")
    text = path.read_text(encoding="utf-8-sig")
    try:
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".json":
            rows = json.loads(text)
            rows = rows if isinstance(rows, list) else rows.get("logs", rows.get("samples", []))
        elif suffix in (".csv", ".tsv"):
            rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        else:
            raise bad_choice("answers file type", suffix or "(none)", [".jsonl", ".json", ".csv", ".tsv", ".xlsx"])
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path} holds no answer records (expected one object per row)")
    return rows


def _xlsx_rows(path: Path) -> list[dict]:
    """Rows of the first sheet of an .xlsx file (VLMEvalKit's default prediction format): the first row names the
    columns; numbers are read as text the way a TSV would give them."""
    try:
        import openpyxl
    except ImportError:
        raise UserError(f"{path}: reading .xlsx needs openpyxl: pip install 'medfrag-probe[xlsx]' (or save the "
                        "sheet as TSV)") from None
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - not a workbook, damaged zip
        raise UserError(f"{path} is not a readable .xlsx workbook ({type(exc).__name__})") from None
    try:
        sheet = book.worksheets[0]
        lines = sheet.iter_rows(values_only=True)
        header = [str(h).strip() if h is not None else "" for h in next(lines, ())]
        rows = [{h: _cell(v) for h, v in zip(header, line) if h} for line in lines
                if any(v is not None and str(v).strip() for v in line)]
    finally:
        book.close()
    if not rows:
        raise UserError(f"{path} holds no answer records (an empty first sheet)")
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _get(row: dict, dotted: str):
    value = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _unwrap(value):
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return value


def _response(row: dict, where: str) -> str:
    for name in RESPONSE_FIELDS:
        value = _unwrap(_get(row, name))
        if value is not None and not isinstance(value, (list, dict)):
            return str(value)
    raise UserError(f"{where}: no response field; looked for {', '.join(RESPONSE_FIELDS)}")


class _SampleLocator:
    """Finds each row's sample: by a named or detected id field, by path tail, or by position."""

    def __init__(self, source: DataSource, rows: list[dict], *, id_field: str, by_position: bool, path: Path):
        self.source = source
        self.by_position = by_position
        self.index = {s.id: i for i, s in enumerate(source.samples)}
        self.tails = {}
        for i, s in enumerate(source.samples):
            for tail in (s.id, _no_ext(s.id), Path(s.id).name, _no_ext(Path(s.id).name)):
                self.tails.setdefault(tail, i)
        self.field = id_field or self._detect(rows, path)

    def _detect(self, rows: list[dict], path: Path) -> str:
        for declared in ("sample_id", "doc.sample_id"):  # used as is, so a wrong id is reported row by row
            if all(_get(r, declared) is not None for r in rows):
                return declared
        for name in ID_FIELDS:
            values = [_get(r, name) for r in rows[:50]]
            if all(v is not None for v in values) and any(self._find(v) is not None for v in values):
                return name
        if self.by_position:
            return next((n for n in ID_FIELDS if _get(rows[0], n) is not None), "index")
        raise UserError(f"{path}: no column holds the data's sample ids (looked for {', '.join(ID_FIELDS)}); "
                        f"name one with {option('id_field')}, or use {option('by_position', True)} for integer "
                        "positions")

    def _find(self, value) -> int | None:
        if value is None:
            return None
        if self.by_position:
            try:
                k = int(value)
            except (TypeError, ValueError):
                return None
            return k if 0 <= k < len(self.source) else None
        text = str(value).replace("\\", "/")
        if text in self.index:
            return self.index[text]
        for i in range(text.count("/") + 1):  # a longer path ending in a sample id (with or without extension)
            tail = text.split("/", i)[-1]
            for key in (tail, _no_ext(tail)):
                if key in self.tails:
                    return self.tails[key]
        return None

    def __call__(self, row: dict, where: str) -> int:
        value = _get(row, self.field)
        found = self._find(value)
        if found is None:
            raise UserError(f"{where}: {self.field}={value!r} is not a sample of {self.source.spec}")
        return found


class _PromptMatcher:
    """Maps a row to a task prompt: by id, by question text, or as a new prompt (options or a declared kind)."""

    def __init__(self, task: Task, *, kind: str | None, path: Path):
        self.task = task
        self.kind = kind
        self.by_id = {p.id: p for p in task.prompts()}
        self.rendered = {_norm(p.render()): p for p in task.prompts()}
        self.plain = {_norm(p.text): p for p in task.prompts() if p.kind not in ("multiple_choice", "describe")}
        self.added: list[Prompt] = []
        self.path = path

    def match(self, row: dict, where: str) -> Prompt:
        """Prompt id; else the exact rendered prompt; else option columns; else the question text (exact, then
        the longest task question it contains); else a new prompt of the declared kind."""
        prompt_id = _get(row, "prompt_id")
        prompt_id = _get(row, "doc.prompt_id") if prompt_id in (None, "") else prompt_id
        if prompt_id not in (None, ""):
            if str(prompt_id) not in self.by_id:
                raise bad_choice(f"prompt id ({where})", str(prompt_id), sorted(self.by_id))
            return self.by_id[str(prompt_id)]
        question = next((str(_unwrap(_get(row, f))) for f in QUESTION_FIELDS if _get(row, f) is not None), None)
        if question is None:
            raise UserError(f"{where}: no prompt_id and no question text ({', '.join(QUESTION_FIELDS)})")
        text = _norm(question)
        if text in self.rendered:
            return self.rendered[text]
        options = {k: str(row[k]) for k in "ABCDEFGHIJ" if str(row.get(k, "") or "").strip()}
        if options:
            return self._new_choice(question, options, where)
        if text in self.plain:
            return self.plain[text]
        contained = [known for known in self.plain if known and known in text]
        if contained:
            return self.plain[max(contained, key=len)]
        if self.kind is None:
            raise UserError(f"{where}: question {question[:60]!r} matches no prompt of task {self.task.name} and has "
                            f"no option columns; add it to the task file or give {option('kind', 'yes_no|open')}")
        return self._new(Prompt(f"imported-{_hash(question)}", self.kind, question))

    def _new_choice(self, question: str, options: dict[str, str], where: str) -> Prompt:
        mapped = {}
        for letter, text in options.items():
            parsed = parse_class(text, self.task.classes)
            if parsed.answer is None:
                raise UserError(f"{where}: option {letter} {text!r} names no class of task {self.task.name} "
                                f"({', '.join(self.task.classes)}); add it as a synonym in the task file")
            mapped[letter] = parsed.answer
        same = [p for p in self.by_id.values() if p.kind == "multiple_choice" and p.options == mapped
                and _norm(p.text) in _norm(question)]
        if same:
            return same[0]
        prompt_id = f"imported-{_hash(question + json.dumps(mapped))}"
        return self._new(Prompt(prompt_id, "multiple_choice", question, mapped))

    def _new(self, prompt: Prompt) -> Prompt:
        if prompt.id not in self.by_id:
            self.by_id[prompt.id] = prompt
            self.added.append(prompt)
        return self.by_id[prompt.id]


def _no_ext(path: str) -> str:
    return re.sub(r"\.(png|jpe?g|bmp|tiff?|gif|webp|dcm|dicom|nii(\.gz)?|npy)$", "", path, flags=re.IGNORECASE)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", normalise(text)).strip()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]
