"""Figures without pyplot: each figure is a plain `matplotlib.figure.Figure` saved by its own canvas.

No backend is selected and no global figure state is touched, so importing medfrag_probe in a notebook leaves the
user's backend alone, figures are never left open, and writing figures from several threads is safe.
"""

from __future__ import annotations

from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True):
    """A new figure and its axes, like `pyplot.subplots`."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)
