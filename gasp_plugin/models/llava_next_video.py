"""LLaVA-NeXT-Video adapter (``llava_next_video``, ``LlavaNextVideoForConditionalGeneration``).

CLIP tower (class token dropped: ``vision_feature_select_strategy == "default"``), Llama LLM.

- **Frames as a video** (the paper's form, and this family's default for geometry clips:
  :attr:`geometry_as_video`): each frame is resized (shortest edge) and centre-cropped by the video
  settings, cut into ``patch`` cells, and the spatial pooler (``spatial_pool_stride`` s, average /
  max / conv with kernel = stride) turns each ``s x s`` block of patches into one token: cells of
  ``patch * s`` pixels (28 px: 12 x 12 tokens per 336 px frame), raster order, frames one after
  another, no separator tokens. The pooler needs a square patch grid (a square crop).
- **Frames as images**: any-resolution tiling per frame; GASP supervises each frame's base view
  (24 x 24 at 336 px) and leaves the tiles and their newline tokens out of the targets (see
  :mod:`gasp_plugin.models.llava_next` for why). A 640x480 frame costs 576 base + 1764 tile and
  newline tokens, four times its video form: long clips belong in the video form.
"""

from __future__ import annotations

from typing import Any

from gasp_plugin.models.llava_next import AnyresAdapter
from gasp_plugin.models.registry import register_adapter

__all__ = ["LlavaNextVideoAdapter"]


@register_adapter("llava_next_video")
class LlavaNextVideoAdapter(AnyresAdapter):
    """LLaVA-NeXT-Video: pooled video frames (default for geometry) or any-resolution images."""

    geometry_as_video = True
    feature_strategy = "default"

    @property
    def stride(self) -> int:
        return int(self.config.spatial_pool_stride)

    def _video_cell(self) -> int:
        return self.patch * self.stride

    def _video_grid(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        """Pooled tokens of a cropped ``out_hw`` frame (kernel = stride, no padding: floor)."""
        if out_hw[0] != out_hw[1]:
            raise ValueError(f"LLaVA-NeXT-Video's pooler needs square frames after the crop; the video settings give "
                             f"{out_hw[0]}x{out_hw[1]} px (set crop_size to a square)")
        n = out_hw[0] // self.patch // self.stride
        return n, n

    def _video_resize(self, vp: Any) -> tuple[Any, Any, bool]:
        return vp.size, vp.crop_size, bool(getattr(vp, "do_center_crop", True))
