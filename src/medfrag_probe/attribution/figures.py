"""Bridge figures: stage curves, probe-vs-VQA scatter with the diagonal, and the difficulty ladder."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np

from .._plot import subplots

VERDICT_COLOURS = {"sound": "#2a9d3f", "reasoning-limited": "#e07b00", "vision-limited": "#c0392b",
                   "both": "#7d3c98", "inconclusive": "#8c8c8c"}


def _short(name: str) -> str:
    name = re.sub(r"^vision\.block\.", "v", re.sub(r"^lm\.block\.", "lm", name))
    return name.replace("vision.", "").replace("description.", "desc:")


def _err(value, ci):
    if not ci:
        return [[0], [0]]
    return [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]


def bridge_figures(records: list[dict], out: Path, *, order=None) -> list[Path]:
    """Write every bridge figure under `out/figures/`; returns their paths."""
    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    data_order = _data_order(records, order)
    paths = [stage_curves(records, folder / "stage_curves.png", data_order=data_order),
             scatter(records, folder / "probe_vs_vqa.png"),
             ladder(records, folder / "ladder.png", data_order=data_order)]
    return paths


def _data_order(records, order) -> list[str]:
    seen = list(dict.fromkeys(r["data"] for r in records))
    if not order:
        return seen
    ranked = [d for d in order if d in seen]
    return ranked + [d for d in seen if d not in ranked]


def stage_curves(records, path: Path, *, data_order) -> Path:
    """One panel per data source: skill at each stage (vision blocks -> projector -> LM -> description -> answer)."""
    cols = min(2, len(data_order))
    rows_n = -(-len(data_order) // cols)
    fig, axes = subplots(rows_n, cols, figsize=(6.6 * cols, 4.6 * rows_n), squeeze=False)
    for ax in axes.flat[len(data_order):]:
        ax.axis("off")
    for ax, data in zip(axes.flat, data_order):
        rows = [r for r in records if r["data"] == data]
        stages = []
        for r in rows:
            for s in r["stages"]:
                label = _short(s["point"])
                if label not in stages:
                    stages.append(label)
        x = {label: i for i, label in enumerate(stages)}
        for r in rows:
            xs = [x[_short(s["point"])] for s in r["stages"]]
            ys = np.array([s["skill"] if s["skill"] is not None else np.nan for s in r["stages"]], dtype=float)
            lo = np.array([(s.get("skill_ci") or [np.nan])[0] for s in r["stages"]], dtype=float)
            hi = np.array([(s.get("skill_ci") or [np.nan, np.nan])[1] for s in r["stages"]], dtype=float)
            (line,) = ax.plot(xs, ys, marker="o", ms=3.5, label=f"{r['model']} ({r['verdict']})")
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        reads = _short(rows[0].get("reads_point") or "")
        if reads in x:
            ax.axvline(x[reads], color="#444", lw=0.9, ls=":", label="the LM reads this point")
        bounds = _stage_bounds(rows[0]["stages"], x)
        for name, (a, b) in bounds.items():
            ax.axvspan(a - 0.5, b + 0.5, color={"vision": "#eef3fb", "projector": "#fbf3e6", "language": "#eefaf0",
                                                "description": "#f6eefb", "answer": "#fdecea"}[name], zorder=-1)
            label = name if b > a else {"projector": "proj.", "description": "desc.", "language": "LM"}.get(name, name)
            ax.text((a + b) / 2, 1.04, label, ha="center", va="bottom", fontsize=7, color="#555")
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels(stages, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(_floor(rows), 1.12)
        ax.set_ylabel("skill (0 = chance, 1 = perfect)")
        ax.set_title(data, fontsize=10, pad=16)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _floor(records) -> float:
    """Lower y limit: below the lowest skill or CI shown (skills go below 0 when answers are worse than chance)."""
    values = [-0.2]
    for r in records:
        for s in r.get("stages", []):
            values += [v for v in (s["skill"], *(s.get("skill_ci") or [])) if v is not None]
        values += [v for v in (r.get("probe_skill"), r.get("vqa_skill"), *(r.get("vqa_skill_ci") or []),
                               *(r.get("probe_skill_ci") or [])) if v is not None]
    return min(values) - 0.08


def _stage_bounds(stages, x) -> dict:
    bounds: dict[str, list[int]] = {}
    for s in stages:
        i = x[_short(s["point"])]
        low, high = bounds.get(s["stage"], [i, i])
        bounds[s["stage"]] = [min(low, i), max(high, i)]
    return bounds


def scatter(records, path: Path) -> Path:
    """Probe skill (x) against VQA skill (y), 95% CIs, coloured by verdict; below the diagonal = lost read-out."""
    fig, ax = subplots(figsize=(7.4, 5.6))
    low = _floor(records)
    ax.plot([low, 1.05], [low, 1.05], color="grey", lw=0.8, ls="--", label="VQA = probe")
    models = list(dict.fromkeys(r["model"] for r in records))
    tasks = list(dict.fromkeys(r["data"] for r in records))
    shapes = "osD^vP*Xph"
    for r in records:
        colour = VERDICT_COLOURS.get(r["verdict"], "black")
        ax.errorbar(r["probe_skill"], r["vqa_skill"], xerr=_err(r["probe_skill"], r["probe_skill_ci"]),
                    yerr=_err(r["vqa_skill"], r["vqa_skill_ci"]), fmt=shapes[models.index(r["model"]) % len(shapes)],
                    color=colour, ms=7, capsize=2, elinewidth=0.8, alpha=0.85)
        ax.annotate(str(tasks.index(r["data"]) + 1), (r["probe_skill"], r["vqa_skill"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    for verdict, colour in VERDICT_COLOURS.items():
        ax.plot([], [], "s", color=colour, label=verdict)
    for m, model in enumerate(models):
        ax.plot([], [], shapes[m % len(shapes)], color="#555", mfc="white", label=model)
    ax.text(1.02, 0.02, "\n".join(f"{k + 1}: {t}" for k, t in enumerate(tasks)), transform=ax.transAxes,
            fontsize=7, va="bottom")
    ax.set_xlim(low, 1.05)
    ax.set_ylim(low, 1.05)
    ax.set_xlabel("probe skill (vision representation)")
    ax.set_ylabel("VQA skill (the answer)")
    ax.set_title("What the encoder holds vs what the model says (numbers: tasks)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def ladder(records, path: Path, *, data_order) -> Path:
    """Tasks in their configured order (x); per model, probe skill (filled) and VQA skill (open) joined by a bar."""
    models = list(dict.fromkeys(r["model"] for r in records))
    by = {(r["model"], r["data"]): r for r in records}
    fig, ax = subplots(figsize=(max(5.5, 1.9 * len(data_order) + 2), 4.4))
    width = 0.7 / max(1, len(models))
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for m, model in enumerate(models):
        colour = colours[m % len(colours)]
        for d, data in enumerate(data_order):
            r = by.get((model, data))
            if r is None:
                continue
            xpos = d - 0.35 + width * (m + 0.5)
            ax.plot([xpos, xpos], [r["vqa_skill"], r["probe_skill"]], color=colour, lw=1.2, alpha=0.6)
            ax.plot(xpos, r["probe_skill"], "o", color=colour, ms=7, label=model if d == 0 else None)
            ax.plot(xpos, r["vqa_skill"], "o", mfc="white", mec=colour, ms=7)
    ax.plot([], [], "o", color="grey", label="probe (filled)")
    ax.plot([], [], "o", mfc="white", mec="grey", label="VQA (open)")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(data_order)))
    ax.set_xticklabels([_wrap(d) for d in data_order], fontsize=8)
    ax.set_ylabel("skill (0 = chance, 1 = perfect)")
    ax.set_title("Difficulty ladder: probe vs VQA per task", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _wrap(text: str) -> str:
    """A data spec over lines at its natural breaks (`?`, `&`)."""
    return text.replace("?", "\n?").replace("&", "\n&")
