"""End-to-end answers of VLMs: prompts, generation under controls, parsing, robustness measures, import.

The command is `medfrag_probe.vqa` (this package's `run.vqa`)."""

from .plan import CONDITIONS
from .run import vqa

__all__ = ["CONDITIONS", "vqa"]
