"""Attribution: probe skill against VQA skill; each failure attributed to vision or to reasoning.

The command is `medfrag_probe.bridge` (this package's `core.bridge`)."""

from .core import VERDICTS, bridge

__all__ = ["VERDICTS", "bridge"]
