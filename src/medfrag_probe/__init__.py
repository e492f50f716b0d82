"""medfrag-probe: tell whether a vision-language model fails in what it sees or in what it does with it."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["EmbeddingCache", "UserError", "extract", "load_adapter", "open_source", "__version__"]


def __getattr__(name: str):
    # heavy imports (torch, transformers) happen on first use, so `--help` and `--version` stay fast
    if name == "extract":
        from .extract import extract
        return extract
    if name == "EmbeddingCache":
        from .cache import EmbeddingCache
        return EmbeddingCache
    if name == "load_adapter":
        from .models.loading import load_adapter
        return load_adapter
    if name == "open_source":
        from .data.sources import open_source
        return open_source
    if name == "UserError":
        from .errors import UserError
        return UserError
    raise AttributeError(f"module 'medfrag_probe' has no attribute {name!r}")
