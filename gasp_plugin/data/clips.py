"""Clips: loading frames of a scene, and sampling training clips with their tracks.

:class:`ClipSampling` holds (and validates, once) how clips are drawn; :func:`check_geometry_ratio`
validates the share of geometry steps, wherever it is set (recipe, ``--gasp_ratio``, plan).
Sampling follows the paper: an anchor frame, then ``F - 1`` other frames drawn uniformly without
replacement from the valid frames within ``[anchor - window, anchor + window]``, ``F`` drawn
uniformly from ``num_frames``. Rows are in temporal order; ``clip.anchor`` is the anchor's row.
A clip whose anchor points are visible almost nowhere (mean visible fraction over the other frames
below ``min_visible``) is rejected and redrawn; rejections and skipped frames are counted in
``sampler.stats`` (the latest read errors in ``sampler.errors``); with DataLoader workers each
worker counts its own. Shape notation: ``f`` frames, ``h, w`` image size.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from gasp_plugin.data.scene import Clip, Scene

__all__ = ["load_clip", "ClipSampling", "ClipSampler", "ClipSamplingError", "check_geometry_ratio",
           "frames_within_budget", "cut_clip"]


class ClipSamplingError(ValueError):
    """No acceptable clip could be drawn within the allowed number of tries (a property of the
    scenes and the sampling settings: a user error, reported in one line by the commands)."""


def _invalid(name: str, allowed: str, value: Any, field: str | None = None) -> ValueError:
    """``ValueError("<name> must be <allowed>; got <value>")``; its ``field`` attribute names the
    setting, so a recipe error can name the key path (see :mod:`gasp_plugin.recipe.schema`)."""
    err = ValueError(f"{name} must be {allowed}; got {value!r}")
    err.field = field or name.rpartition(".")[2]
    return err


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_geometry_ratio(value: Any, name: str = "geometry_ratio") -> float:
    """``value`` as a float if it is a share of geometry steps in ``[0, 1]``, else a ValueError
    naming ``name`` (e.g. ``"--gasp_ratio"``), the allowed range and the value."""
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise _invalid(name, "a number in [0, 1]", value, field=name.lstrip("-"))
    return float(value)


@dataclass(frozen=True)
class ClipSampling:
    """How training clips are drawn; the defaults are the paper's.

    Attributes:
        min_frames, max_frames: the clip length ``F`` is drawn uniformly from
            ``[min_frames, max_frames]`` (paper: 8..24).
        window: the other frames come from ``[anchor - window, anchor + window]`` (paper: 48).
        grid: query points per side on the anchor frame: one grid, or several (the paper queries
            a coarse 8 and a fine 24); ``keep`` applies per grid. Stored as a tuple.
        keep: the better-tracked fraction of queries kept (paper: 0.5).
    """

    min_frames: int = 8
    max_frames: int = 24
    window: int = 48
    grid: int | tuple[int, ...] = 8
    keep: float = 0.5

    def __post_init__(self):
        if not _is_int(self.min_frames) or self.min_frames < 2:
            raise _invalid("ClipSampling.min_frames", "an int >= 2", self.min_frames)
        if not _is_int(self.max_frames) or self.max_frames < self.min_frames:
            raise _invalid("ClipSampling.max_frames", f"an int >= min_frames ({self.min_frames})", self.max_frames)
        if not _is_int(self.window) or self.window < 1:
            raise _invalid("ClipSampling.window", "an int >= 1", self.window)
        grids = (self.grid,) if _is_int(self.grid) else tuple(self.grid) if isinstance(self.grid, (list, tuple)) else ()
        if not grids or not all(_is_int(g) and g >= 1 for g in grids) or len(set(grids)) != len(grids):
            raise _invalid("ClipSampling.grid", "an int >= 1 or a list of distinct ints >= 1 (e.g. [8, 24])", self.grid)
        object.__setattr__(self, "grid", grids)
        if not _is_number(self.keep) or not 0.0 < self.keep <= 1.0:
            raise _invalid("ClipSampling.keep", "a number in (0, 1]", self.keep)

    @property
    def num_frames(self) -> tuple[int, int]:
        """``(min_frames, max_frames)``."""
        return self.min_frames, self.max_frames


#: tokens a geometry prompt holds besides its frames' visual tokens (chat template, prompt), and
#: per frame (vision start / end markers); an estimate: the batch builder's exact count decides
PROMPT_TOKENS, FRAME_MARKER_TOKENS = 64, 2


def frames_within_budget(tokens_per_frame: int, max_tokens: int) -> int:
    """How many frames of ``tokens_per_frame`` visual tokens a ``max_tokens`` sequence holds."""
    return max(0, (max_tokens - PROMPT_TOKENS) // (tokens_per_frame + FRAME_MARKER_TOKENS))


def cut_clip(clip: Clip, tracks, num_frames: int, seed: int) -> tuple[Clip, object]:
    """``(clip, tracks)`` cut to ``num_frames`` rows: the anchor and a seeded random choice of the
    others, in their original order (a pure function of ``seed``)."""
    rows = [r for r in range(len(clip.frame_ids)) if r != clip.anchor]
    rng = np.random.default_rng([seed, 0x70CE])
    keep = sorted([clip.anchor, *(int(r) for r in rng.choice(rows, size=num_frames - 1, replace=False))])
    cut = Clip(images=clip.images[keep], depth=clip.depth[keep], intrinsics=clip.intrinsics[keep],
               poses=clip.poses[keep], frame_ids=[clip.frame_ids[r] for r in keep], anchor=keep.index(clip.anchor),
               scene=clip.scene)
    return cut, tracks.select_frames(keep)


def load_clip(scene: Scene, frame_ids: list[int], anchor_row: int = 0) -> Clip:
    """Read frames ``frame_ids`` (in that order) of ``scene`` into a :class:`Clip`.

    Raises ``IndexError`` / ``ValueError`` naming the frame for out-of-range, skipped or unreadable
    frames, and ``ValueError`` when the frames do not share one image size.
    """
    ids = [int(scene.check_frame(i)) for i in frame_ids]
    if not ids:
        raise ValueError("load_clip: frame_ids is empty")
    if not 0 <= anchor_row < len(ids):
        raise ValueError(f"load_clip: anchor_row must be in [0, {len(ids)}), got {anchor_row}")
    images = scene.images(ids)
    depth = np.stack([scene.depth(i) for i in ids]).astype(np.float32, copy=False)
    if depth.shape[1:] != images.shape[1:3]:
        raise ValueError(f"scene {scene.name!r}: depth {depth.shape[1:]} and images {images.shape[1:3]} "
                         "differ in size; readers must resample depth to the image size")
    intrinsics = np.stack([scene.intrinsics(i) for i in ids])
    poses = np.stack([scene.pose(i) for i in ids])
    return Clip(images=images, depth=depth, intrinsics=intrinsics, poses=poses, frame_ids=ids,
                anchor=anchor_row, scene=scene.name)


@dataclass
class _Draw:
    scene: int
    frame_ids: list[int]
    anchor_row: int


class ClipSampler:
    """Deterministic sampler of ``(Clip, Tracks)`` training examples over several scenes.

    Args:
        scenes: the scenes to draw from (each scene equally likely).
        sampling: clip length, window, query grid and kept fraction (:class:`ClipSampling`).
        min_visible: reject clips whose mean visible fraction of anchor points over the other
            frames is below this, or that have no query with valid anchor depth.
        margin, depth_tolerance: visibility test, see :mod:`gasp_plugin.geometry.tracks`.
        max_tries: draws per ``sample`` call before raising :class:`ClipSamplingError`.
        seed: with ``index``, fixes everything ``sample(index)`` returns.
        epoch_size: ``len(sampler)``, so it can serve as a map-style dataset.
    """

    def __init__(self, scenes: list[Scene], sampling: ClipSampling = ClipSampling(), *,
                 min_visible: float = 0.05, margin: float = 4.0, depth_tolerance: float = 0.05,
                 max_tries: int = 20, seed: int = 0, epoch_size: int = 1000):
        scenes = list(scenes)
        if not scenes:
            raise ValueError("ClipSampler: scenes is empty")
        if not isinstance(sampling, ClipSampling):
            raise TypeError(f"ClipSampler: sampling must be a ClipSampling, got {type(sampling).__name__}")
        if not _is_number(min_visible) or not 0 <= min_visible <= 1:
            raise _invalid("ClipSampler.min_visible", "a number in [0, 1]", min_visible)
        for name, value in (("max_tries", max_tries), ("epoch_size", epoch_size)):
            if not _is_int(value) or value < 1:
                raise _invalid(f"ClipSampler.{name}", "an int >= 1", value)
        usable = [s for s in scenes if len(s.valid_frames) >= 2]
        if not usable:
            raise ValueError(f"ClipSampler: no scene has 2 or more valid frames: {scenes}")
        self.scenes, self.sampling, self.min_visible = usable, sampling, min_visible
        self.margin, self.depth_tolerance = margin, depth_tolerance
        self.max_tries, self.seed, self.epoch_size = max_tries, seed, epoch_size
        self.stats: Counter = Counter()
        self.errors: deque[str] = deque(maxlen=20)  # the latest read errors, for logs

    def __len__(self) -> int:
        return self.epoch_size

    def __getitem__(self, index: int):
        return self.sample(index)

    def draw(self, rng: np.random.Generator) -> _Draw:
        """Pick a scene, an anchor and the other frames (no I/O)."""
        s = int(rng.integers(len(self.scenes)))
        valid = np.asarray(self.scenes[s].valid_frames)
        anchor = int(valid[rng.integers(len(valid))])
        near = valid[(np.abs(valid - anchor) <= self.sampling.window) & (valid != anchor)]
        f = int(rng.integers(self.sampling.min_frames, self.sampling.max_frames + 1))
        others = rng.choice(near, size=min(f - 1, len(near)), replace=False) if len(near) else []
        ids = sorted([anchor, *(int(i) for i in others)])
        return _Draw(scene=s, frame_ids=ids, anchor_row=ids.index(anchor))

    def sample(self, index: int):
        """``(Clip, Tracks)`` for ``index``; the same ``(seed, index)`` gives the same result."""
        from gasp_plugin.geometry.tracks import Tracks, grid_tracks, keep_per_grid

        rng = np.random.default_rng([self.seed, int(index)])
        for _ in range(self.max_tries):
            d = self.draw(rng)
            scene = self.scenes[d.scene]
            if len(d.frame_ids) < 2:
                self.stats["rejected_too_few_frames"] += 1
                continue
            try:
                clip = load_clip(scene, d.frame_ids, d.anchor_row)
            except (ValueError, IndexError) as exc:  # unreadable file: the scene marks it skipped
                self.stats["skipped_unreadable"] += 1
                self.errors.append(str(exc))
                continue
            parts = grid_tracks(clip, self.sampling.grid, margin=self.margin, depth_tolerance=self.depth_tolerance)
            tracks = Tracks.cat(parts)
            if tracks.num_points == 0 or _others_visible(tracks) < self.min_visible:
                self.stats["rejected_low_visibility"] += 1
                continue
            self.stats["accepted"] += 1
            return clip, keep_per_grid(parts, self.sampling.keep)
        raise ClipSamplingError(
            f"ClipSampler: no acceptable clip in {self.max_tries} tries for index {index} "
            f"(stats so far: {dict(self.stats)}); lower min_visible or window, or check the scenes")


def _others_visible(tracks) -> float:
    """Mean visible fraction of the anchor's points over the non-anchor rows."""
    rows = [r for r in range(tracks.num_frames) if r != tracks.anchor]
    return float(tracks.visible[rows].float().mean()) if rows else 0.0
