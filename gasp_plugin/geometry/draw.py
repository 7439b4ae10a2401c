"""Pictures of tracks: the anchor frame with its query points, and each target frame with the
points visible there, each point in the same colour everywhere (hue from its anchor x, brightness
from its anchor y), so a reader can check matches by eye.

Shape notation: ``f`` frames, ``p`` points, ``h, w`` image size.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np

__all__ = ["point_colours", "draw_tracks"]


def point_colours(query_xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[p, 3]`` RGB in [0, 1]: hue from x / width, value from y / height."""
    return np.array([colorsys.hsv_to_rgb(0.85 * x / max(width, 1), 0.9, 0.55 + 0.45 * y / max(height, 1))
                     for x, y in np.asarray(query_xy, dtype=np.float64)]).reshape(-1, 3)


def draw_tracks(anchor_image: np.ndarray, images: np.ndarray, tracks, path: str | Path,
                titles: list[str] | None = None, anchor_title: str = "anchor", columns: int = 4,
                panel_inches: float = 3.2) -> Path:
    """Write a PNG: the anchor image (``uint8 [h, w, 3]``) with ``tracks.query_xy``, then each of
    ``images`` (``uint8 [f, h', w', 3]``, the rows of ``tracks``) with its visible points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    query = tracks.query_xy.cpu().numpy()
    xy, visible = tracks.xy.cpu().numpy(), tracks.visible.cpu().numpy()
    colours = point_colours(query, anchor_image.shape[1], anchor_image.shape[0])
    panels = 1 + len(images)
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    aspect = anchor_image.shape[0] / anchor_image.shape[1]
    fig = Figure(figsize=(panel_inches * cols, panel_inches * aspect * rows + 0.4 * rows))
    FigureCanvasAgg(fig)
    marker = max(6.0, 200.0 / math.sqrt(max(len(query), 1)))
    for k in range(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.set_axis_off()
        if k == 0:
            ax.imshow(anchor_image)
            ax.scatter(query[:, 0], query[:, 1], s=marker, c=colours, edgecolors="black", linewidths=0.4)
            ax.set_title(f"{anchor_title}: {len(query)} queries", fontsize=9)
            continue
        r = k - 1
        ax.imshow(images[r])
        v = visible[r]
        ax.scatter(xy[r, v, 0], xy[r, v, 1], s=marker, c=colours[v], edgecolors="black", linewidths=0.4)
        name = titles[r] if titles else f"row {r}"
        ax.set_title(f"{name}: {int(v.sum())}/{len(v)} visible", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
