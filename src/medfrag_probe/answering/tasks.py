"""Task files (`configs/tasks/*.yaml`): classes with synonyms and the prompt sets asked about each image.

    task = load_task("synth-brain-mri")          # a name under configs/tasks/, or a path to a YAML file
    [p.id for p in task.prompts()]               # yes/no, multiple choice (both option orders), open, paraphrases
    task.expected(prompt, label="glioma")        # "yes", "B", "glioma", ...

Schema (unknown keys are refused, naming the valid ones)::

    name: str                 description: str            data: str (a data spec hint, optional)
    classes: {class: [synonym, ...]}                      positive: [class, ...] (classes that make yes/no "yes")
    yes_no: [{id, text}]      multiple_choice: [{id, text}]              open: [{id, text}]
    paraphrases: [{group, items: [{id, text, negated: bool}]}]           describe: [{id, text}]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._yaml import configs_dir, locate, read
from ..errors import UserError, bad_choice

TOP_KEYS = {"name", "description", "data", "classes", "positive", "yes_no", "multiple_choice", "open",
            "paraphrases", "describe"}
ITEM_KEYS = {"id", "text", "negated"}
KINDS = ("yes_no", "multiple_choice", "open", "describe")


@dataclass(frozen=True)
class Prompt:
    """One question: `kind` is yes_no, multiple_choice, open or describe; `options` maps letters to classes."""

    id: str
    kind: str
    text: str
    options: dict[str, str] = field(default_factory=dict)
    negated: bool = False
    group: str = ""

    def render(self) -> str:
        """The text sent to the model (options listed for multiple choice)."""
        if self.kind != "multiple_choice":
            return self.text
        listed = "\n".join(f"{letter}. {name.replace('_', ' ')}" for letter, name in self.options.items())
        return f"{self.text}\n{listed}\nAnswer with the letter of one option."


@dataclass(frozen=True)
class Task:
    """A validated task file."""

    name: str
    description: str
    classes: dict[str, list[str]]
    positive: tuple[str, ...]
    items: dict[str, list[dict]]
    paraphrases: list[dict]
    data: str = ""
    asks: dict[int, str] | None = None  # sample index -> the one prompt id asked of it (a question set's own task)

    def prompts(self) -> list[Prompt]:
        """Every prompt; multiple-choice items appear with options in class order and in reverse order."""
        out = [Prompt(i["id"], "yes_no", i["text"]) for i in self.items["yes_no"]]
        names = list(self.classes)
        for item in self.items["multiple_choice"]:
            for suffix, order in (("fwd", names), ("rev", names[::-1])):
                options = {chr(65 + k): name for k, name in enumerate(order)}
                out.append(Prompt(f"{item['id']}-{suffix}", "multiple_choice", item["text"], options))
        out += [Prompt(i["id"], "open", i["text"]) for i in self.items["open"]]
        for group in self.paraphrases:
            out += [Prompt(i["id"], "yes_no", i["text"], negated=bool(i.get("negated", False)), group=group["group"])
                    for i in group["items"]]
        out += [Prompt(i["id"], "describe", i["text"]) for i in self.items["describe"]]
        return out

    def expected(self, prompt: Prompt, label: str) -> str | None:
        """The correct answer to `prompt` for an image of class `label` (None for description prompts)."""
        if label not in self.classes:
            raise bad_choice(f"class of task {self.name}", label, self.classes)
        if prompt.kind == "yes_no":
            positive = label in self.positive
            return "yes" if positive != prompt.negated else "no"
        if prompt.kind == "multiple_choice":
            return next(letter for letter, name in prompt.options.items() if name == label)
        if prompt.kind == "open":
            return label
        return None


def tasks_dir() -> Path:
    """The shipped `configs/tasks/` (inside the installed package, or the repository's in a checkout)."""
    return configs_dir("tasks")


QUESTIONS_TASK = "hf-questions"


def questions_task(source) -> Task:
    """The task of a closed-question data set (`hf-dataset:...?question=COL&answer=COL`): one yes/no prompt per
    distinct question, and each sample asked only its own question; its expected answer is the sample's label."""
    questions = getattr(source, "questions", None)
    if not questions:
        raise UserError(f"task {QUESTIONS_TASK!r} needs a data source with its own questions "
                        "(hf-dataset:...?question=COL&answer=COL); this one has none")
    ids = {text: f"q{k:05d}" for k, text in enumerate(dict.fromkeys(questions))}
    return Task(name=QUESTIONS_TASK, description=f"the closed questions of {source.spec}",
                classes={"no": ["no"], "yes": ["yes"]}, positive=("yes",),
                items={"yes_no": [{"id": i, "text": t} for t, i in ids.items()], "multiple_choice": [], "open": [],
                       "describe": []},
                paraphrases=[], data=source.spec, asks={k: ids[q] for k, q in enumerate(questions)})


def resolve_task(task, source) -> Task:
    """A `Task` as given, the source's own questions for `QUESTIONS_TASK`, else a task name or path."""
    if isinstance(task, Task):
        return task
    return questions_task(source) if task == QUESTIONS_TASK else load_task(task)


def load_task(name_or_path: str) -> Task:
    """Load and validate a task by name (configs/tasks/NAME.yaml) or by path."""
    path = locate(name_or_path, tasks_dir(), what="task")
    raw = read(path, what="task")
    return _validate(raw, path)


def _validate(raw, path: Path) -> Task:
    if not isinstance(raw, dict):
        raise UserError(f"task file {path} must be a mapping of keys; valid keys: {', '.join(sorted(TOP_KEYS))}")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise UserError(f"task file {path}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(TOP_KEYS))}")
    classes = raw.get("classes")
    if not isinstance(classes, dict) or len(classes) < 2:
        raise UserError(f"task file {path}: 'classes' must map at least 2 class names to synonym lists")
    classes = {str(k): [str(s) for s in (v or [])] for k, v in classes.items()}
    positive = tuple(str(c) for c in raw.get("positive", []))
    for name in positive:
        if name not in classes:
            raise UserError(f"task file {path}: positive class {name!r} is not a class; valid: {', '.join(classes)}")
    items = {kind: _items(raw.get(kind, []), path, kind) for kind in KINDS}
    groups = raw.get("paraphrases", []) or []
    for group in groups:
        if not isinstance(group, dict) or set(group) - {"group", "items"} or "group" not in group:
            raise UserError(f"task file {path}: each paraphrase group needs 'group' and 'items' only")
        group["items"] = _items(group.get("items", []), path, f"paraphrases/{group['group']}")
    ids = [i["id"] for kind in KINDS for i in items[kind]] + [i["id"] for g in groups for i in g["items"]]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UserError(f"task file {path}: prompt id {duplicates[0]!r} is used twice")
    if (items["yes_no"] or groups) and not positive:
        raise UserError(f"task file {path}: yes/no prompts need 'positive' (the classes that make the answer yes)")
    return Task(name=str(raw.get("name", path.stem)), description=str(raw.get("description", "")), classes=classes,
                positive=positive, items=items, paraphrases=groups, data=str(raw.get("data", "")))


def _items(items, path: Path, where: str) -> list[dict]:
    if not isinstance(items, list):
        raise UserError(f"task file {path}: {where} must be a list of {{id, text}}")
    for item in items:
        if not isinstance(item, dict) or not {"id", "text"} <= set(item):
            raise UserError(f"task file {path}: every {where} item needs 'id' and 'text'")
        unknown = sorted(set(item) - ITEM_KEYS)
        if unknown:
            raise UserError(f"task file {path}: {where} item {item['id']!r} has unknown key {unknown[0]!r}; "
                            f"valid: {', '.join(sorted(ITEM_KEYS))}")
    return items
