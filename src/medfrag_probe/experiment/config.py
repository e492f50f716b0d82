"""Experiment configs (`configs/experiments/*.yaml`): one file describes a whole study.

    from medfrag_probe.experiment import load_config
    config = load_config("configs/experiments/demo.yaml")
    [m.spec for m in config.models], [t.name for t in config.tasks]

Schema (every key optional but `models` and `tasks`; an unknown key is refused, naming the valid ones)::

    name: str                      description: str              out: folder (default probes/<name>)
    models: [SPEC | {spec, label, dtype, trust_remote_code, tasks, vqa}]  # tasks: labels of the tasks this
                                        # model runs on (default: all); vqa: its own settings over the study's
    pairs: [[GENERALIST, MEDICAL]]                  # specs or labels of listed models
    tasks: [TASK | {task, data, label}]             # TASK: a name under configs/tasks/ or a path; the data spec
                                                    # defaults to the task file's own `data`
    points: "vision.*,projector"   poolings: "cls,mean"   probes: [linear, knn]
    folds: 5   replicates: 1000   permutations: 20   controls: true   seeds: [0]
    jobs: 1                        # units (model x task) run at once, each in its own process with its share of
                                   # the CPU cores (`run --jobs` overrides); results are those of one job
    extract: {batch_size, device, dtype, store_dtype, prompt, workers}
    vqa: false | {conditions, prompts, max_new_tokens, describe_tokens, describe_with, limit, split, batch_size,
                  device, dtype, answer_mode}
    intervene: false | {limit, prompts, batch_size, min_effect}   # the causal check of every VLM (needs the
                                          # 'projector' point and the linear probe; on by default with vqa)
    bridge: {seen_skill, min_gap, probe}
    sweep: {factor, values}        # one ablation factor: layer, pooling, probe, k, prompt, train_size,
                                   # resolution (synthetic or sized data: the `size` parameter), pair
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .._yaml import configs_dir, locate, read
from ..errors import UserError
from ..specs import safe_name
from ..stats import PERMUTATIONS

TOP_KEYS = ("name", "description", "out", "models", "pairs", "tasks", "points", "poolings", "probes", "folds",
            "replicates", "permutations", "controls", "seeds", "jobs", "extract", "vqa", "intervene", "bridge", "sweep")
MODEL_KEYS = ("spec", "label", "dtype", "trust_remote_code", "tasks", "vqa")
TASK_KEYS = ("task", "data", "label")
EXTRACT_KEYS = ("batch_size", "device", "dtype", "store_dtype", "prompt", "workers")
VQA_KEYS = ("conditions", "prompts", "max_new_tokens", "describe_tokens", "describe_with", "limit", "split",
            "batch_size", "device", "dtype", "answer_mode")
BRIDGE_KEYS = ("seen_skill", "min_gap", "probe")
INTERVENE_KEYS = ("limit", "prompts", "batch_size", "min_effect")
SWEEP_KEYS = ("factor", "values")


@dataclass(frozen=True)
class ModelEntry:
    """A model of the study: its spec and the short label used in file names and tables."""

    spec: str
    label: str
    dtype: str = "float32"
    trust_remote_code: bool = False
    tasks: tuple[str, ...] | None = None  # task labels it runs on; None: every task
    vqa: dict = field(default_factory=dict, hash=False)  # its own VQA settings, over the study's


@dataclass(frozen=True)
class TaskEntry:
    """A task of the study: the task file, the data it is asked about, and a label."""

    task: str
    data: str
    label: str


@dataclass(frozen=True)
class Config:
    """A validated experiment config."""

    path: str
    name: str
    description: str
    out: str
    models: list[ModelEntry]
    pairs: list[tuple[str, str]]
    tasks: list[TaskEntry]
    points: str = "vision.*,projector"
    poolings: str | None = None
    probes: list[str] = field(default_factory=lambda: ["linear", "knn"])
    folds: int = 5
    replicates: int = 1000
    permutations: int = PERMUTATIONS
    controls: bool = True
    seeds: list[int] = field(default_factory=lambda: [0])
    jobs: int = 1
    extract: dict = field(default_factory=dict)
    vqa: dict | None = field(default_factory=dict)
    intervene: dict | None = field(default_factory=dict)
    bridge: dict = field(default_factory=dict)
    sweep: dict | None = None
    raw: dict = field(default_factory=dict)

    def digest(self, *parts) -> str:
        """A short hash of config parts (what a stage depends on)."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def experiments_dir() -> Path:
    """The shipped `configs/experiments/` (inside the installed package, or the repository's in a checkout)."""
    return configs_dir("experiments")


def load_config(name_or_path: str | Path) -> Config:
    """Load and validate an experiment config by path, or by name under configs/experiments/."""
    path = locate(name_or_path, experiments_dir(), what="experiment")
    raw = read(path, what="experiment")
    return validate(raw, path)


def _fail(path, message: str) -> UserError:
    return UserError(f"config {path}: {message}")


def _keys(mapping, valid, path, where: str) -> dict:
    if not isinstance(mapping, dict):
        raise _fail(path, f"{where} must be a mapping with keys {', '.join(valid)}")
    unknown = [k for k in mapping if k not in valid]
    if unknown:
        raise _fail(path, f"unknown key {unknown[0]!r} in {where}; valid: {', '.join(valid)}")
    return mapping


def _int(value, path, where: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(path, f"{where} must be an integer >= {low}, got {value!r}")
    return value


def _permutations(value, path) -> int:
    """0 (plain patient bootstrap) or at least 2 permutation refits (the intervals' design effect)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value == 1:
        raise _fail(path, f"permutations must be 0 (plain patient bootstrap) or an integer >= 2, got {value!r}")
    return value


def _bool(value, path, where: str) -> bool:
    """A real YAML boolean (true/false): a string such as "no" is refused, never read as true."""
    if not isinstance(value, bool):
        raise _fail(path, f"{where} must be true or false, got {value!r}")
    return value


def _text(value, path, where: str) -> str:
    """A scalar written as text (a string or a number), never a list or mapping."""
    if isinstance(value, (dict, list, tuple, set)) or value is None:
        raise _fail(path, f"{where} must be a single value, got {value!r}")
    return str(value)


LABEL_RULE = "1-80 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"


def _check_label(label: str, path, where: str) -> str:
    """Labels name folders under the study's `out`: no path separators, no `..`, nothing a shell or browser reads."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", label) or ".." in label:
        raise _fail(path, f"{where} {label!r} is not a valid label; use {LABEL_RULE}")
    return label


def _listish(value, path, where: str) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise _fail(path, f"{where} must be a list or a comma-separated string, got {value!r}")
    return value


def validate(raw, path) -> Config:
    """A `Config` from parsed YAML; every problem is a one-line error naming the key."""
    raw = _keys(raw if raw is not None else {}, TOP_KEYS, path, "the top level")
    for required in ("models", "tasks"):
        if not raw.get(required):
            raise _fail(path, f"'{required}' is required (a non-empty list)")
    name = _check_label(_text(raw.get("name") or Path(path).stem, path, "name"), path, "name")
    models = [_model(m, path, i) for i, m in enumerate(_listish(raw["models"], path, "models"))]
    _unique([m.label for m in models], path, "model label")
    tasks = [_task(t, path, i) for i, t in enumerate(_listish(raw["tasks"], path, "tasks"))]
    _unique([t.label for t in tasks], path, "task label")
    known = [t.label for t in tasks]
    for m in models:
        for task in m.tasks or ():
            if task not in known:
                raise _fail(path, f"model {m.label!r} names task {task!r}, which the study does not list; tasks: "
                            f"{', '.join(t.label for t in tasks)}")
    pairs = [_pair(p, models, path) for p in raw.get("pairs") or []]
    probes = [str(p) for p in _listish(raw.get("probes", ["linear", "knn"]), path, "probes")]
    from ..probes.estimators import PROBES

    for probe in probes:
        if probe not in PROBES:
            raise _fail(path, f"unknown probe {probe!r} in probes; valid: {', '.join(sorted(PROBES))}")
    seeds = [_int(s, path, "seeds[]", low=0) for s in _listish(raw.get("seeds", [0]), path, "seeds")] or [0]
    vqa = raw.get("vqa", {})
    if vqa is not False:
        vqa = dict(_keys(vqa or {}, VQA_KEYS, path, "vqa"))
        _check_vqa(vqa, path)
    intervene = raw.get("intervene", {})
    if intervene is not False:
        intervene = dict(_keys(intervene or {}, INTERVENE_KEYS, path, "intervene"))
        for key in ("limit", "batch_size"):
            if intervene.get(key) is not None:
                _int(intervene[key], path, f"intervene.{key}", low=2 if key == "limit" else 1)
        if "prompts" in intervene and not (isinstance(intervene["prompts"], str) or (
                isinstance(intervene["prompts"], list) and all(isinstance(p, str) for p in intervene["prompts"]))):
            raise _fail(path, f"intervene.prompts must be a list of prompt ids, families or kinds, got "
                              f"{intervene['prompts']!r}")
        if "min_effect" in intervene and not isinstance(intervene["min_effect"], (int, float)):
            raise _fail(path, f"intervene.min_effect must be a number, got {intervene['min_effect']!r}")
    sweep = raw.get("sweep")
    if sweep is not None:
        sweep = _sweep(sweep, path, models=models, pairs=pairs)
    poolings = raw.get("poolings")
    return Config(
        path=str(path), name=name, description=str(raw.get("description", "")),
        out=str(raw.get("out") or f"probes/{name}"), models=models, pairs=pairs, tasks=tasks,
        points=",".join(_listish(raw.get("points", "vision.*,projector"), path, "points")),
        poolings=",".join(_listish(poolings, path, "poolings")) if poolings else None, probes=probes,
        folds=_int(raw.get("folds", 5), path, "folds", low=2),
        replicates=_int(raw.get("replicates", 1000), path, "replicates", low=10),
        permutations=_permutations(raw.get("permutations", PERMUTATIONS), path),
        controls=_bool(raw.get("controls", True), path, "controls"), seeds=seeds,
        jobs=_int(raw.get("jobs", 1), path, "jobs"),
        extract=_check_extract(dict(_keys(raw.get("extract") or {}, EXTRACT_KEYS, path, "extract")), path),
        vqa=vqa if vqa is not False else None,
        intervene=intervene if intervene is not False and vqa is not False else None,
        bridge=dict(_keys(raw.get("bridge") or {}, BRIDGE_KEYS, path, "bridge")), sweep=sweep, raw=raw)


def _unique(labels: list[str], path, what: str) -> None:
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise _fail(path, f"{what} {twice[0]!r} is used twice; give one entry a different 'label'")


def _model(entry, path, index: int) -> ModelEntry:
    if isinstance(entry, str):
        entry = {"spec": entry}
    entry = _keys(entry, MODEL_KEYS, path, f"models[{index}]")
    if not entry.get("spec"):
        raise _fail(path, f"models[{index}] needs 'spec'")
    spec = _text(entry["spec"], path, f"models[{index}].spec")
    label = _check_label(_text(entry.get("label") or _label(spec), path, f"models[{index}].label"), path,
                         f"models[{index}].label")
    dtype = _text(entry.get("dtype", "float32"), path, f"models[{index}].dtype")
    tasks = entry.get("tasks")
    vqa = dict(_keys(entry.get("vqa") or {}, VQA_KEYS, path, f"models[{index}].vqa"))
    _check_vqa(vqa, path)
    return ModelEntry(vqa=vqa, spec=spec, label=label, dtype=dtype,
                      trust_remote_code=_bool(entry.get("trust_remote_code", False), path,
                                              f"models[{index}].trust_remote_code"),
                      tasks=None if tasks is None else tuple(str(t) for t in _listish(tasks, path,
                                                                                     f"models[{index}].tasks")))


def _label(spec: str) -> str:
    text = spec.split("?")[0].rstrip("/")
    text = text.split("/")[-1] if text.startswith(("hf:/", "hf:.", "open_clip:local-dir:")) else text
    return safe_name(text)


def _task(entry, path, index: int) -> TaskEntry:
    from ..answering.tasks import load_task

    if isinstance(entry, str):
        entry = {"task": entry}
    entry = _keys(entry, TASK_KEYS, path, f"tasks[{index}]")
    if not entry.get("task"):
        raise _fail(path, f"tasks[{index}] needs 'task'")
    task = load_task(str(entry["task"]))
    data = str(entry.get("data") or task.data)
    if not data:
        raise _fail(path, f"tasks[{index}] ({task.name}) needs 'data' (its task file names no data)")
    label = _check_label(_text(entry.get("label") or task.name, path, f"tasks[{index}].label"), path,
                         f"tasks[{index}].label")
    return TaskEntry(task=str(entry["task"]), data=data, label=label)


def _pair(entry, models: list[ModelEntry], path) -> tuple[str, str]:
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise _fail(path, f"each pair must be [GENERALIST, MEDICAL], got {entry!r}")
    names = {m.spec: m.label for m in models} | {m.label: m.label for m in models}
    for side in entry:
        if side not in names:
            raise _fail(path, f"pair member {side!r} is not a listed model; models: "
                              f"{', '.join(m.label for m in models)}")
    return names[entry[0]], names[entry[1]]


def _check_extract(extract: dict, path) -> dict:
    for key in ("batch_size", "workers"):
        if key in extract:
            _int(extract[key], path, f"extract.{key}", low=0 if key == "workers" else 1)
    for key in ("device", "dtype", "store_dtype", "prompt"):
        if key in extract:
            _text(extract[key], path, f"extract.{key}")
    return extract


def _check_vqa(vqa: dict, path) -> None:
    from ..answering.plan import check_conditions

    try:
        if "conditions" in vqa:
            vqa["conditions"] = check_conditions(_listish(vqa["conditions"], path, "vqa.conditions"))
        if "prompts" in vqa:
            vqa["prompts"] = ",".join(str(p) for p in _listish(vqa["prompts"], path, "vqa.prompts"))
        if vqa.get("describe_with") not in (None, False, "none"):
            from ..answering.describe import check_method

            check_method(str(vqa["describe_with"]))
        if "answer_mode" in vqa:
            from ..answering.run import ANSWER_MODES
            from ..errors import bad_choice

            if vqa["answer_mode"] not in ANSWER_MODES:
                raise bad_choice("answer mode", vqa["answer_mode"], ANSWER_MODES)
    except UserError as exc:
        raise _fail(path, f"vqa: {exc}") from None
    for key in ("max_new_tokens", "describe_tokens", "limit", "batch_size"):
        if key in vqa and vqa[key] is not None:
            _int(vqa[key], path, f"vqa.{key}")


def _sweep(sweep, path, *, models, pairs) -> dict:
    sweep = _keys(sweep, SWEEP_KEYS, path, "sweep")
    from .factors import FACTORS

    factor = sweep.get("factor")
    if factor not in FACTORS:
        raise _fail(path, f"unknown sweep factor {factor!r}; valid: {', '.join(FACTORS)}")
    values = sweep.get("values")
    spec = FACTORS[factor]
    if spec.needs_values and (not isinstance(values, list) or not values):
        raise _fail(path, f"sweep over {factor} needs 'values' (a non-empty list)")
    if spec.integer_values and values:
        values = [_int(v, path, f"sweep.values ({factor})") for v in values]
    if spec.needs_pairs and not pairs:
        raise _fail(path, f"sweep over {factor} needs 'pairs'")
    return {"factor": factor, "values": values or []}
