"""Figures for the reports: a matplotlib figure without any GUI backend, written as PNG atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from components.core.fsutil import atomic_write_bytes


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas: no pyplot state, no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: Path, dpi: int = 120) -> None:
    """Lay the figure out and write it as PNG, whole or not at all."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
