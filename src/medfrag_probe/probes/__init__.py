"""Linear and kNN probes with honest splits, controls and bootstrap confidence intervals."""

from .estimators import KNNProbe, LinearProbe
from .run import ProbeResult, probe

__all__ = ["KNNProbe", "LinearProbe", "ProbeResult", "probe"]
