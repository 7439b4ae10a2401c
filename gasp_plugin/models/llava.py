"""LLaVA (1.5-style) adapter.

Token layout: the image processor pads the frame to a square first when ``do_pad`` is set
(``LlavaImageProcessor``, the original LLaVA's pad-to-square), resizes the shortest edge to
``size`` and centre-crops ``crop_size``; the vision tower cuts the crop into ``patch x patch`` cells, one LLM token each, in
raster order. With ``vision_feature_select_strategy == "full"`` the class token comes first and is
skipped here (it has no cell). Pixels cropped away map to no token (-1).

LLaVA-NeXT-Video and LLaVA-OneVision (any-resolution tiling, newline tokens, pooled video frames)
have their own adapters: :mod:`gasp_plugin.models.llava_next`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gasp_plugin.models.processing import ProcessorParts
from gasp_plugin.models.qwen2_vl import _check_frames
from gasp_plugin.models.registry import FrameLayout, VLMAdapter, register_adapter

__all__ = ["LlavaAdapter"]


def _get(size: Any, key: str):
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


@register_adapter("llava")
class LlavaAdapter(VLMAdapter):
    """LLaVA-1.5 style: one CLIP grid per image."""

    @property
    def patch(self) -> int:
        return int(self.config.vision_config.patch_size)

    @property
    def has_cls(self) -> bool:
        return self.config.vision_feature_select_strategy == "full"

    def build_frame_inputs(self, processor: Any, frames: list, *, prompt: str = "Describe the frames.") -> dict:
        frames = _check_frames(frames)
        if isinstance(processor, ProcessorParts):
            raise TypeError("LLaVA needs its full LlavaProcessor (AutoProcessor.from_pretrained loads it)")
        content = [{"type": "image"}] * len(frames) + [{"type": "text", "text": prompt}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
        return dict(processor(text=[text], images=frames, return_tensors="pt"))

    def visual_token_mask(self, inputs: dict) -> torch.Tensor:
        return inputs["input_ids"] == self.config.image_token_id

    def _grid(self, inputs: dict) -> tuple[int, int]:
        pv = inputs.get("pixel_values")
        if pv is None:
            raise ValueError("inputs hold no pixel_values: no visual tokens to supervise")
        return int(pv.shape[-2]) // self.patch, int(pv.shape[-1]) // self.patch

    def frame_token_counts(self, inputs: dict) -> list[list[int]]:
        gh, gw = self._grid(inputs)
        per = gh * gw + int(self.has_cls)
        out = []
        for r, total in enumerate(self.visual_token_mask(inputs).sum(-1).tolist()):
            if total % per:
                raise ValueError(f"row {r} has {total} image tokens, not a multiple of {per} per image")
            out.append([per] * (total // per))
        return out

    def frame_token_positions(self, inputs: dict) -> torch.Tensor:
        pos = super().frame_token_positions(inputs)
        return pos[..., 1:] if self.has_cls else pos

    def frame_grids(self, inputs: dict) -> list[list[tuple[int, int]]]:
        grid = self._grid(inputs)
        return [[grid] * len(row) for row in self.frame_token_counts(inputs)]

    def frame_layout(self, processor: Any, orig_hw: tuple[int, int]) -> FrameLayout:
        """Pad to square (``do_pad``: the frame centred on a ``max(h, w)`` canvas, as
        ``LlavaImageProcessor.pad_to_square``), resize (shortest edge, or a fixed size), centre-crop."""
        from transformers.image_transforms import get_resize_output_image_size

        ip = processor.image_processor
        h, w = int(orig_hw[0]), int(orig_hw[1])
        ph, pw, pad = h, w, (0, 0)
        if getattr(ip, "do_pad", False):
            side = max(h, w)
            ph = pw = side
            pad = ((side - h) // 2, 0) if w > h else (0, (side - w) // 2)
        short = _get(ip.size, "shortest_edge")
        if getattr(ip, "do_resize", True) and short:
            rh, rw = get_resize_output_image_size(
                np.zeros((3, ph, pw), np.uint8), size=int(short), default_to_square=False, input_data_format="channels_first"
            )
        elif getattr(ip, "do_resize", True):
            rh, rw = int(_get(ip.size, "height")), int(_get(ip.size, "width"))
        else:
            rh, rw = ph, pw
        ch, cw = rh, rw
        top = left = 0
        if getattr(ip, "do_center_crop", False):
            ch, cw = int(_get(ip.crop_size, "height")), int(_get(ip.crop_size, "width"))
            if ch > rh or cw > rw:
                raise ValueError(f"crop {ch}x{cw} larger than the resized frame {rh}x{rw}; padding crops are not supported")
            top, left = int((rh - ch) / 2.0), int((rw - cw) / 2.0)
        return FrameLayout((h, w), (int(rh), int(rw)), (top, left), self.patch, (ch // self.patch, cw // self.patch),
                           pad, (ph, pw))
