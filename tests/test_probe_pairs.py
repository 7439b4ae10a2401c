"""Held-out pair selection: gaps, view change and co-visibility against analytic cases."""

import math

import numpy as np
import pytest

from gasp_plugin.data.scene import Scene
from gasp_plugin.probe.pairs import gap_summary, select_pairs, view_change


class PlaneScene(Scene):
    """A fronto-parallel textured plane at depth ``z``; the camera slides along +x by ``step``
    metres per frame without rotating."""

    def __init__(self, n=6, step=0.1, z=2.0, h=48, w=64, f=40.0, name="plane", bad_frames=()):
        self.name, self.n, self.step, self.z, self.h, self.w, self.f = name, n, step, z, h, w, f
        self.bad_frames = set(bad_frames)

    def __len__(self):
        return self.n

    def image(self, i):
        return np.zeros((self.h, self.w, 3), np.uint8)

    def depth(self, i):
        return np.full((self.h, self.w), self.z, np.float32)

    def intrinsics(self, i):
        return np.array([[self.f, 0, (self.w - 1) / 2], [0, self.f, (self.h - 1) / 2], [0, 0, 1]])

    def pose(self, i):
        T = np.eye(4)
        T[0, 3] = self.step * i
        if i in self.bad_frames:
            T[1, 3] = np.nan
        return T


def _analytic_covisible(scene, gap, grid=8, margin=4.0):
    """Grid query pixels shift left by f * step * gap / z; visible when inside the margins."""
    def centres(n):
        return np.floor((np.arange(grid) + 0.5) * n / grid - 0.5 + 0.5).clip(0, n - 1)
    xs, ys = np.meshgrid(centres(scene.w), centres(scene.h))
    u = xs - scene.f * scene.step * gap / scene.z
    ok = (u >= margin) & (u <= scene.w - 1 - margin) & (ys >= margin) & (ys <= scene.h - 1 - margin)
    return ok.mean()


def _rot_y(deg):
    t = math.radians(deg)
    return np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])


def test_view_change_analytic():
    a, b = np.eye(4), np.eye(4)
    a[:3, :3], b[:3, :3] = _rot_y(10.0), _rot_y(35.0)
    a[:3, 3], b[:3, 3] = [1.0, 2.0, 3.0], [1.0, 5.0, 7.0]
    rot, trans = view_change(a, b)
    assert rot == pytest.approx(25.0, abs=1e-6)
    assert trans == pytest.approx(5.0)
    assert view_change(a, a) == pytest.approx((0.0, 0.0), abs=1e-6)


def test_select_pairs_gaps_and_covisibility():
    scene = PlaneScene(n=6)
    ps = select_pairs([scene], max_gap=24, pairs_per_gap=2, grid=8)
    assert ps.max_gap == 5  # the longest the scene allows
    assert ps.gaps() == [1, 2, 3, 4, 5]
    for p in ps.pairs:
        assert p.target - p.anchor == p.gap
        assert 0 <= p.anchor and p.target < len(scene)
        assert p.rotation_deg == pytest.approx(0.0, abs=1e-6)
        assert p.translation_m == pytest.approx(0.1 * p.gap)
        assert p.covisible == pytest.approx(_analytic_covisible(scene, p.gap))
        assert p.tracks.xy.shape[0] == 2
    # gap 5 has exactly one anchor (0 -> 5); smaller gaps have 2 distinct anchors
    per_gap = gap_summary(ps.pairs)
    assert per_gap[5]["pairs"] == 1 and per_gap[1]["pairs"] == 2
    assert per_gap[3]["translation_m"] == pytest.approx(0.3)
    covis = [per_gap[g]["covisible"] for g in sorted(per_gap)]
    assert covis == sorted(covis, reverse=True) and covis[0] > covis[-1]


def test_select_pairs_is_deterministic_and_respects_max_gap():
    scenes = [PlaneScene(n=8, name="a"), PlaneScene(n=5, name="b")]
    one = [p.describe() for p in select_pairs(scenes, max_gap=3, pairs_per_gap=3).pairs]
    two = [p.describe() for p in select_pairs(scenes, max_gap=3, pairs_per_gap=3).pairs]
    assert one == two
    assert max(d["gap"] for d in one) == 3
    assert {d["scene"] for d in one} == {"a", "b"}


def test_pairs_without_visible_points_or_with_bad_poses_are_counted():
    # moving 1 m per frame at z=2 with f=40 shifts 20 px per frame: from gap 3 on nothing is visible
    ps = select_pairs([PlaneScene(n=6, step=1.0)], max_gap=5, pairs_per_gap=1)
    assert ps.max_gap == 2
    assert ps.skipped["no anchor point visible in the target"] == 3
    ps = select_pairs([PlaneScene(n=4, bad_frames={2})], max_gap=1, pairs_per_gap=3)
    assert [(p.anchor, p.target) for p in ps.pairs] == [(0, 1)]
    assert sum(v for k, v in ps.skipped.items() if k.startswith("tracks failed")) == 2


def test_select_pairs_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_gap"):
        select_pairs([PlaneScene()], max_gap=25)
    with pytest.raises(ValueError, match="grid"):
        select_pairs([PlaneScene()], grid=0)
    with pytest.raises(ValueError, match="pairs_per_gap"):
        select_pairs([PlaneScene()], pairs_per_gap=0)
    with pytest.raises(ValueError, match="no usable frame pair"):
        select_pairs([PlaneScene(n=3, step=5.0)], max_gap=2)
