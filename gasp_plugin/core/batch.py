"""Geometry examples and their collator: a clip + its tracks -> model inputs + :class:`GaspTargets`.

Shape notation: ``f`` frames, ``t`` target frames, ``p`` points, ``n`` tokens per frame,
``h, w`` frame size. One example is a batch of one; :class:`GeometryCollator` pads and stacks.

Per (anchor point, target frame) the targets hold the token of the target frame whose cell
contains the track's pixel, a visibility mask (the track is visible *and* inside the token grid,
e.g. not cropped away by LLaVA's centre crop), the point's depth in the target frame, and per
target-frame token the median of the valid depth pixels in its cell (0 when it has none). The
anchor point's own token comes from ``tracks.query_xy`` in the anchor frame.

With video input (``as_video=True``, families whose adapter has it; ``None``, the default, takes
the adapter's ``geometry_as_video``: LLaVA-NeXT-Video's clips are videos, as in the paper), the adapter's
``video_geometry_rows`` names the frame whose geometry each token frame of the video carries. For
Qwen-VL, each temporal group of ``temporal_patch_size`` frames is one "frame" of the targets, with
the geometry of its first frame (see :mod:`gasp_plugin.models.qwen2_vl`); the anchor must be a
group's first frame.

    example = build_geometry_example(clip, tracks, processor, adapter)
    batch = GeometryCollator(processor)([example, ...])
    out = model(**{k: v for k, v in batch.items() if k != "gasp_targets"})
    loss = handle.compute_loss(batch["gasp_targets"])
"""

from __future__ import annotations

import math
from dataclasses import fields
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from gasp_plugin.constants import IGNORE_INDEX, TARGETS_KEY
from gasp_plugin.core.targets import GaspTargets

__all__ = ["build_geometry_example", "one_point_per_token", "GeometryCollator", "token_depths", "TARGETS_KEY"]

# TARGETS_KEY (key of the GaspTargets in an example / batch dict) is re-exported from gasp_plugin.constants
_SEQ_KEYS = {"input_ids": None, "attention_mask": 0, "mm_token_type_ids": 0, "labels": IGNORE_INDEX}


#: default ``max_samples`` of :func:`token_depths`: a cell wider or higher than this many pixels is
#: read on a regular lattice of at most this many pixels per side (at most 256 samples; reading
#: every pixel costs several times more at 960x540 and moves the median by millimetres on real
#: depth, see tests/test_batch.py)
TOKEN_DEPTH_SAMPLES = 16


@lru_cache(maxsize=64)
def _cell_runs(layout, n: int, axis: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index [g, k], ok [g, k])``: every ``stride``-th pixel index along ``axis`` (0 = rows,
    1 = columns) of each token row / column's run of pixels; ``ok`` marks the real ones. Cached
    per layout (the frames of a clip share one); the arrays are read-only.

    A layout maps a pixel's row and column to token row and column separately and monotonically
    (resize, crop, non-decreasing resampling tables), so each token row / column covers one
    contiguous run of pixel rows / columns (checked here)."""
    g = layout.grid_hw[axis]
    inner = layout.token_centres()[0]  # a pixel inside the grid fixes the other coordinate
    coords = torch.arange(n, dtype=torch.float64)
    other = torch.full_like(coords, float(inner[axis]))
    tok = layout.pixels_to_tokens(torch.stack([coords, other] if axis == 1 else [other, coords], -1)).numpy()
    if axis == 0:
        tok = np.where(tok >= 0, tok // layout.grid_hw[1], -1)
    inside = np.flatnonzero(tok >= 0)
    runs = tok[inside]
    if inside.size and ((np.diff(runs) < 0).any() or (np.diff(inside) > 1).any()):
        raise ValueError(f"frame layout {layout} does not map pixel {'rows' if axis == 0 else 'columns'} to "
                         "token cells in contiguous runs")
    counts = np.bincount(runs, minlength=g)
    first = int(inside[0]) if inside.size else 0
    starts = first + np.cumsum(counts) - counts
    offsets = np.arange(0, max(int(counts.max(initial=0)), 1), stride)
    index, ok = np.minimum(starts[:, None] + offsets, n - 1), offsets < counts[:, None]
    index.flags.writeable = ok.flags.writeable = False
    return index, ok


def token_depths(depth: np.ndarray | torch.Tensor, layout, max_samples: int | None = TOKEN_DEPTH_SAMPLES) -> torch.Tensor:
    """``[n]`` median of the valid (finite, > 0) depth pixels in each token's cell; 0 if none.

    ``depth`` is ``[h, w]`` at the frame's original resolution, ``layout`` its
    :class:`~gasp_plugin.models.registry.FrameLayout`. Even counts take the lower median
    (as ``torch.median``). A cell more than ``max_samples`` pixels wide or high is read every
    ``ceil(side / max_samples)``-th pixel along that side (a regular lattice from the cell's first
    pixel); a cell whose lattice holds no valid pixel is read in full. ``max_samples=None`` reads
    every pixel. Vectorised: one gather of the cells' pixels and one selection for all cells.
    """
    d = np.asarray(depth.cpu() if isinstance(depth, torch.Tensor) else depth, dtype=np.float32)
    h, w = d.shape
    if (h, w) != tuple(layout.orig_hw):
        raise ValueError(f"depth map is {h}x{w} but the frame is {layout.orig_hw[0]}x{layout.orig_hw[1]}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
    gh, gw = layout.grid_hw
    rows, cols = np.repeat(np.arange(gh), gw), np.tile(np.arange(gw), gh)  # of each token, raster order
    strides = [1 if max_samples is None else max(1, math.ceil(_cell_side(layout, a) / max_samples)) for a in (0, 1)]
    median, count = _cell_medians(d, _cell_runs(layout, h, 0, strides[0]), _cell_runs(layout, w, 1, strides[1]),
                                  rows, cols)
    missed = np.flatnonzero(count == 0)
    if strides != [1, 1] and missed.size:  # a lattice can miss the few valid pixels of a cell
        median[missed], count[missed] = _cell_medians(d, _cell_runs(layout, h, 0, 1), _cell_runs(layout, w, 1, 1),
                                                      rows[missed], cols[missed])
    return torch.from_numpy(np.where(count > 0, median, 0.0).astype(np.float32))


def _cell_medians(d: np.ndarray, row_runs, col_runs, rows: np.ndarray, cols: np.ndarray):
    """``(median [m], count [m])``: lower median and number of the valid pixels that ``row_runs``
    and ``col_runs`` (:func:`_cell_runs`) read in cells ``(rows[i], cols[i])``."""
    (iy, oy), (ix, ox) = row_runs, col_runs
    cells = d[iy[rows][:, :, None], ix[cols][:, None, :]]  # [m, ky, kx]
    ok = oy[rows][:, :, None] & ox[cols][:, None, :] & np.isfinite(cells) & (cells > 0)
    cells, ok = cells.reshape(len(rows), -1), ok.reshape(len(rows), -1)
    k = cells.shape[1]
    count = ok.sum(1)
    # the lower median of the c valid values is element (c - 1) // 2 of them sorted; with
    # (k - 1) // 2 - (c - 1) // 2 invalid entries set to -inf and the rest to +inf it is element
    # (k - 1) // 2 of the whole row: one selection with the same k for every cell
    low = (k - 1) // 2 - (count - 1) // 2
    fill = np.where(np.cumsum(~ok, axis=1) <= low[:, None], -np.inf, np.inf).astype(np.float32)
    median = np.partition(np.where(ok, cells, fill), (k - 1) // 2, axis=1)[:, (k - 1) // 2]
    return median, count


def _cell_side(layout, axis: int) -> float:
    """The widest token cell along ``axis`` in original-frame pixels."""
    xs, ys = layout.cell_boundaries()
    edges = ys if axis == 0 else xs
    return float(np.diff(edges).max(initial=0.0))


def one_point_per_token(query_xy: torch.Tensor, tokens: torch.Tensor, layout) -> torch.Tensor:
    """``[k]`` indices of the points to keep: per anchor token, the one query point nearest the
    token cell's centre (ties: the earlier point); points outside the grid (token -1) all stay.

    Several query grids (the paper's 8 and 24) put up to a few points in one token. They would
    share one anchor embedding while their tracks land in different target cells, asking the same
    embedding to match several tokens at once; weighting them would only repeat that conflict.
    So each token keeps the point that best stands for it, and the supervision is one anchor per
    token, as the model can express it.

    Args:
        query_xy: ``[p, 2]`` anchor pixels. tokens: ``[p]`` their tokens (-1 outside).
        layout: the anchor frame's :class:`gasp_plugin.models.registry.FrameLayout`.
    """
    p = tokens.numel()
    inside = tokens >= 0
    if p == 0 or not bool(inside.any()):
        return torch.arange(p)
    centres = layout.token_centres()[tokens.clamp(min=0)]  # [p, 2]
    dist = (query_xy.double() - centres).pow(2).sum(-1)
    dist = torch.where(inside, dist, torch.full_like(dist, float("inf")))
    # sort by (token, distance, index): the first point of each token's run is kept
    order = torch.argsort(dist, stable=True)
    order = order[torch.argsort(tokens[order], stable=True)]
    sorted_tok = tokens[order]
    first = torch.ones(p, dtype=torch.bool)
    first[1:] = sorted_tok[1:] != sorted_tok[:-1]
    keep = order[first | (sorted_tok < 0)]
    return torch.sort(keep).values


def _check_inputs(clip, tracks) -> None:
    f = len(clip.images)
    if tracks.num_frames != f:
        raise ValueError(
            f"clip {clip.scene!r} has {f} frames but its tracks cover {tracks.num_frames}; "
            "compute the tracks on the same clip"
        )
    if tracks.num_points == 0:
        raise ValueError(f"clip {clip.scene!r}: tracks hold no points (no anchor pixel had valid depth?)")
    if tracks.anchor is None or not 0 <= tracks.anchor < f:
        raise ValueError(f"tracks.anchor={tracks.anchor} is not a frame row of a {f}-frame clip")
    if len(clip.depth) != f:
        raise ValueError(f"clip {clip.scene!r} has {f} images but {len(clip.depth)} depth maps")


def build_geometry_example(
    clip, tracks, processor: Any, adapter, *, prompt: str = "Describe the frames.", as_video: bool | None = None
) -> dict:
    """Model inputs (batch of one) plus ``gasp_targets`` for one clip; see the module docstring."""
    _check_inputs(clip, tracks)
    frames = [np.asarray(im) for im in clip.images]
    as_video = adapter.geometry_as_video if as_video is None else as_video
    layout_of = adapter.video_frame_layout if as_video else adapter.frame_layout
    if as_video:
        rows = adapter.video_geometry_rows(len(frames), tracks.anchor)
        inputs = adapter.build_video_inputs(processor, frames, prompt=prompt)
    else:
        rows = list(range(len(frames)))
        inputs = adapter.build_frame_inputs(processor, frames, prompt=prompt)
    positions = adapter.frame_token_positions(inputs)  # [1, f', n]
    layouts = [layout_of(processor, frames[r].shape[:2]) for r in rows]
    adapter.check_layouts(inputs, layouts)  # targets index the grids the model will really see
    anchor_slot = rows.index(tracks.anchor)
    anchor_tokens = layouts[anchor_slot].pixels_to_tokens(tracks.query_xy.float())  # [p]
    keep = one_point_per_token(tracks.query_xy, anchor_tokens, layouts[anchor_slot])
    tracks, anchor_tokens = tracks.select_points(keep), anchor_tokens[keep]
    slots = [i for i in range(len(rows)) if i != anchor_slot]
    pos = torch.stack([layouts[i].pixels_to_tokens(tracks.xy[rows[i]].float()) for i in slots])  # [t, p]
    visible = torch.stack([tracks.visible[rows[i]].bool() for i in slots]) & (pos >= 0)
    depth = torch.stack([tracks.depth[rows[i]].float() for i in slots])
    depth = torch.where(visible & torch.isfinite(depth) & (depth > 0), depth, torch.zeros_like(depth))
    n = positions.shape[-1]
    tok_depth = torch.zeros(len(slots), n)
    for j, i in enumerate(slots):
        d = token_depths(clip.depth[rows[i]], layouts[i])
        tok_depth[j, : d.numel()] = d
    targets = GaspTargets(
        token_positions=positions,
        anchor_frame=torch.tensor([anchor_slot]),
        anchor_tokens=anchor_tokens[None],
        target_frames=torch.tensor([slots]),
        pos_tokens=pos[None],
        visible=visible[None],
        point_depth=depth[None],
        token_depth=tok_depth[None],
    )
    return {**inputs, TARGETS_KEY: targets}


def _pad_to(x: torch.Tensor, shape: tuple[int, ...], value) -> torch.Tensor:
    out = torch.full(shape, value, dtype=x.dtype)
    out[tuple(slice(0, s) for s in x.shape)] = x
    return out


def _stack_targets(items: list[GaspTargets]) -> GaspTargets:
    pad_values = {"visible": False, "point_depth": 0.0, "token_depth": 0.0}
    out = {}
    for fld in fields(GaspTargets):
        ts = [getattr(it, fld.name)[0] for it in items]
        shape = tuple(max(t.shape[d] for t in ts) for d in range(ts[0].dim()))
        value = pad_values.get(fld.name, -1)
        out[fld.name] = torch.stack([_pad_to(t, shape, value) for t in ts])
    return GaspTargets(**out)


class GeometryCollator:
    """Pads sequences (right side) and stacks vision tensors and targets of geometry examples.

    Sequence keys (``input_ids`` with the tokenizer's pad id, ``attention_mask`` and
    ``mm_token_type_ids`` with 0, ``labels`` with ``IGNORE_INDEX``) are padded; other tensors (pixel values,
    grids) are concatenated along dim 0, as the models expect; ``gasp_targets`` are padded with
    -1 / False / 0.
    """

    def __init__(self, processor: Any):
        pad = getattr(processor.tokenizer, "pad_token_id", None)
        if pad is None:
            raise ValueError("the tokenizer has no pad_token_id; set one before collating geometry examples")
        self.pad_id = int(pad)

    def __call__(self, examples: list[dict]) -> dict:
        if not examples:
            raise ValueError("no examples to collate")
        keys = set(examples[0])
        for i, ex in enumerate(examples):
            if set(ex) != keys:
                raise ValueError(f"example {i} has keys {sorted(ex)} but example 0 has {sorted(keys)}")
        batch = {}
        length = max(int(ex["input_ids"].shape[-1]) for ex in examples)
        for key in sorted(keys - {TARGETS_KEY}):
            values = [ex[key] for ex in examples]
            if key in _SEQ_KEYS:
                fill = self.pad_id if _SEQ_KEYS[key] is None else _SEQ_KEYS[key]
                batch[key] = torch.cat([_pad_to(v, (v.shape[0], length), fill) for v in values])
            elif isinstance(values[0], torch.Tensor):
                batch[key] = torch.cat(values)
            else:
                batch[key] = values
        batch[TARGETS_KEY] = _stack_targets([ex[TARGETS_KEY] for ex in examples])
        return batch
