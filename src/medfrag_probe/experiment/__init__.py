"""Whole studies from one config: `run` (extract -> probe -> vqa -> bridge), `report`, and the demo."""

from .config import Config, load_config
from .runner import run

__all__ = ["Config", "load_config", "run"]
