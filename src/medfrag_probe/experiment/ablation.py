"""The ablation figure of each sweep factor: skill against the swept value, one panel per task, one line (or bar)
per model. Each function takes the study being reported (`report._Study`) and the PNG path to write, and returns
the path, or None when there is nothing to plot. Which function draws which factor is `factors.FACTORS`' business.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .._plot import subplots
from ..artifacts.probes import read_curves
from ..points import point_order
from ..probes.select import pick


def _panels(study, count: int | None = None):
    """One panel per task, at most two per row."""
    n = count or len(study.data_order)
    cols = min(2, n)
    rows = -(-n // cols)
    fig, axes = subplots(rows, cols, figsize=(6.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=105)
    return path


def _linear(study, unit, pooling=None):
    rows = [r for r in study.probes.get(unit["key"], []) if r["probe"] == "linear"]
    return [r for r in rows if pooling is None or r["pooling"] == pooling]


def by_layer(study, path: Path) -> Path | None:
    """Linear probe skill per point; models share the x axis by point name (towers differ in depth)."""

    fig, axes = _panels(study)
    for ax, data in zip(axes, study.data_order):
        units = [study.unit(model, data) for model in study.model_order]
        names = sorted({r["point"] for u in units if u for r in _linear(study, u)}, key=point_order)
        x = {name: i for i, name in enumerate(names)}
        for model, unit in zip(study.model_order, units):
            by_point = defaultdict(list)
            for r in _linear(study, unit) if unit else []:
                by_point[r["point"]].append(r)
            pts = sorted((pick(rs) for rs in by_point.values()), key=lambda r: point_order(r["point"]))
            if pts:
                ys = [p["skill"] for p in pts]
                err = np.array([[p["skill"] - (p["skill_ci"] or [p["skill"]] * 2)[0],
                                 (p["skill_ci"] or [p["skill"]] * 2)[1] - p["skill"]] for p in pts]).T
                ax.errorbar([x[p["point"]] for p in pts], ys, yerr=err, marker="o", ms=3, capsize=2,
                            label=study.label.get(model, model))
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("vision.block.", "v").replace("vision.", "") for n in names], rotation=60,
                           fontsize=7)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_title(study.task_label.get(data, data), fontsize=10)
        ax.set_ylabel("linear probe skill")
        ax.legend(fontsize=7)
    return _save(fig, path)


def by_field(name: str):
    def draw(study, path: Path) -> Path | None:
        fig, axes = _panels(study)
        for ax, data in zip(axes, study.data_order):
            values = []
            for model in study.model_order:
                unit = study.unit(model, data)
                rows = study.probes.get(unit["key"], []) if unit else []
                for r in rows:
                    if r[name] not in values:
                        values.append(r[name])
            width = 0.8 / max(1, len(study.model_order))
            for m, model in enumerate(study.model_order):
                unit = study.unit(model, data)
                rows = study.probes.get(unit["key"], []) if unit else []
                chosen = [pick([r for r in rows if r[name] == v]) for v in values]
                ax.bar(np.arange(len(values)) + m * width, [r["skill"] if r else np.nan for r in chosen], width,
                       label=study.label.get(model, model))
            ax.set_xticks(np.arange(len(values)) + 0.4 - width / 2)
            ax.set_xticklabels(values, fontsize=8)
            ax.set_title(study.task_label.get(data, data), fontsize=10)
            ax.set_ylabel(f"probe skill per {name}\n(point chosen on inner scores)", fontsize=8)
            ax.legend(fontsize=7)
        return _save(fig, path)
    return draw


def by_k(study, path: Path) -> Path | None:
    fig, axes = _panels(study)
    for ax, data in zip(axes, study.data_order):
        for model in study.model_order:
            unit = study.unit(model, data)
            rows = [r for r in study.probes.get(unit["key"], []) if "@" in r["probe"]] if unit else []
            anchor = pick(_linear(study, unit)) if unit else None  # the point the linear probe chose on inner scores
            by_k = defaultdict(list)
            for r in rows:
                by_k[int(r["probe"].split("@")[1])].append(r)
            ks = sorted(by_k)
            ax.plot(ks, [_at(by_k[k], anchor)["skill"] for k in ks], marker="o", label=study.label.get(model, model))
        ax.set_xscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("kNN skill (point chosen on inner scores)", fontsize=8)
        ax.set_title(study.task_label.get(data, data), fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _at(rows: list[dict], anchor: dict | None) -> dict:
    """The row at the anchor's point and pooling, else the preferred one (never chosen by test score)."""
    same = [r for r in rows if anchor and (r["point"], r["pooling"]) == (anchor["point"], anchor["pooling"])]
    return same[0] if same else pick(rows)


def by_prompt(study, path: Path) -> Path | None:
    fig, axes = _panels(study)
    for ax, data in zip(axes, study.data_order):
        prompts = []
        for model in study.model_order:
            unit = study.unit(model, data)
            for p in (study.vqa.get(unit["key"], {}).get("prompts", []) if unit else []):
                if p["prompt_id"] not in prompts:
                    prompts.append(p["prompt_id"])
        for model in study.model_order:
            unit = study.unit(model, data)
            table = {p["prompt_id"]: p for p in (study.vqa.get(unit["key"], {}).get("prompts", []) if unit else [])}
            ys = [table[p]["accuracy"] if p in table else np.nan for p in prompts]
            ax.plot(range(len(prompts)), ys, marker="o", label=study.label.get(model, model))
        ax.set_xticks(range(len(prompts)))
        ax.set_xticklabels(prompts, rotation=70, fontsize=7)
        ax.set_ylabel("accuracy (image)")
        ax.set_title(study.task_label.get(data, data), fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def by_train_size(study, path: Path) -> Path | None:
    fig, axes = _panels(study)
    for ax, data in zip(axes, study.data_order):
        for model in study.model_order:
            unit = study.unit(model, data)
            rows = read_curves(study.layout.curves(unit["key"])) if unit else []
            if rows:
                xs = [r["per_class"] for r in rows]
                ys = [r["balanced_accuracy"] for r in rows]
                ax.plot(xs, ys, marker="o", label=study.label.get(model, model))
                ax.axhline(rows[0]["chance"], color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training samples per class")
        ax.set_ylabel("balanced accuracy")
        ax.set_title(study.task_label.get(data, data), fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def by_resolution(study, path: Path) -> Path | None:
    tasks = list(dict.fromkeys(u["task_label"] for u in study.units))
    fig, axes = _panels(study, len(tasks))
    for ax, task in zip(axes, tasks):
        for model in study.model_order:
            units = [u for u in study.units if u["model"] == model and u["task_label"] == task]
            xs = [int(u["variant"].removesuffix("px")) for u in units]
            probe = [(pick(_linear(study, u)) or {"skill": np.nan})["skill"] for u in units]
            (line,) = ax.plot(xs, probe, marker="o", label=f"{study.label.get(model, model)} probe")
            vqa = [study.vqa.get(u["key"], {}).get("classification", {}).get("skill") for u in units]
            if any(v is not None for v in vqa):
                ax.plot(xs, [np.nan if v is None else v for v in vqa], marker="o", mfc="white", ls="--",
                        color=line.get_color(), label=f"{study.label.get(model, model)} VQA")
        ax.set_xlabel("source image size (px), before the processor")
        ax.set_ylabel("skill")
        ax.set_title(task, fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, path)


def by_pair(study, path: Path) -> Path | None:
    if not study.pairs:
        return None
    fig, ax = subplots(figsize=(max(6, 1.6 * len(study.pairs) + 2), 4))
    labels = [f"{study.label.get(p['medical'], p['medical'])} - {study.label.get(p['generalist'], p['generalist'])}"
              f"\n{study.task_label.get(p['data'], p['data'])}" for p in study.pairs]
    x = np.arange(len(study.pairs))
    for offset, key in ((-0.18, "probe"), (0.18, "vqa")):
        ys = [p[f"{key}_delta"] for p in study.pairs]
        cis = [p[f"{key}_delta_ci"] or [y, y] for p, y in zip(study.pairs, ys)]
        err = np.array([[y - c[0], c[1] - y] for y, c in zip(ys, cis)]).T
        ax.bar(x + offset, ys, 0.36, yerr=err, capsize=3, label=f"{key} delta")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("medical - generalist skill")
    ax.legend(fontsize=8)
    return _save(fig, path)
