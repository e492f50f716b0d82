"""Bridge: probe skill against VQA skill; attribution of each failure to vision or to reasoning."""

from .core import VERDICTS, BridgeRecord, bridge

__all__ = ["VERDICTS", "BridgeRecord", "bridge"]
