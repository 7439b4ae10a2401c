"""LLaVA-OneVision adapter (``llava_onevision``, ``LlavaOnevisionForConditionalGeneration``).

SigLIP tower (no class token: ``vision_feature_select_strategy == "full"``), Qwen2 LLM with
grouped-query attention; tower input ``S`` = 384 px with patch 14, so 27 x 27 patches cover the
first 378 px of each side and the last 6 px reach no token.

- **Frames as images** (default for geometry clips): a sample with two or more images gives each
  one view, the frame padded to a square (centred, mean colour) and resized to ``S x S``,
  27 x 27 tokens, then one ``image_newline`` (left out of the targets). A lone image is tiled
  (``anyres_max_9``, see :mod:`gasp_plugin.models.llava_next`): GASP frames come two or more per
  sample, so :meth:`LlavaOnevisionAdapter.build_frame_inputs` refuses one.
- **Frames as a video**: each frame resized to ``S x S`` (no pad), 27 x 27 patch features
  resized bilinearly to ``ceil(27 / 2)`` = 14 x 14 tokens (``apply_pooling``), frames one after
  another, one ``image_newline`` after the last frame. Bilinear resizing without antialias
  samples the patch grid: each token reads mostly the patch or two nearest its sampling point;
  the layout's ``token_of_patch`` names for each patch the token it weighs most in.
"""

from __future__ import annotations

import math
from typing import Any

from gasp_plugin.models.llava_next import AnyresAdapter
from gasp_plugin.models.prompts import check_frames
from gasp_plugin.models.registry import register_adapter, resampled_token_of_patch

__all__ = ["LlavaOnevisionAdapter"]

#: LlavaOnevisionModel.apply_pooling resizes each frame's patch grid to ceil(side / 2): a constant
#: of the model's code (no config field holds it)
VIDEO_POOL = 2


@register_adapter("llava_onevision")
class LlavaOnevisionAdapter(AnyresAdapter):
    """LLaVA-OneVision: one padded view per frame of a multi-image sample, or bilinearly pooled video frames."""

    feature_strategy = "full"
    multi_image_from = 2
    _video_trailing = 1

    def _max_tiles(self) -> int | None:
        ratio = getattr(self.config, "vision_aspect_ratio", None) or "anyres_max_9"
        return int(ratio.strip("anyres_max_"))  # as LlavaOnevisionModel.pack_image_features reads it

    def _image_batch(self, frames: list) -> list:
        return [frames]  # one sample holding all frames: the multi-image form

    def build_frame_inputs(self, processor: Any, frames: list, *, prompt: str = "Describe the frames.") -> dict:
        frames = check_frames(frames)
        if len(frames) < self.multi_image_from:
            raise ValueError(f"LLaVA-OneVision tiles a lone image (anyres); GASP supervises the one-view form a sample "
                             f"of {self.multi_image_from} or more images gets: pass at least {self.multi_image_from} "
                             f"frames, got {len(frames)}")
        return super().build_frame_inputs(processor, frames, prompt=prompt)

    def _base_canvas(self, orig_hw) -> tuple[tuple[int, int], tuple[int, int]]:
        """The square the multi-image view pads the frame onto (``pad_to_square``: centred)."""
        h, w = int(orig_hw[0]), int(orig_hw[1])
        side = max(h, w)
        return ((side - h) // 2, 0) if w > h else (0, (side - w) // 2), (side, side)

    def _video_resize(self, vp: Any) -> tuple[Any, Any, bool]:
        return vp.size, None, False

    def _video_patches(self, out_hw: tuple[int, int]) -> int:
        if tuple(out_hw) != (self.tile, self.tile):
            raise ValueError(f"LLaVA-OneVision video frames must reach the tower at {self.tile}x{self.tile} px; the "
                             f"video settings give {out_hw[0]}x{out_hw[1]}")
        return self.side

    def _video_grid(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        n = math.ceil(self._video_patches(out_hw) / VIDEO_POOL)
        return n, n

    def _video_table(self, out_hw: tuple[int, int]):
        patches, (tokens, _) = self._video_patches(out_hw), self._video_grid(out_hw)
        table = resampled_token_of_patch(patches, tokens, "bilinear")
        return table, table
