"""``GaspTargets``: what the GASP losses need about one batch of clips, as padded tensors.

Shape notation: ``b`` clips in the batch, ``f`` frames per clip, ``t`` target frames per clip,
``p`` anchor points, ``n`` visual tokens per frame. Padding: ``-1`` in index tensors, ``False``
in masks, ``0`` in depths.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = ["GaspTargets"]


@dataclass
class GaspTargets:
    """Ground truth for a batch of geometry clips.

    Attributes:
        token_positions: ``[b, f, n]`` long, sequence position of each frame's visual tokens (raster
            order in the frame's token grid), -1 = padding.
        anchor_frame: ``[b]`` long, the anchor's frame row.
        anchor_tokens: ``[b, p]`` long, raster token index of each anchor point in the anchor frame,
            -1 = no point.
        target_frames: ``[b, t]`` long, frame rows of the target frames, -1 = padding.
        pos_tokens: ``[b, t, p]`` long, raster token index holding the point in the target frame,
            -1 = outside the grid.
        visible: ``[b, t, p]`` bool, the point is visible in the target frame.
        point_depth: ``[b, t, p]`` float, the point's depth (metres) in the target frame, 0 = unknown.
        token_depth: ``[b, t, n]`` float, depth of each target-frame token's cell (median of valid
            pixels), 0 = no valid pixel.
    """

    token_positions: torch.Tensor
    anchor_frame: torch.Tensor
    anchor_tokens: torch.Tensor
    target_frames: torch.Tensor
    pos_tokens: torch.Tensor
    visible: torch.Tensor
    point_depth: torch.Tensor
    token_depth: torch.Tensor

    def __post_init__(self):
        b, f, n = self.token_positions.shape
        expect = {
            "anchor_frame": (b,),
            "anchor_tokens": (b, self.anchor_tokens.shape[-1]),
            "target_frames": (b, self.target_frames.shape[-1]),
        }
        t, p = expect["target_frames"][1], expect["anchor_tokens"][1]
        expect.update(
            pos_tokens=(b, t, p), visible=(b, t, p), point_depth=(b, t, p), token_depth=(b, t, n)
        )
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"GaspTargets.{name} must have shape {list(shape)}, got {list(got)}")

    def to(self, device=None) -> "GaspTargets":
        """A copy on ``device`` (dtypes unchanged)."""
        return GaspTargets(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def num_visible(self) -> int:
        return int(self.valid_pairs().sum())

    def valid_pairs(self) -> torch.Tensor:
        """``[b, t, p]`` bool: (point, target frame) pairs the correspondence term uses."""
        return (
            self.visible
            & (self.pos_tokens >= 0)
            & (self.anchor_tokens >= 0)[:, None, :]
            & (self.target_frames >= 0)[:, :, None]
        )

    def target_token_mask(self) -> torch.Tensor:
        """``[b, t, n]`` bool: real (non-padding) tokens of each target frame."""
        rows = self.target_frames.clamp(min=0)
        mask = torch.gather(self.token_positions >= 0, 1, rows[..., None].expand(-1, -1, self.token_positions.shape[-1]))
        return mask & (self.target_frames >= 0)[..., None]
