"""Model-family adapters, keyed by ``config.model_type``.

An adapter knows where a VLM keeps what GASP needs: its LLM decoder layers (found by module-path
pattern, so PEFT ``base_model.model.`` and DeepSpeed ``module.`` prefixes do not matter), each
layer's q/k projections, where each frame's visual tokens sit in the sequence, each frame's token
grid, and how a pixel of the *original* frame maps to a token through the processor's resize.
Token ids come from the model config; patch, merge and resize sizes from the processor.

Shape notation: ``b`` batch rows, ``f`` frames per row, ``n`` visual tokens per frame,
``...`` any leading dims. Pixel convention (as :mod:`gasp_plugin.geometry`): pixel centres at
integer coordinates, pixel ``(u, v)`` covers ``[u - 0.5, u + 0.5)``.

    from gasp_plugin.models.registry import get_adapter
    adapter = get_adapter(model)
    inputs = adapter.build_frame_inputs(processor, frames)      # frames: list of uint8 [h, w, 3]
    pos = adapter.frame_token_positions(inputs)                 # [b, f, n], -1 = padding
    layout = adapter.frame_layout(processor, frames[0].shape[:2])
    tok = layout.pixels_to_tokens(xy)                           # raster index in the frame, -1 = outside
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

__all__ = [
    "FrameLayout",
    "VLMAdapter",
    "register_adapter",
    "get_adapter",
    "supported_model_types",
    "check_checkpoint",
    "find_module",
    "resampled_token_of_patch",
]


@dataclass(frozen=True)
class FrameLayout:
    """How one original frame reaches the vision tower, and its token grid.

    Attributes:
        orig_hw: ``(h, w)`` of the original frame.
        resized_hw: ``(h, w)`` after the processor's resize (before any crop).
        crop_yx: top-left ``(y, x)`` of the crop inside the resized image (0, 0 without crop).
        cell: side of one token's cell in resized pixels (Qwen: patch * merge; LLaVA: patch).
        grid_hw: ``(gh, gw)`` tokens of the frame.
        pad_yx: top-left ``(y, x)`` of the original frame inside the canvas the processor pads it
            onto before resizing (LLaVA's pad-to-square); ``(0, 0)`` without padding.
        padded_hw: ``(h, w)`` of that canvas (the image the resize reads); ``None`` = ``orig_hw``.
        token_of_patch: ``(rows, cols)``, when the vision path resamples its patch grid onto the
            token grid (LLaVA-OneVision video: bilinear 27 -> 14 patches per side): the token row
            of each patch row and the token column of each patch column (-1 = read by no token);
            ``cell`` is then the patch side. ``None`` = each token is one ``cell`` of the image.
            The tables must be non-decreasing and reach every token, so each token covers a
            contiguous run of patches (:func:`resampled_token_of_patch` builds them).
    """

    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    crop_yx: tuple[int, int]
    cell: int
    grid_hw: tuple[int, int]
    pad_yx: tuple[int, int] = (0, 0)
    padded_hw: tuple[int, int] | None = None
    token_of_patch: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def __post_init__(self):
        if self.token_of_patch is None:
            return
        for axis, table in enumerate(self.token_of_patch):
            used = [t for t in table if t >= 0]
            if used != sorted(used) or sorted(set(used)) != list(range(self.grid_hw[axis])):
                raise ValueError(f"token_of_patch[{axis}] = {list(table)} must be non-decreasing and reach each "
                                 f"of the {self.grid_hw[axis]} tokens along that axis")
            first, last = table.index(used[0]), len(table) - 1 - table[::-1].index(used[-1])
            if any(t < 0 for t in table[first:last + 1]):
                raise ValueError(f"token_of_patch[{axis}] = {list(table)}: a patch inside the grid is read by no token")

    @property
    def num_tokens(self) -> int:
        """``gh * gw``, the frame's token count."""
        return self.grid_hw[0] * self.grid_hw[1]

    def _spans(self, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """``(lo [g], hi [g])`` float64: each token's extent along ``axis`` in cropped resized pixels."""
        g = self.grid_hw[axis]
        if self.token_of_patch is None:
            j = np.arange(g, dtype=np.float64)
            return j * self.cell, (j + 1) * self.cell
        table = np.asarray(self.token_of_patch[axis])
        lo = np.array([np.flatnonzero(table == j)[0] for j in range(g)], dtype=np.float64)
        hi = np.array([np.flatnonzero(table == j)[-1] + 1 for j in range(g)], dtype=np.float64)
        return lo * self.cell, hi * self.cell

    def _token_index(self, u: torch.Tensor, axis: int) -> torch.Tensor:
        """Token row (axis 0) or column (axis 1) of cropped resized coordinates ``u``; may fall
        outside ``[0, g)`` (callers test it)."""
        idx = torch.floor(u / self.cell).long()
        if self.token_of_patch is None:
            return idx
        table = torch.tensor(self.token_of_patch[axis], dtype=torch.long)
        inside = (idx >= 0) & (idx < table.numel())
        return torch.where(inside, table[idx.clamp(0, table.numel() - 1)], torch.full_like(idx, -1))

    def _scale(self, axis: int) -> float:
        """Resized pixels per canvas (padded original) pixel along ``axis``."""
        canvas = self.padded_hw or self.orig_hw
        return self.resized_hw[axis] / canvas[axis]

    def _to_resized(self, p, axis: int):
        """Original pixel coordinate ``p`` (any shape) -> coordinate in the cropped resized image
        along ``axis`` (0 = y, 1 = x): shifted onto the padded canvas, scaled, cropped; the pixel's
        centre maps to the centre of its footprint."""
        return (p + self.pad_yx[axis] + 0.5) * self._scale(axis) - self.crop_yx[axis]

    def _to_original(self, u, axis: int):
        """Inverse of :meth:`_to_resized`: cropped resized coordinate ``u`` -> original pixel."""
        return (u + self.crop_yx[axis]) / self._scale(axis) - 0.5 - self.pad_yx[axis]

    def pixels_to_tokens(self, xy: torch.Tensor) -> torch.Tensor:
        """Raster token index (``row * gw + col``) of original-frame pixels; -1 outside the grid.

        Args:
            xy: ``[..., 2]`` float pixel coordinates ``(x, y)`` in the original frame.

        Returns:
            ``[...]`` long.
        """
        if xy.shape[-1:] != (2,):
            raise ValueError(f"xy must have shape [..., 2], got {tuple(xy.shape)}")
        gh, gw = self.grid_hw
        xy = xy.to(torch.float64)
        col = self._token_index(self._to_resized(xy[..., 0], 1), 1)
        row = self._token_index(self._to_resized(xy[..., 1], 0), 0)
        inside = (col >= 0) & (col < gw) & (row >= 0) & (row < gh) & torch.isfinite(xy).all(-1)
        return torch.where(inside, row * gw + col, torch.full_like(col, -1))

    def token_centres(self) -> torch.Tensor:
        """``[gh * gw, 2]`` float64 original-frame pixel ``(x, y)`` of each token cell's centre, in
        raster order: :meth:`pixels_to_tokens` maps row ``i`` back to token ``i``."""
        (ylo, yhi), (xlo, xhi) = self._spans(0), self._spans(1)
        y = torch.from_numpy(self._to_original((ylo + yhi) / 2, 0))
        x = torch.from_numpy(self._to_original((xlo + xhi) / 2, 1))
        rows, cols = torch.meshgrid(y, x, indexing="ij")
        return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=-1)

    def cell_boundaries(self) -> tuple[np.ndarray, np.ndarray]:
        """Token-cell boundaries ``(xs [gw + 1], ys [gh + 1])`` float64 in original-frame pixel
        coordinates (pixel centres at integers, so the boundary between pixels 0 and 1 is 0.5);
        cell ``(row, col)`` spans ``xs[col] .. xs[col + 1]`` by ``ys[row] .. ys[row + 1]``."""
        (ylo, yhi), (xlo, xhi) = self._spans(0), self._spans(1)
        return (self._to_original(np.append(xlo, xhi[-1]), 1), self._to_original(np.append(ylo, yhi[-1]), 0))


def resampled_token_of_patch(n_patches: int, n_tokens: int, mode: str = "bilinear") -> tuple[int, ...]:
    """Token of each of ``n_patches`` patches along one axis when the model resamples the patch
    grid to ``n_tokens`` per side with ``torch.nn.functional.interpolate(mode=mode)``
    (``align_corners=False``, no antialias, as LLaVA-OneVision's video pooling): the token that
    patch weighs most in (the earlier token on a tie); -1 for a patch no token reads. The weights
    come from the same interpolate call on one-hot rows, so the table follows torch's sampling.
    Bilinear without antialias samples: a patch between two sampling points weighs little in
    either token (the probes skip such patches)."""
    if mode not in ("bilinear", "linear"):
        raise ValueError(f"mode must be 'bilinear' (or 'linear'); got {mode!r}")
    one_hot = torch.eye(n_patches, dtype=torch.float64)[None]  # [1, patches (channels), patches (length)]
    weights = torch.nn.functional.interpolate(one_hot, size=n_tokens, mode="linear", align_corners=False)[0]
    best = weights.argmax(-1)  # [patches]: first maximum
    best[weights.max(-1).values <= 0] = -1
    return tuple(int(t) for t in best)


def _split_positions(is_visual: torch.Tensor, counts_per_row: list[list[int]]) -> torch.Tensor:
    """Positions of visual tokens per row, cut into frames of the given sizes.

    Args:
        is_visual: ``[b, L]`` bool.
        counts_per_row: for each row, the token count of each of its frames.

    Returns:
        ``[b, f, n]`` long, -1 where a row has fewer frames or a frame fewer tokens.
    """
    b = is_visual.shape[0]
    f = max((len(c) for c in counts_per_row), default=0)
    n = max((max(c) for c in counts_per_row if c), default=0)
    out = torch.full((b, f, n), -1, dtype=torch.long)
    for r in range(b):
        pos = torch.nonzero(is_visual[r], as_tuple=False).flatten().cpu()
        if pos.numel() != sum(counts_per_row[r]):
            raise ValueError(
                f"row {r} has {pos.numel()} visual tokens but its frames need {sum(counts_per_row[r])}; "
                "input_ids and the image grids disagree (were inputs truncated?)"
            )
        for i, chunk in enumerate(torch.split(pos, counts_per_row[r])):
            out[r, i, : chunk.numel()] = chunk
    return out


class VLMAdapter(ABC):
    """What GASP needs to know about one VLM family. Built from the model's config."""

    #: regex on a module's full name matching a decoder layer; group 1 = layer index
    layer_pattern: str = r"(?:^|\.)language_model\.layers\.(\d+)$"
    #: regex on a parameter's full name matching the vision encoder and its projector into the LLM
    vision_pattern: str = r"(?:^|\.)(?:visual|vision_tower|multi_modal_projector)\."

    def __init__(self, config: Any):
        self.config = config

    # -- modules -----------------------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """``[(name, layer)]`` of the LLM decoder layers in order, under any wrapper prefix."""
        found: dict[int, tuple[str, nn.Module]] = {}
        pattern = re.compile(self.layer_pattern)
        for name, module in model.named_modules():
            m = pattern.search(name)
            if m is None or ".modules_to_save." in name:
                continue
            idx = int(m.group(1))
            if idx in found:
                raise ValueError(f"two modules match decoder layer {idx}: {found[idx][0]!r} and {name!r}")
            found[idx] = (name, module)
        if not found:
            raise ValueError(
                f"no module of this {type(model).__name__} matches the decoder-layer pattern "
                f"{self.layer_pattern!r} of adapter {type(self).__name__}"
            )
        if sorted(found) != list(range(len(found))):
            raise ValueError(f"decoder layer indices are not contiguous: {sorted(found)}")
        return [found[i] for i in range(len(found))]

    def vision_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """``[(name, parameter)]`` of the vision encoder and projector, under any wrapper prefix."""
        pattern = re.compile(self.vision_pattern)
        found = [(n, p) for n, p in model.named_parameters() if pattern.search(n)]
        if not found:
            raise ValueError(
                f"no parameter of this {type(model).__name__} matches the vision pattern "
                f"{self.vision_pattern!r} of adapter {type(self).__name__}"
            )
        return found

    def forward_bounds(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """``(embed_tokens, final_norm)`` of the LLM: run once per forward, outside checkpointing."""
        return (
            find_module(model, r"(?:^|\.)language_model\.embed_tokens$")[1],
            find_module(model, r"(?:^|\.)language_model\.norm$")[1],
        )

    def visual_token_ids(self) -> list[int]:
        """Token ids that mark visual tokens in ``input_ids`` (from the model config)."""
        ids = [getattr(self.config, "image_token_id", None), getattr(self.config, "video_token_id", None)]
        return [int(i) for i in ids if i is not None]

    def attention_input_norm(self, layer: nn.Module) -> nn.Module:
        """The norm a decoder layer applies to its input before the attention projections."""
        norm = getattr(layer, "input_layernorm", None)
        if norm is None:
            raise ValueError(f"{type(layer).__name__} has no input_layernorm")
        return norm

    def attention_projections(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """``(q_proj, k_proj)`` of a decoder layer (LoRA wrappers included when present)."""
        attn = getattr(layer, "self_attn", None)
        if attn is None or not hasattr(attn, "q_proj") or not hasattr(attn, "k_proj"):
            raise ValueError(f"{type(layer).__name__} has no self_attn.q_proj / k_proj")
        return attn.q_proj, attn.k_proj

    # -- inputs and token layout -------------------------------------------------------------
    @abstractmethod
    def build_frame_inputs(self, processor: Any, frames: list, *, prompt: str = "Describe the frames.") -> dict:
        """Model inputs (batch of one) for frames given as separate images, via the processor."""

    @abstractmethod
    def frame_token_counts(self, inputs: dict) -> list[list[int]]:
        """For each batch row, the number of visual tokens of each of its frames."""

    @abstractmethod
    def visual_token_mask(self, inputs: dict) -> torch.Tensor:
        """``[b, L]`` bool, True at visual tokens."""

    #: the input keys that mark inputs holding images / a video (families with video input)
    image_input_key: str = "pixel_values"
    video_input_key: str = "pixel_values_videos"

    def _is_video(self, inputs: dict) -> bool:
        """Whether ``inputs`` hold a video (``ValueError`` for both kinds or neither)."""
        has_img = inputs.get(self.image_input_key) is not None
        has_vid = inputs.get(self.video_input_key) is not None
        if has_img and has_vid:
            raise ValueError("inputs hold both images and a video; GASP frames must be one or the other")
        if not (has_img or has_vid):
            raise ValueError(f"inputs hold no {self.image_input_key} or {self.video_input_key}: no visual tokens "
                             "to supervise")
        return has_vid

    def _media_token_mask(self, inputs: dict) -> torch.Tensor:
        """``[b, L]`` True at the video tokens of a video's inputs, else at the image tokens."""
        tok = self.config.video_token_id if self._is_video(inputs) else self.config.image_token_id
        return inputs["input_ids"] == tok

    @abstractmethod
    def frame_grids(self, inputs: dict) -> list[list[tuple[int, int]]]:
        """For each batch row, the ``(gh, gw)`` token grid of each of its frames."""

    @abstractmethod
    def frame_layout(self, processor: Any, orig_hw: tuple[int, int]) -> FrameLayout:
        """How a frame of size ``orig_hw`` is resized and cut into tokens by ``processor``."""

    def frame_token_positions(self, inputs: dict) -> torch.Tensor:
        """``[b, f, n]`` sequence positions of each frame's visual tokens, raster order, -1 = pad."""
        return _split_positions(self.visual_token_mask(inputs), self.frame_token_counts(inputs))

    # -- frames as one video (families without video input keep these defaults) --------------
    #: whether geometry clips reach the model as one video by default (``build_geometry_example``
    #: with ``as_video=None``): the families whose multi-frame form is their video input
    geometry_as_video: bool = False

    def video_frame_layout(self, processor: Any, orig_hw: tuple[int, int]) -> FrameLayout:
        """How one frame of size ``orig_hw`` reaches its token grid when the frames form a video
        (:meth:`build_video_inputs`); here, always a ``ValueError``: no video input."""
        raise ValueError(self._no_video())

    def video_geometry_rows(self, num_frames: int, anchor: int) -> list[int]:
        """Frame rows whose geometry the video's token frames carry, one per token frame in order.

        Raises ``ValueError`` when ``num_frames`` cannot form the video or the ``anchor`` row
        cannot be supervised; here, always: this family has no video input.
        """
        raise ValueError(self._no_video())

    def build_video_inputs(self, processor: Any, frames: list, *, prompt: str = "Describe the video.") -> dict:
        """Model inputs (batch of one) for ``frames`` (list of uint8 ``[h, w, 3]``) as one video."""
        raise ValueError(self._no_video())

    def apply_pixel_budget(self, processor: Any, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
        """Set the processor's resize budget (pixels per frame) in the form it honours, so the
        processor's output and :meth:`frame_layout` follow the same values. Here: this family
        resizes to a fixed size, so a budget is a ``ValueError``."""
        if min_pixels is not None or max_pixels is not None:
            raise ValueError(f"{type(self).__name__} (model_type {getattr(self.config, 'model_type', '?')!r}) resizes "
                             "every frame to the processor's fixed size: min_pixels / max_pixels do not apply; "
                             "leave them unset (null)")

    def check_layouts(self, inputs: dict, layouts: list[FrameLayout]) -> None:
        """Raise ``ValueError`` naming the frame and both grids when the token grid a layout
        predicts differs from the one the processor produced (row 0 of ``inputs``)."""
        grids = self.frame_grids(inputs)[0]
        if len(grids) != len(layouts):
            raise ValueError(f"the processor produced {len(grids)} token frames for {len(layouts)} frame layouts")
        for i, (grid, layout) in enumerate(zip(grids, layouts)):
            if tuple(grid) != tuple(layout.grid_hw):
                raise ValueError(
                    f"frame {i} ({layout.orig_hw[1]}x{layout.orig_hw[0]} px): the processor made a "
                    f"{grid[0]}x{grid[1]} token grid but its layout predicts {layout.grid_hw[0]}x{layout.grid_hw[1]}; "
                    "was a pixel budget set on the processor other than through adapter.apply_pixel_budget?"
                )

    def _no_video(self) -> str:
        return (f"{type(self).__name__} (model_type {getattr(self.config, 'model_type', '?')!r}) has no video "
                "input; use as_video=False to give the frames as separate images")


_ADAPTERS: dict[str, type[VLMAdapter]] = {}


def register_adapter(*model_types: str) -> Callable[[type[VLMAdapter]], type[VLMAdapter]]:
    """Class decorator registering an adapter for ``config.model_type`` values (no duplicates)."""

    def deco(cls: type[VLMAdapter]) -> type[VLMAdapter]:
        for mt in model_types:
            if mt in _ADAPTERS:
                raise ValueError(f"an adapter for model_type {mt!r} is already registered: {_ADAPTERS[mt].__name__}")
            _ADAPTERS[mt] = cls
        return cls

    return deco


def _ensure_builtin() -> None:
    # the built-in families register on import of their modules
    from gasp_plugin.models import llava, llava_next_video, llava_onevision, qwen2_vl, qwen3_vl  # noqa: F401


def supported_model_types() -> list[str]:
    _ensure_builtin()
    return sorted(_ADAPTERS)


def check_checkpoint(path) -> str:
    """The ``model_type`` of the checkpoint folder ``path`` (its ``config.json``), read before any
    weights load; ``ValueError`` naming the file when GASP has no adapter for it."""
    import json
    from pathlib import Path

    config = Path(path) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in supported_model_types():
        raise ValueError(f"{config}: model_type {model_type!r} is not supported by GASP; supported: "
                         f"{supported_model_types()}")
    return model_type


def _find_config(model_or_config: Any) -> Any:
    seen = model_or_config
    for _ in range(4):  # unwrap DeepSpeed engine / PEFT model down to a module with a config
        cfg = getattr(seen, "config", None)
        if cfg is not None and hasattr(cfg, "model_type"):
            return cfg
        if hasattr(seen, "model_type"):
            return seen
        seen = getattr(seen, "module", None) or getattr(seen, "base_model", None)
        if seen is None:
            break
    raise ValueError(f"cannot find a transformers config with model_type on {type(model_or_config).__name__}")


def get_adapter(model_or_config: Any) -> VLMAdapter:
    """The adapter for a model (plain, PEFT or DeepSpeed-wrapped) or its config."""
    _ensure_builtin()
    config = _find_config(model_or_config)
    mt = config.model_type
    if mt not in _ADAPTERS:
        raise ValueError(f"model_type {mt!r} is not supported by GASP; supported: {sorted(_ADAPTERS)}")
    return _ADAPTERS[mt](config)


def find_module(model: nn.Module, pattern: str) -> tuple[str, nn.Module]:
    """The one module whose full name matches ``pattern`` (PEFT copies excluded)."""
    rx = re.compile(pattern)
    hits = [
        (name, m)
        for name, m in model.named_modules()
        if rx.search(name) and ".modules_to_save." not in name and ".original_module" not in name
    ]
    if len(hits) != 1:
        raise ValueError(f"expected one module matching {pattern!r}, found {[n for n, _ in hits]}")
    return hits[0]
