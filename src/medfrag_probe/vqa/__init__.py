"""End-to-end answers of VLMs: prompts, generation under controls, parsing, robustness measures, import."""

from .run import CONDITIONS, VQARecord, vqa

__all__ = ["CONDITIONS", "VQARecord", "vqa"]
