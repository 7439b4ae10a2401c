"""What LLaVA-NeXT-Video and LLaVA-OneVision share: any-resolution images, the base view GASP
supervises, pooled video frames, and the adapter base class. The families' modules
(:mod:`~gasp_plugin.models.llava_next_video`, :mod:`~gasp_plugin.models.llava_onevision`) set
what differs; every size is read from the model config or the processor, none typed in.

**Any-resolution images** (transformers' ``LlavaNext*`` / ``LlavaOnevision*`` image processors and
``pack_image_features``). An image gives, in this order in the sequence:

1. the *base view*: the whole frame resized to the tower's input (side ``S`` = the vision
   config's ``image_size``), ``S // patch`` x ``S // patch`` tokens in raster order;
2. the *tiles*: the frame resized (aspect kept) into the best of ``config.image_grid_pinpoints``,
   zero-padded to it, cut into ``S x S`` tiles; their features are stitched into one grid, the
   padded rows / columns cut off again on the feature grid ("unpadding"), for OneVision shrunk
   bilinearly when above ``anyres_max_N`` tiles' worth, and an ``image_newline`` token closes
   each row.

LLaVA-OneVision gives a sample with several images the base view alone (the frame padded to a
square, then resized) plus one ``image_newline``; a lone image is tiled.

**What GASP supervises: each frame's base view.** It is the one view of the whole frame that
every frame has, a plain raster grid at a fixed size (24 x 24 tokens for LLaVA-NeXT-Video at
336 px, 27 x 27 for OneVision at 384 px), reached by one resize (and OneVision's pad), so each
pixel of the frame has exactly one token and the probe's token distances mean the same for every
frame. The tile grid covers the frame a second time with a size that depends on the frame's
aspect ratio, unpadding rounds on the feature grid, and OneVision's shrink mixes neighbouring
cells; supervising it too would ask one point to match two tokens per frame. Tile and newline
tokens stay in the sequence (attention sees them) and are left out of the targets:
:meth:`AnyresAdapter.frame_token_positions` returns the base-view positions only.

**Video frames** go through the tower one by one and are pooled on the feature grid (LLaVA-NeXT-
Video: ``spatial_pool_stride`` average pooling, cells of ``patch * stride`` pixels; OneVision:
bilinear halving, see :func:`~gasp_plugin.models.registry.resampled_token_of_patch`), each frame
a raster grid; OneVision adds one ``image_newline`` after the last frame, which is skipped.
Without torchvision (no video processor) the video pixels are made by an image processor with
the video processor's settings read from the checkpoint's image processor (resize, crop,
normalisation): the same geometry, resampled by PIL instead of torchvision.

Shape notation: ``f`` frames, ``n`` tokens of a frame's supervised grid, ``S`` tower input side.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from gasp_plugin.models.processing import ProcessorParts
from gasp_plugin.models.prompts import chat_prompt, check_frames, expand_placeholders, tokenize
from gasp_plugin.models.registry import FrameLayout, VLMAdapter, _split_positions

__all__ = ["AnyresAdapter", "anyres_tile_grid", "resize_crop"]


def _get(size: Any, key: str):
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def resize_crop(hw: tuple[int, int], size: Any, crop_size: Any, do_resize: bool = True,
                do_center_crop: bool = False) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``(resized_hw, crop_yx, out_hw)`` of an image of ``hw`` through a transformers image
    processor's resize (``size``: ``shortest_edge`` keeps the aspect, ``height`` / ``width`` set
    both) and centre crop (``crop_size``, offsets ``(h - ch) // 2`` as the processors)."""
    from transformers.image_transforms import get_resize_output_image_size

    h, w = int(hw[0]), int(hw[1])
    rh, rw = h, w
    if do_resize and _get(size, "shortest_edge"):
        rh, rw = get_resize_output_image_size(np.zeros((3, h, w), np.uint8), size=int(_get(size, "shortest_edge")),
                                              default_to_square=False, input_data_format="channels_first")
    elif do_resize:
        rh, rw = int(_get(size, "height")), int(_get(size, "width"))
    if not do_center_crop:
        return (int(rh), int(rw)), (0, 0), (int(rh), int(rw))
    ch, cw = int(_get(crop_size, "height")), int(_get(crop_size, "width"))
    if ch > rh or cw > rw:
        raise ValueError(f"crop {ch}x{cw} larger than the resized frame {rh}x{rw}; padding crops are not supported")
    return (int(rh), int(rw)), ((rh - ch) // 2, (rw - cw) // 2), (ch, cw)


def anyres_tile_grid(orig_hw: tuple[int, int], pinpoints: list, tile: int, side: int,
                     max_tiles: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` of the stitched tile feature grid an image of ``orig_hw`` leaves after
    unpadding (and OneVision's ``anyres_max_N`` shrink when ``max_tiles`` is given), as
    transformers' ``pack_image_features``; each row is followed by one newline token."""
    from transformers.image_processing_utils import select_best_resolution

    oh, ow = int(orig_hw[0]), int(orig_hw[1])
    bh, bw = select_best_resolution((oh, ow), pinpoints)
    ch, cw = bh // tile * side, bw // tile * side
    if ow / oh > cw / ch:  # unpad_image: the padded rows of the feature grid go
        pad = (ch - int(round(oh * (cw / ow), 7))) // 2
        ch -= 2 * pad
    else:
        pad = (cw - int(round(ow * (ch / oh), 7))) // 2
        cw -= 2 * pad
    if max_tiles is not None:
        ratio = math.sqrt(ch * cw / (max_tiles * side**2))
        if ratio > 1.1:
            ch, cw = int(ch // ratio), int(cw // ratio)
    return ch, cw


class AnyresAdapter(VLMAdapter):
    """Base class of the LLaVA-NeXT families; see the module docstring. Subclasses set
    :attr:`feature_strategy` and :attr:`multi_image_from` and the family hooks: ``_max_tiles``,
    ``_image_batch``, ``_base_canvas`` (images); ``_video_resize``, ``_video_grid``,
    ``_video_cell`` / ``_video_table``, ``_video_trailing`` (video)."""

    vision_pattern = r"(?:^|\.)(?:vision_tower|multi_modal_projector|vision_resampler)\."
    #: the ``vision_feature_select_strategy`` the family's tower needs (CLIP: "default" drops the
    #: class token; SigLIP has none: "full")
    feature_strategy = "default"
    #: frames of one image sample that switch to the multi-image (untiled) form; None = never
    multi_image_from: int | None = None

    # -- config ------------------------------------------------------------------------------
    @property
    def patch(self) -> int:
        return int(self.config.vision_config.patch_size)

    @property
    def tile(self) -> int:
        """``S``, the tower's input side."""
        return int(self.config.vision_config.image_size)

    @property
    def side(self) -> int:
        """Patch tokens per side of one ``S x S`` view."""
        return self.tile // self.patch

    def _check_strategy(self) -> None:
        got = self.config.vision_feature_select_strategy
        if got != self.feature_strategy:
            raise ValueError(f"{type(self).__name__}: vision_feature_select_strategy={got!r}, but this family's "
                             f"tower needs {self.feature_strategy!r} for its token layout")

    def _token(self, token_id: int, processor: Any) -> str:
        return processor.tokenizer.convert_ids_to_tokens(int(token_id))

    # -- images --------------------------------------------------------------------------------
    def _max_tiles(self) -> int | None:
        return None

    def _image_count(self, orig_hw, tiled: bool) -> int:
        """Sequence tokens of one image: base view, then tiles and newlines (or one newline)."""
        base = self.side**2
        if not tiled:
            return base + 1
        rows, cols = anyres_tile_grid(orig_hw, self.config.image_grid_pinpoints, self.tile, self.side, self._max_tiles())
        return base + rows * (cols + 1)

    def _image_counts(self, inputs: dict) -> list[int]:
        """Tokens of every image of the batch, in order (from ``image_sizes`` and, for
        OneVision, ``batch_num_images``)."""
        self._check_strategy()
        sizes = inputs.get("image_sizes")
        if sizes is None:
            raise ValueError("inputs hold pixel_values without image_sizes; build them with the family's processor")
        sizes = torch.as_tensor(sizes).tolist()
        per_sample = inputs.get("batch_num_images")
        if per_sample is None or self.multi_image_from is None:
            tiled = [True] * len(sizes)
        else:
            tiled = [int(n) < self.multi_image_from for n in torch.as_tensor(per_sample).tolist() for _ in range(int(n))]
        return [self._image_count(hw, t) for hw, t in zip(sizes, tiled)]

    def _image_batch(self, frames: list) -> list:
        return frames

    def expand_images(self, processor: Any, images: list) -> tuple[dict, list[int]]:
        """``(vision inputs, tokens per image)`` for ``images`` of one sample, through the image
        processor: what a processor without its video part needs to expand ``<image>``."""
        vis = dict(processor.image_processor(images=self._image_batch(list(images)), return_tensors="pt"))
        return vis, self._image_counts(vis)

    def build_frame_inputs(self, processor: Any, frames: list, *, prompt: str = "Describe the frames.") -> dict:
        """Inputs for ``frames`` (list of uint8 ``[h, w, 3]``) as separate images of one sample."""
        frames = check_frames(frames)
        text = chat_prompt(processor, "image", len(frames), prompt)
        if not isinstance(processor, ProcessorParts):
            return dict(processor(text=[text], images=self._image_batch(frames), return_tensors="pt"))
        vis, counts = self.expand_images(processor, frames)
        token = self._token(self.config.image_token_id, processor)
        return {**tokenize(processor, expand_placeholders(text, token, [token * c for c in counts])), **vis}

    def _base_canvas(self, orig_hw) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(pad_yx, padded_hw)`` of the canvas the base view resizes (no pad: the frame)."""
        return (0, 0), (int(orig_hw[0]), int(orig_hw[1]))

    def frame_layout(self, processor: Any, orig_hw: tuple[int, int]) -> FrameLayout:
        """The base view's layout: the frame (on its canvas) resized to the tower's input."""
        ip = processor.image_processor
        pad, canvas = self._base_canvas(orig_hw)
        size = ip.size
        square = (_get(size, "height"), _get(size, "width")) if _get(size, "height") else (_get(size, "shortest_edge"),) * 2
        # the base view is resized to `size` as a square, then resized by `size` again and cropped
        resized, crop, out = resize_crop(tuple(int(s) for s in square), size, ip.crop_size,
                                         bool(getattr(ip, "do_resize", True)), bool(getattr(ip, "do_center_crop", False)))
        grid = (out[0] // self.patch, out[1] // self.patch)
        if grid != (self.side, self.side):
            raise ValueError(f"the image processor makes {out[0]}x{out[1]} px base views ({grid[0]}x{grid[1]} patches) "
                             f"but the vision tower takes {self.tile} px ({self.side}x{self.side})")
        return FrameLayout((int(orig_hw[0]), int(orig_hw[1])), resized, crop, self.patch, grid, pad, canvas)

    # -- video ---------------------------------------------------------------------------------
    def _video_settings(self, processor: Any) -> Any:
        """The resize / crop / normalisation video frames get: the video processor's when there
        is one, else its saved settings (:attr:`ProcessorParts.video_processor_config`) with the
        image processor's for what they leave out."""
        vp = getattr(processor, "video_processor", None)
        if vp is not None:
            return vp
        ip, saved = processor.image_processor, getattr(processor, "video_processor_config", None) or {}
        keys = ("size", "crop_size", "do_center_crop", "resample", "image_mean", "image_std", "rescale_factor")
        return SimpleNamespace(**{k: saved[k] if saved.get(k) is not None else getattr(ip, k, None) for k in keys})

    def _video_resize(self, vp: Any) -> tuple[Any, Any, bool]:
        """``(size, crop_size, do_center_crop)`` of video frames; families override."""
        return vp.size, getattr(vp, "crop_size", None), bool(getattr(vp, "do_center_crop", False))

    def _video_grid(self, out_hw: tuple[int, int]) -> tuple[int, int]:
        raise NotImplementedError

    def _video_table(self, out_hw: tuple[int, int]):
        """``token_of_patch`` of the video layout (None: tokens are cells of :meth:`_video_cell`)."""
        return None

    def _video_cell(self) -> int:
        return self.patch

    _video_trailing = 0  #: tokens after the last frame's (OneVision: one newline)

    def video_frame_layout(self, processor: Any, orig_hw: tuple[int, int]) -> FrameLayout:
        size, crop, do_crop = self._video_resize(self._video_settings(processor))
        resized, crop_yx, out = resize_crop(orig_hw, size, crop, True, do_crop)
        return FrameLayout((int(orig_hw[0]), int(orig_hw[1])), resized, crop_yx, self._video_cell(),
                           self._video_grid(out), token_of_patch=self._video_table(out))

    def _video_pixels(self, processor: Any, frames: list[np.ndarray]) -> torch.Tensor:
        """``[1, f, 3, H, W]`` video frames made by a PIL image processor with the video settings."""
        from transformers import CLIPImageProcessorPil

        vp = self._video_settings(processor)
        size, crop, do_crop = self._video_resize(vp)
        ip = CLIPImageProcessorPil(size=dict(size), crop_size=dict(crop) if crop else None, do_center_crop=do_crop,
                                   resample=vp.resample, image_mean=vp.image_mean, image_std=vp.image_std,
                                   rescale_factor=vp.rescale_factor, do_convert_rgb=True)
        return ip(images=frames, return_tensors="pt")["pixel_values"][None]

    def build_video_inputs(self, processor: Any, frames: list, *, prompt: str = "Describe the video.") -> dict:
        """Inputs for ``frames`` as one video (see the module docstring for the pixels)."""
        self._check_strategy()
        frames = check_frames(frames)
        if len({fr.shape for fr in frames}) != 1:
            raise ValueError(f"video frames must share one size, got {sorted({fr.shape for fr in frames})}")
        text = chat_prompt(processor, "video", 1, prompt)
        if getattr(processor, "video_processor", None) is not None and not isinstance(processor, ProcessorParts):
            return dict(processor(text=[text], videos=[np.stack(frames)], return_tensors="pt"))
        pixels = self._video_pixels(processor, frames)
        gh, gw = self._video_grid(tuple(pixels.shape[-2:]))
        count = len(frames) * gh * gw + self._video_trailing
        token = self._token(self.config.video_token_id, processor)
        return {**tokenize(processor, expand_placeholders(text, token, [token * count])), "pixel_values_videos": pixels}

    def video_geometry_rows(self, num_frames: int, anchor: int) -> list[int]:
        """Every frame is a token frame of its own."""
        if num_frames < 2 or not 0 <= anchor < num_frames:
            raise ValueError(f"a geometry video needs >= 2 frames and an anchor among them; got {num_frames} "
                             f"frames, anchor {anchor}")
        return list(range(num_frames))

    # -- token layout ----------------------------------------------------------------------------
    def visual_token_mask(self, inputs: dict) -> torch.Tensor:
        return self._media_token_mask(inputs)

    def _frames_per_row(self, inputs: dict) -> list[list[int]]:
        """Sequence tokens of each frame of each row (images: base, tiles and newlines; video:
        the frame's pooled grid; OneVision's closing newline is not a frame's)."""
        totals = self.visual_token_mask(inputs).sum(-1).tolist()
        if self._is_video(inputs):
            b, f = inputs["pixel_values_videos"].shape[:2]
            gh, gw = self._video_grid(tuple(inputs["pixel_values_videos"].shape[-2:]))
            rows = [[gh * gw] * f if total else [] for total in totals]
            for r, (total, row) in enumerate(zip(totals, rows)):
                if total and total != sum(row) + self._video_trailing:
                    raise ValueError(f"row {r} has {total} video tokens but {f} frames of {gh}x{gw} need "
                                     f"{sum(row) + self._video_trailing}")
            if sum(bool(t) for t in totals) != b:
                raise ValueError(f"{b} videos for {sum(bool(t) for t in totals)} rows holding video tokens")
            return rows
        per_image, rows, k = self._image_counts(inputs), [], 0
        for r, total in enumerate(totals):
            row = []
            while total > 0 and k < len(per_image):
                row.append(per_image[k])
                total -= per_image[k]
                k += 1
            if total != 0:
                raise ValueError(f"row {r}: its image tokens do not split into whole images of the given sizes "
                                 "(were inputs truncated?)")
            rows.append(row)
        if k != len(per_image):
            raise ValueError(f"the inputs describe {len(per_image)} images but input_ids hold only {k}")
        return rows

    def frame_token_counts(self, inputs: dict) -> list[list[int]]:
        return self._frames_per_row(inputs)

    def frame_grids(self, inputs: dict) -> list[list[tuple[int, int]]]:
        rows = self._frames_per_row(inputs)
        grid = self._video_grid(tuple(inputs["pixel_values_videos"].shape[-2:])) if self._is_video(inputs) \
            else (self.side, self.side)
        return [[grid] * len(row) for row in rows]

    def frame_token_positions(self, inputs: dict) -> torch.Tensor:
        """``[b, f, n]``: each frame's supervised tokens (base view / pooled grid), raster order;
        tiles and newline tokens left out."""
        rows = self._frames_per_row(inputs)
        mask = self.visual_token_mask(inputs)
        if self._is_video(inputs) and self._video_trailing:
            mask = mask.clone()
            for r in range(mask.shape[0]):  # the closing newline(s): the row's last video tokens
                last = torch.nonzero(mask[r]).flatten()[-self._video_trailing:]
                mask[r, last] = False
        pos = _split_positions(mask, rows)
        grids = self.frame_grids(inputs)
        n = max((g[0] * g[1] for row in grids for g in row), default=0)
        return pos[..., :n]
