"""Bridge: probe skill against VQA skill; attribution of each failure to vision or to reasoning."""

from .._callable import make_callable
from .core import VERDICTS, BridgeRecord, bridge

__all__ = ["VERDICTS", "BridgeRecord", "bridge"]

make_callable(__name__)  # `from medfrag_probe import bridge` is callable (see medfrag_probe/_callable.py)
