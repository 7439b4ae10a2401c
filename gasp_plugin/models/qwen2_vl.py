"""Qwen2-VL and Qwen2.5-VL adapter.

Token layout (read from the model config and the image processor, never typed in): an image of
resized size ``(H, W)`` gives ``(H / patch) x (W / patch)`` patches, merged ``merge x merge`` into
``gh = H / (patch * merge)`` by ``gw`` LLM tokens in raster order; its ``image_token_id``
placeholders sit between ``vision_start`` and ``vision_end`` tokens. ``mm_token_type_ids``
(:data:`~gasp_plugin.constants.IMAGE_TOKEN_TYPE` at image tokens,
:data:`~gasp_plugin.constants.VIDEO_TOKEN_TYPE` at video tokens) is always returned, since the
model requires it with grids.

**Frames as a video.** With ``temporal_patch_size`` = 2, a video's consecutive frames ``(2g,
2g + 1)`` share one temporal token group ``g``: the group's tokens mix both frames. GASP uses the
*first* frame of a group (row ``2g``) as the group's geometry frame: its tracks give the group's
targets, and the second frame only adds appearance. Pairs of frames inside one group cannot be
supervised against each other and are rejected by :func:`check_video_pairs`. Video inputs are built
from the model's own image processor (each frame resized and patchified as an image, then paired
along the temporal axis), which matches the video processor's layout without needing torchvision.

Shape notation: ``f`` frames, ``g`` temporal groups, ``N`` patches of one frame, ``C`` channels.
"""

from __future__ import annotations

from typing import Any

import torch

from gasp_plugin.data.instruct import mm_token_type_ids
from gasp_plugin.models.processing import ProcessorParts
from gasp_plugin.models.prompts import check_frames as _check_frames
from gasp_plugin.models.registry import FrameLayout, VLMAdapter, register_adapter

__all__ = ["QwenVLAdapter", "check_video_pairs", "video_geometry_frames"]

def _size_entry(size: Any, key: str) -> int:
    return int(size[key] if isinstance(size, dict) else getattr(size, key))


def video_geometry_frames(num_frames: int, temporal_patch_size: int) -> list[int]:
    """The frame row whose geometry each temporal group uses: ``[0, tps, 2 tps, ...]``."""
    if num_frames % temporal_patch_size:
        raise ValueError(
            f"a Qwen-VL video needs a multiple of temporal_patch_size={temporal_patch_size} frames, "
            f"got {num_frames}; drop or repeat a frame"
        )
    return list(range(0, num_frames, temporal_patch_size))


def check_video_pairs(anchor: int, targets: list[int], temporal_patch_size: int) -> None:
    """Raise if the anchor or a target is not a group's geometry frame, or both share a group."""
    for row in [anchor, *targets]:
        if row % temporal_patch_size:
            raise ValueError(
                f"frame row {row} is the second frame of temporal group {row // temporal_patch_size}; "
                f"only rows divisible by temporal_patch_size={temporal_patch_size} carry geometry"
            )
    same = [t for t in targets if t // temporal_patch_size == anchor // temporal_patch_size]
    if same:
        raise ValueError(
            f"target rows {same} fall into the anchor's temporal group {anchor // temporal_patch_size}; "
            "a group cannot be matched against itself"
        )


@register_adapter("qwen2_vl", "qwen2_5_vl")
class QwenVLAdapter(VLMAdapter):
    """Qwen2-VL / Qwen2.5-VL: frames as separate images (default) or as one video."""

    @property
    def merge(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    @property
    def temporal_patch_size(self) -> int:
        return int(self.config.vision_config.temporal_patch_size)

    # -- building inputs ---------------------------------------------------------------------
    def _prompt(self, processor: Any, kind: str, count: int, prompt: str) -> str:
        content = [{"type": kind}] * count + [{"type": "text", "text": prompt}]
        return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)

    def _tokenize(self, processor: Any, text: str, placeholder: str, counts: list[int]) -> dict:
        """Expand each placeholder into its token count, tokenize, add mm_token_type_ids."""
        pieces = text.split(placeholder)
        if len(pieces) - 1 != len(counts):
            raise ValueError(f"the prompt has {len(pieces) - 1} {placeholder!r} placeholders for {len(counts)} inputs")
        expanded = pieces[0] + "".join(placeholder * c + rest for c, rest in zip(counts, pieces[1:]))
        enc = processor.tokenizer(expanded, return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"]
        mm = mm_token_type_ids(ids, self.config.image_token_id, self.config.video_token_id)
        return {"input_ids": ids, "attention_mask": enc["attention_mask"], "mm_token_type_ids": mm}

    def build_frame_inputs(self, processor: Any, frames: list, *, prompt: str = "Describe the frames.") -> dict:
        """Inputs for ``frames`` (list of uint8 ``[h, w, 3]``) as separate images."""
        frames = _check_frames(frames)
        text = self._prompt(processor, "image", len(frames), prompt)
        if not isinstance(processor, ProcessorParts):
            out = dict(processor(text=[text], images=frames, return_tensors="pt"))
            if "mm_token_type_ids" not in out:
                out["mm_token_type_ids"] = mm_token_type_ids(out["input_ids"], self.config.image_token_id)
            return out
        vis, counts = self.expand_images(processor, frames)
        placeholder = getattr(processor, "image_token", None) or "<|image_pad|>"
        return {**self._tokenize(processor, text, placeholder, counts), **vis}

    def expand_images(self, processor: Any, images: list) -> tuple[dict, list[int]]:
        """``(vision inputs, tokens per image)`` for ``images`` of one sample, through the image
        processor: what a processor without its video part needs to expand the image token."""
        vis = dict(processor.image_processor(images=list(images), return_tensors="pt"))
        return vis, [int(g.prod()) // self.merge**2 for g in vis["image_grid_thw"]]

    def _video_patches(self, processor: Any, frames: list) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixel_values_videos, video_grid_thw [1, 3])`` of ``frames`` as one video, made by
        the image processor; see the module docstring for temporal groups."""
        frames = _check_frames(frames)
        tps = self.temporal_patch_size
        video_geometry_frames(len(frames), tps)
        if len({fr.shape for fr in frames}) != 1:
            raise ValueError(f"video frames must share one size, got {sorted({fr.shape for fr in frames})}")
        vis = processor.image_processor(images=frames, return_tensors="pt")
        grid = vis["image_grid_thw"][0]
        n_patch = int(grid.prod())
        c = 3
        p = processor.image_processor.patch_size
        patches = vis["pixel_values"].reshape(len(frames), n_patch, c, tps, p, p)  # [f, N, C, T, p, p]
        # each frame's temporal slices are copies of the frame; a group takes slice t from frame g*tps + t
        groups = patches.reshape(len(frames) // tps, tps, n_patch, c, tps, p, p)
        picked = torch.stack([groups[:, t, :, :, t] for t in range(tps)], dim=3)  # [g, N, C, T, p, p]
        pixel_values_videos = picked.reshape(-1, c * tps * p * p)
        return pixel_values_videos, torch.tensor([[len(frames) // tps, int(grid[1]), int(grid[2])]])

    def build_video_inputs(self, processor: Any, frames: list, *, prompt: str = "Describe the video.") -> dict:
        """Inputs for ``frames`` as one video; see the module docstring for temporal groups."""
        pixel_values_videos, video_grid_thw = self._video_patches(processor, frames)
        text = self._prompt(processor, "video", 1, prompt)
        placeholder = getattr(processor, "video_token", None) or "<|video_pad|>"
        count = int(video_grid_thw.prod()) // self.merge**2
        return {
            **self._tokenize(processor, text, placeholder, [count]),
            "pixel_values_videos": pixel_values_videos,
            "video_grid_thw": video_grid_thw,
        }

    def video_frame_layout(self, processor: Any, orig_hw: tuple[int, int]) -> FrameLayout:
        """Video frames are patchified by the image processor (see :meth:`build_video_inputs`), so
        each has the image layout."""
        return self.frame_layout(processor, orig_hw)

    def video_geometry_rows(self, num_frames: int, anchor: int) -> list[int]:
        """The first frame row of each temporal group; ``anchor`` must be one of them."""
        tps = self.temporal_patch_size
        rows = video_geometry_frames(num_frames, tps)
        check_video_pairs(anchor, [r for r in rows if r // tps != anchor // tps], tps)
        return rows

    # -- token layout ------------------------------------------------------------------------
    image_input_key, video_input_key = "image_grid_thw", "video_grid_thw"

    def visual_token_mask(self, inputs: dict) -> torch.Tensor:
        return self._media_token_mask(inputs)

    def _per_frame_grids(self, inputs: dict) -> list[tuple[int, int, int]]:
        """``(count, gh, gw)`` for every frame / temporal group of the batch, in order."""
        if self._is_video(inputs):
            out = []
            for t, h, w in inputs["video_grid_thw"].tolist():
                out += [(h * w // self.merge**2, h // self.merge, w // self.merge)] * t
            return out
        return [(t * h * w // self.merge**2, h // self.merge, w // self.merge) for t, h, w in inputs["image_grid_thw"].tolist()]

    def _rows(self, inputs: dict) -> list[list[tuple[int, int, int]]]:
        per_frame = self._per_frame_grids(inputs)
        totals = self.visual_token_mask(inputs).sum(-1).tolist()
        rows, k = [], 0
        for r, total in enumerate(totals):
            row = []
            while total > 0:
                if k >= len(per_frame):
                    raise ValueError(f"row {r} has more visual tokens than the grids describe")
                row.append(per_frame[k])
                total -= per_frame[k][0]
                k += 1
            if total != 0:
                raise ValueError(f"row {r}: visual tokens do not split into whole frames of the given grids")
            rows.append(row)
        if k != len(per_frame):
            raise ValueError(f"the grids describe {len(per_frame)} frames but input_ids hold only {k}")
        return rows

    def frame_token_counts(self, inputs: dict) -> list[list[int]]:
        return [[c for c, _, _ in row] for row in self._rows(inputs)]

    def frame_grids(self, inputs: dict) -> list[list[tuple[int, int]]]:
        return [[(h, w) for _, h, w in row] for row in self._rows(inputs)]

    def pixel_budget(self, processor: Any) -> tuple[int, int]:
        """``(min_pixels, max_pixels)`` the image processor resizes to, as it reads them: an
        instance attribute ``min_pixels`` / ``max_pixels`` (older scripts set those) overrides
        ``size["shortest_edge"]`` / ``size["longest_edge"]``."""
        ip = processor.image_processor
        low, high = getattr(ip, "min_pixels", None), getattr(ip, "max_pixels", None)
        low = int(low) if low is not None else _size_entry(ip.size, "shortest_edge")
        high = int(high) if high is not None else _size_entry(ip.size, "longest_edge")
        return low, high

    def apply_pixel_budget(self, processor: Any, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Write the budget into ``size`` (``shortest_edge`` = min, ``longest_edge`` = max pixels),
        the form transformers 5.x honours, and clear attribute overrides, on the image processor
        and on the video processor when the processor has one. When one bound is given, the
        checkpoint's other bound moves with it if it would contradict it (a raised minimum above
        the checkpoint's maximum raises the maximum to it)."""
        for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int (pixels per frame); got {value!r}")
        if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
            raise ValueError(f"min_pixels ({min_pixels}) must be <= max_pixels ({max_pixels})")
        low, high = self.pixel_budget(processor)
        # one bound given: the other follows it where the checkpoint's value would contradict it
        low = min(low, max_pixels) if min_pixels is None and max_pixels is not None else (min_pixels or low)
        high = max(high, min_pixels) if max_pixels is None and min_pixels is not None else (max_pixels or high)
        targets = [processor.image_processor, getattr(processor, "video_processor", None)]
        for proc in (t for t in targets if t is not None):
            proc.size = {"shortest_edge": low, "longest_edge": high}
            for attr in ("min_pixels", "max_pixels"):
                if getattr(proc, attr, None) is not None:
                    setattr(proc, attr, None)

    def frame_layout(self, processor: Any, orig_hw: tuple[int, int]) -> FrameLayout:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        ip = processor.image_processor
        cell = int(ip.patch_size) * int(ip.merge_size)
        h, w = int(orig_hw[0]), int(orig_hw[1])
        low, high = self.pixel_budget(processor)
        rh, rw = smart_resize(h, w, factor=cell, min_pixels=low, max_pixels=high)
        return FrameLayout((h, w), (rh, rw), (0, 0), cell, (rh // cell, rw // cell))
