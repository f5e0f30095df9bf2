"""How the reports draw and save their figures: one resolution, one palette, atomic PNG files."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.fileio import atomic_path

__all__ = ["COLOURS", "DPI", "save_figure"]

DPI = 120
COLOURS = colormaps["tab10"].colors


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` without a pyplot window and write it to ``path`` atomically.

    The file carries no software version, so the same figure always gives the same bytes.

    Parameters
    ----------
    fig : the figure
    path : the image file; its suffix names the format (``.png``)

    Returns
    -------
    Path -- ``path``
    """
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=DPI, metadata={"Software": None})
    return path
