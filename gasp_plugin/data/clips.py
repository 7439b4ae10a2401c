"""Clips: loading frames of a scene, and sampling training clips with their tracks.

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

import numpy as np

from gasp_plugin.data.scene import Clip, Scene

__all__ = ["load_clip", "ClipSampler", "ClipSamplingError"]


class ClipSamplingError(RuntimeError):
    """No acceptable clip could be drawn within the allowed number of tries."""


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
        num_frames: ``(min, max)`` clip length ``F``, inclusive (paper: (8, 24)).
        window: other frames come from ``[anchor - window, anchor + window]`` (paper: 48).
        grid: query grid per side; keep: best-tracked fraction kept (paper: 0.5).
        min_visible: reject clips whose mean visible fraction of anchor points over the other
            frames is below this, or that have no query with valid anchor depth.
        margin, depth_tolerance: visibility test, see :mod:`gasp_plugin.geometry.tracks`.
        max_tries: draws per ``sample`` call before raising :class:`ClipSamplingError`.
        seed: with ``index``, fixes everything ``sample(index)`` returns.
        epoch_size: ``len(sampler)``, so it can serve as a map-style dataset.
    """

    def __init__(self, scenes: list[Scene], num_frames: tuple[int, int] = (8, 24), window: int = 48,
                 grid: int = 8, keep: float = 0.5, min_visible: float = 0.05, margin: float = 4.0,
                 depth_tolerance: float = 0.05, max_tries: int = 20, seed: int = 0,
                 epoch_size: int = 1000):
        scenes = list(scenes)
        if not scenes:
            raise ValueError("ClipSampler: scenes is empty")
        lo, hi = num_frames
        if not 2 <= lo <= hi:
            raise ValueError(f"ClipSampler: num_frames must be (min, max) with 2 <= min <= max, got {num_frames}")
        for name, value, ok in (("window", window, window >= 1), ("keep", keep, 0 < keep <= 1),
                                ("min_visible", min_visible, 0 <= min_visible <= 1),
                                ("max_tries", max_tries, max_tries >= 1),
                                ("epoch_size", epoch_size, epoch_size >= 1)):
            if not ok:
                raise ValueError(f"ClipSampler: invalid {name}={value!r}")
        usable = [s for s in scenes if len(s.valid_frames) >= 2]
        if not usable:
            raise ValueError(f"ClipSampler: no scene has 2 or more valid frames: {scenes}")
        self.scenes, self.num_frames, self.window = usable, (lo, hi), window
        self.grid, self.keep, self.min_visible = grid, keep, min_visible
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
        near = valid[(np.abs(valid - anchor) <= self.window) & (valid != anchor)]
        f = int(rng.integers(self.num_frames[0], self.num_frames[1] + 1))
        others = rng.choice(near, size=min(f - 1, len(near)), replace=False) if len(near) else []
        ids = sorted([anchor, *(int(i) for i in others)])
        return _Draw(scene=s, frame_ids=ids, anchor_row=ids.index(anchor))

    def sample(self, index: int):
        """``(Clip, Tracks)`` for ``index``; the same ``(seed, index)`` gives the same result."""
        from gasp_plugin.geometry.tracks import tracks_for_clip

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
            tracks = tracks_for_clip(clip, grid=self.grid, keep=1.0, margin=self.margin,
                                     depth_tolerance=self.depth_tolerance)
            if tracks.num_points == 0 or _others_visible(tracks) < self.min_visible:
                self.stats["rejected_low_visibility"] += 1
                continue
            self.stats["accepted"] += 1
            return clip, tracks.keep_best(self.keep)
        raise ClipSamplingError(
            f"ClipSampler: no acceptable clip in {self.max_tries} tries for index {index} "
            f"(stats so far: {dict(self.stats)}); lower min_visible or window, or check the scenes")


def _others_visible(tracks) -> float:
    """Mean visible fraction of the anchor's points over the non-anchor rows."""
    rows = [r for r in range(tracks.num_frames) if r != tracks.anchor]
    return float(tracks.visible[rows].float().mean()) if rows else 0.0
