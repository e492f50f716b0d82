"""What ships with the package: model presets and tiny models, task files, experiment configs.

    from medfrag_probe import list_models, list_tasks, list_experiments
    list_tasks()         # ['brain-tumor-mri', 'histopathology', ..., 'synth-histology']
"""

from __future__ import annotations

from ._yaml import shipped_names


def list_models() -> list[str]:
    """Model specs that need no path: presets (real Hub checkpoints) and tiny random test models."""
    from .models.registry import PRESETS
    from .models.tiny import TINY

    return sorted(PRESETS) + [f"tiny:{name}" for name in sorted(TINY)]


def list_tasks() -> list[str]:
    """Names of the shipped VQA task files (`load_task(name)`, `--task NAME`)."""
    return shipped_names("tasks")


def list_experiments() -> list[str]:
    """Names of the shipped study configs (`run(name)`, `medfrag-probe run NAME`)."""
    return shipped_names("experiments")
