"""medfrag-probe: tell whether a vision-language model fails in what it sees or in what it does with it.

Every command is also a library function of the same name::

    from medfrag_probe import extract, probe, vqa, intervene, bridge, run, report
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
import os

# Idle OpenMP threads sleep instead of spinning, so jobs that share a machine do not burn each other's cores (two VQA
# runs side by side: 58 s with spinning threads, 25 s without; alone: unchanged). It must be set before torch starts
# its thread pool, so it takes effect when medfrag_probe is imported before torch; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["EmbeddingCache", "UserError", "extract", "load_adapter", "open_source", "probe", "vqa", "import_answers",
           "export_task", "intervene", "bridge", "run", "report", "load_config", "results_frame", "list_models",
           "list_tasks", "list_experiments", "__version__"]

# name -> module holding it, imported on first use so that `--help` and `--version` stay fast. Commands are plain
# functions: `inspect.signature(medfrag_probe.extract)` shows their parameters.
_LAZY = {"EmbeddingCache": "cache", "load_adapter": "models.loading", "open_source": "data.sources",
         "UserError": "errors", "extract": "extraction", "probe": "probes.run", "vqa": "answering.run",
         "import_answers": "answering.importer", "bridge": "attribution.core",
         "intervene": "intervention", "run": "experiment.runner",
         "report": "experiment.report", "load_config": "experiment.config", "results_frame": "frames",
         "export_task": "answering.export", "list_models": "catalog", "list_tasks": "catalog",
         "list_experiments": "catalog"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'medfrag_probe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
