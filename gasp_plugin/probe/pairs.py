"""Held-out frame pairs for the probe: anchors and targets at frame gaps ``1 .. max_gap``.

Notation: ``p`` query points of an anchor frame, ``h, w`` image size.

For every scene and every gap ``g`` allowed by its length, ``pairs_per_gap`` anchors ``a`` are
spread evenly over the frames that have a frame ``a + g`` after them, and the pair is
``(a, a + g)``. The selection depends on nothing but the scene lengths and the arguments, so it is
deterministic. Each pair carries its ground-truth tracks (two rows: anchor, target) and its view
change: camera rotation (degrees, the angle of the relative rotation), translation (metres,
distance between the camera centres) and co-visible fraction (the share of the anchor's query
points with valid depth that are visible in the target).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from gasp_plugin.geometry.tracks import Tracks

__all__ = ["ProbePair", "PairSet", "select_pairs", "view_change", "gap_summary"]

MAX_GAP_LIMIT = 24


@dataclass(frozen=True)
class ProbePair:
    """One anchor/target frame pair of one scene.

    Attributes:
        scene_index: position of the scene in the list given to :func:`select_pairs`.
        scene: the scene's name.
        anchor, target: scene frame indices.
        tracks: ground truth with row 0 = anchor, row 1 = target (``xy [2, p, 2]``).
        rotation_deg, translation_m, covisible: the view change of the pair.
    """

    scene_index: int
    scene: str
    anchor: int
    target: int
    tracks: Tracks
    rotation_deg: float
    translation_m: float
    covisible: float

    @property
    def gap(self) -> int:
        return abs(self.target - self.anchor)

    def describe(self) -> dict:
        """JSON-ready record of the pair (without the tracks)."""
        return {
            "scene": self.scene,
            "anchor": self.anchor,
            "target": self.target,
            "gap": self.gap,
            "rotation_deg": round(self.rotation_deg, 4),
            "translation_m": round(self.translation_m, 5),
            "covisible": round(self.covisible, 5),
            "visible_points": int(self.tracks.visible[1].sum()),
        }


@dataclass
class PairSet:
    """The selected pairs and what was left out (``skipped``: reason -> count)."""

    pairs: list[ProbePair]
    max_gap: int
    grid: int = 8
    skipped: Counter = field(default_factory=Counter)

    def gaps(self) -> list[int]:
        return sorted({p.gap for p in self.pairs})


def view_change(world_from_cam_a: np.ndarray, world_from_cam_b: np.ndarray) -> tuple[float, float]:
    """Rotation angle (degrees) and camera-centre distance (pose units) between two ``[4, 4]``
    camera-to-world poses."""
    ra, rb = np.asarray(world_from_cam_a)[:3, :3], np.asarray(world_from_cam_b)[:3, :3]
    cos = (np.trace(rb.T @ ra) - 1.0) / 2.0
    angle = math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))
    dist = float(np.linalg.norm(np.asarray(world_from_cam_a)[:3, 3] - np.asarray(world_from_cam_b)[:3, 3]))
    return angle, dist


def _anchors_for_gap(num_frames: int, gap: int, count: int) -> list[int]:
    """``count`` anchors spread evenly over ``0 .. num_frames - 1 - gap`` (fewer when short)."""
    last = num_frames - 1 - gap
    if last < 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, last, num=min(count, last + 1))})


def _frame_geometry(scene, i: int, cache: dict):
    if i not in cache:
        cache[i] = (
            torch.as_tensor(np.asarray(scene.depth(i), dtype=np.float32)),
            torch.as_tensor(np.asarray(scene.intrinsics(i), dtype=np.float64)),
            torch.as_tensor(np.asarray(scene.pose(i), dtype=np.float64)),
        )
    return cache[i]


def _pair_tracks(scene, anchor: int, target: int, grid: int, cache: dict, **track_kwargs) -> Tracks:
    from gasp_plugin.geometry.tracks import compute_tracks

    (da, ka, pa), (db, kb, pb) = _frame_geometry(scene, anchor, cache), _frame_geometry(scene, target, cache)
    return compute_tracks(
        torch.stack([da, db]), torch.stack([ka, kb]), torch.stack([pa, pb]), anchor=0, grid=grid, **track_kwargs
    )


def select_pairs(
    scenes,
    *,
    max_gap: int = MAX_GAP_LIMIT,
    pairs_per_gap: int = 2,
    grid: int = 8,
    **track_kwargs,
) -> PairSet:
    """Choose held-out anchor/target pairs and compute their tracks.

    Args:
        scenes: sequence of :class:`~gasp_plugin.data.scene.Scene`.
        max_gap: the largest frame gap wanted (at most 24); gaps a scene is too short for are left
            out for that scene, and the set's ``max_gap`` is the largest gap any pair has.
        pairs_per_gap: anchors per scene and gap.
        grid: query points on a ``grid x grid`` lattice of the anchor frame.
        track_kwargs: passed to ``compute_tracks`` (``margin``, ``depth_tolerance``).

    Pairs whose tracks cannot be computed (bad pose or depth: the error is counted under its
    message) or whose anchor has no visible point in the target are left out and counted in
    ``skipped``.
    """
    if not 1 <= int(max_gap) <= MAX_GAP_LIMIT:
        raise ValueError(f"max_gap must be in 1..{MAX_GAP_LIMIT}, got {max_gap!r}")
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid (query points per side) must be a positive integer, got {grid!r}")
    if int(pairs_per_gap) < 1:
        raise ValueError(f"pairs_per_gap must be >= 1, got {pairs_per_gap!r}")
    if len(scenes) == 0:
        raise ValueError("select_pairs needs at least one scene")
    pairs, skipped = [], Counter()
    for si, scene in enumerate(scenes):
        cache: dict = {}
        n = len(scene)
        if n < 2:
            skipped[f"scene {scene.name!r} has fewer than 2 frames"] += 1
            continue
        for gap in range(1, min(int(max_gap), n - 1) + 1):
            for a in _anchors_for_gap(n, gap, int(pairs_per_gap)):
                try:
                    tracks = _pair_tracks(scene, a, a + gap, grid, cache, **track_kwargs)
                except ValueError as err:
                    skipped[f"tracks failed: {err}"] += 1
                    continue
                n_points = tracks.num_points
                n_visible = int(tracks.visible[1].sum()) if n_points else 0
                if n_visible == 0:
                    skipped["no anchor point visible in the target"] += 1
                    continue
                rot, trans = view_change(scene.pose(a), scene.pose(a + gap))
                pairs.append(ProbePair(si, scene.name, a, a + gap, tracks, rot, trans, n_visible / n_points))
    if not pairs:
        raise ValueError(f"no usable frame pair in {len(scenes)} scene(s); left out: {dict(skipped)}")
    return PairSet(pairs=pairs, max_gap=max(p.gap for p in pairs), grid=int(grid), skipped=skipped)


def gap_summary(pairs: list[ProbePair]) -> dict[int, dict]:
    """Per frame gap: number of pairs and the mean rotation (deg), translation (m), co-visible
    fraction over the pairs of that gap."""
    out: dict[int, dict] = {}
    for gap in sorted({p.gap for p in pairs}):
        sel = [p for p in pairs if p.gap == gap]
        out[gap] = {
            "pairs": len(sel),
            "rotation_deg": float(np.mean([p.rotation_deg for p in sel])),
            "translation_m": float(np.mean([p.translation_m for p in sel])),
            "covisible": float(np.mean([p.covisible for p in sel])),
        }
    return out
