"""End-to-end answers of VLMs: prompts, generation under controls, parsing, robustness measures, import."""

from .._callable import make_callable
from .run import CONDITIONS, VQARecord, vqa

__all__ = ["CONDITIONS", "VQARecord", "vqa"]

make_callable(__name__)  # `from medfrag_probe import vqa` is callable (see medfrag_probe/_callable.py)
