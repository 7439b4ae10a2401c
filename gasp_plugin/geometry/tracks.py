"""Ground-truth point tracks from posed RGB-D clips.

Shape notation: ``f`` frames of the clip, ``p`` query points, ``h, w`` image size.
Pixel convention: see :mod:`gasp_plugin.geometry` (pixel centres at integer coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Tracks"]


@dataclass(frozen=True)
class Tracks:
    """Where each query point of an anchor frame lands in every frame of a clip.

    Attributes:
        xy: ``[f, p, 2]`` float pixel coordinates ``(x, y)`` in each frame's own image resolution.
        visible: ``[f, p]`` bool, in image (with margin) and not occluded.
        depth: ``[f, p]`` float, the point's depth (z, metres) in each frame's camera.
        query_xy: ``[p, 2]`` float pixel coordinates of the queries in the anchor frame.
        anchor: row of the anchor frame in ``xy`` / ``visible`` / ``depth``.
    """

    xy: torch.Tensor
    visible: torch.Tensor
    depth: torch.Tensor
    query_xy: torch.Tensor
    anchor: int = 0

    @property
    def num_frames(self) -> int:
        return int(self.xy.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.xy.shape[1])
