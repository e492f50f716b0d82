"""Figures: score against layer (CI bands, chance line), learning curves, CKA heatmaps."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from .._plot import subplots
from ..points import point_order


def _short(name: str) -> str:
    return re.sub(r"^vision\.block\.", "v", re.sub(r"^lm\.block\.", "lm", name)).replace("vision.", "")


def layer_curves(results, out: Path) -> list[Path]:
    """One PNG per cache: balanced accuracy per point, a line per (pooling, probe), 95% CI bands, chance."""

    by_cache = defaultdict(list)
    for r in results:
        by_cache[r.cache].append(r)
    paths = []
    for cache, rows in by_cache.items():
        points = sorted({r.point for r in rows}, key=point_order)
        x = {p: i for i, p in enumerate(points)}
        fig, ax = subplots(figsize=(max(6.0, 0.45 * len(points) + 2), 4.2))
        lines = defaultdict(list)
        for r in rows:
            lines[(r.pooling, r.probe)].append(r)
        for (pooling, name), items in sorted(lines.items()):
            items.sort(key=lambda r: x[r.point])
            xs = [x[r.point] for r in items]
            ys = [r.balanced_accuracy for r in items]
            (line,) = ax.plot(xs, ys, marker="o", ms=3, label=f"{name} / {pooling}")
            lo = [r.balanced_accuracy_ci[0] if r.balanced_accuracy_ci else np.nan for r in items]
            hi = [r.balanced_accuracy_ci[1] if r.balanced_accuracy_ci else np.nan for r in items]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.axhline(rows[0].chance, color="grey", ls="--", lw=1, label="chance")
        if rows[0].reads_point in x:
            ax.axvline(x[rows[0].reads_point], color="black", ls=":", lw=1, label="LM reads here")
        ax.set_xticks(range(len(points)), [_short(p) for p in points], rotation=60, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("balanced accuracy (95% CI)")
        ax.set_title(f"{rows[0].model} on {rows[0].data}", fontsize=9)
        ax.legend(fontsize=7, ncol=2, loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"layers__{Path(cache).stem}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def learning_curve_figure(rows: list[dict], path: Path) -> Path:
    """Balanced accuracy against training samples per class (log axis), a line per point/pooling/probe."""
    fig, ax = subplots(figsize=(6, 4))
    lines = defaultdict(list)
    for r in rows:
        lines[(r["point"], r["pooling"], r["probe"])].append(r)
    for key, items in sorted(lines.items()):
        items.sort(key=lambda r: r["per_class"])
        xs = [r["per_class"] for r in items]
        (line,) = ax.plot(xs, [r["balanced_accuracy"] for r in items], marker="o", ms=3, label=" / ".join(key))
        ax.fill_between(xs, [r["ci"][0] for r in items], [r["ci"][1] for r in items], color=line.get_color(),
                        alpha=0.15, linewidth=0)
    ax.axhline(rows[0]["chance"], color="grey", ls="--", lw=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training samples per class")
    ax.set_ylabel("balanced accuracy (95% CI)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def cka_figure(matrix: np.ndarray, names_a: list[str], names_b: list[str], title: str, path: Path) -> Path:
    """Heatmap of linear CKA between the points of two caches."""
    fig, ax = subplots(figsize=(max(4.0, 0.35 * len(names_b) + 2), max(3.5, 0.35 * len(names_a) + 1.5)))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(len(names_b)), [_short(n) for n in names_b], rotation=60, fontsize=7)
    ax.set_yticks(range(len(names_a)), [_short(n) for n in names_a], fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, label="linear CKA")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
