"""End-to-end answers of VLMs: prompts, parsing of free-text responses, robustness measures (in progress)."""
