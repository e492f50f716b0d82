"""Quiet-aware status output shared by the library and the CLI."""

from __future__ import annotations

import os
import sys

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Silence progress bars and status lines (the `--quiet` flag)."""
    global _QUIET
    _QUIET = quiet
    if quiet:  # the weight-loading bars of transformers and huggingface_hub too
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        try:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        except ImportError:
            pass


def is_quiet() -> bool:
    """Whether progress output is silenced."""
    return _QUIET


def info(message: str) -> None:
    """Print a status line to stderr unless quiet."""
    if not _QUIET:
        print(message, file=sys.stderr, flush=True)
