"""Status output through the standard `logging` module, shared by the library and the CLI.

Everything goes to the `medfrag_probe` logger: status lines at INFO, warnings that change what a result means at
WARNING, per-result detail at DEBUG. By default the package writes INFO and above to stderr as bare lines (a library
call shows the same progress as the command); `--quiet` raises the level to WARNING and hides progress bars,
`--verbose` lowers it to DEBUG. An application that configures logging itself can take over::

    import logging
    logger = logging.getLogger("medfrag_probe")
    logger.handlers.clear(); logger.propagate = True     # route through the application's own handlers
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger("medfrag_probe")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the call (so redirected or captured stderr works)."""

    def __init__(self):
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _install() -> None:
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


_install()


def set_quiet(quiet: bool) -> None:
    """Silence progress bars and status lines (the `--quiet` flag); warnings still show."""
    set_level(logging.WARNING if quiet else logging.INFO)


def logger_level() -> int:
    """The package's log level (to hand to a worker process)."""
    return logger.level


def set_level(level: int) -> None:
    """Set the package's log level (INFO by default; WARNING hides progress bars too)."""
    logger.setLevel(level)
    if level > logging.INFO:
        _hide_library_bars()


def _hide_library_bars() -> None:
    """Hide the weight-loading bars of transformers and huggingface_hub."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


_BARS = [True]


def is_quiet() -> bool:
    """Whether progress bars are silenced (`--quiet`, or a worker of a parallel study whose bars would interleave)."""
    return not logger.isEnabledFor(logging.INFO) or not _BARS[0]


def as_worker(name: str) -> None:
    """Set up a worker process of a parallel run: no progress bars, each status line prefixed by `name`."""
    _BARS[0] = False
    _hide_library_bars()
    for handler in logger.handlers:
        handler.setFormatter(logging.Formatter(f"{name} | %(message)s"))


def info(message: str) -> None:
    """A status line (INFO)."""
    logger.info(message)


def debug(message: str) -> None:
    """Detail shown with `--verbose` (DEBUG)."""
    logger.debug(message)


def warn(message: str) -> None:
    """A warning that changes what the results mean (WARNING: shown even when quiet)."""
    logger.warning(f"warning: {message}")
