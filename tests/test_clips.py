"""load_clip and the ClipSampler: determinism, the paper's sampling window, rejection of clips
whose anchor points are visible almost nowhere, and skipping of unreadable frames."""

import numpy as np
import pytest
import torch

from gasp_plugin.data import ClipSampler, ClipSampling, ClipSamplingError, load_clip
from gasp_plugin.data.render import look_at
from gasp_plugin.data.synthetic import SyntheticScene, SyntheticSceneConfig, make_synthetic_scene, write_scene

CFG = SyntheticSceneConfig(height=48, width=64, num_frames=24)


@pytest.fixture(scope="module")
def scenes():
    return [make_synthetic_scene(CFG, seed) for seed in (1, 2)]


def test_load_clip_keeps_order_and_anchor(scenes):
    s = scenes[0]
    clip = load_clip(s, [5, 2, 9], anchor_row=1)
    assert clip.frame_ids == [5, 2, 9] and clip.anchor == 1 and clip.scene == s.name
    assert clip.images.shape == (3, 48, 64, 3) and clip.depth.shape == (3, 48, 64)
    assert np.array_equal(clip.images[1], s.image(2)) and np.array_equal(clip.poses[2], s.pose(9))
    with pytest.raises(IndexError, match="frame 24 out of range"):
        load_clip(s, [0, 24])
    with pytest.raises(ValueError, match="anchor_row"):
        load_clip(s, [0, 1], anchor_row=2)


def test_sampler_is_deterministic_and_follows_the_window(scenes):
    sampling = ClipSampling(min_frames=4, max_frames=8, window=5, grid=6)
    a = ClipSampler(scenes, sampling, seed=3)
    b = ClipSampler(scenes, sampling, seed=3)
    lengths = set()
    for index in range(12):
        (ca, ta), (cb, tb) = a.sample(index), b.sample(index)
        assert ca.frame_ids == cb.frame_ids and ca.scene == cb.scene and torch.equal(ta.xy, tb.xy)
        ids, anchor = ca.frame_ids, ca.frame_ids[ca.anchor]
        assert ids == sorted(ids) and len(set(ids)) == len(ids) and 4 <= len(ids) <= 8
        assert all(abs(i - anchor) <= 5 for i in ids)
        assert ta.anchor == ca.anchor and ta.num_frames == len(ids)
        assert ta.num_points <= 18  # keep=0.5 of at most 36 grid points
        lengths.add(len(ids))
    assert len(lengths) > 1
    assert a.stats["accepted"] == 12
    c = ClipSampler(scenes, sampling, seed=4)
    assert [c.sample(i)[0].frame_ids for i in range(6)] != [a.sample(i)[0].frame_ids for i in range(6)]


def test_sampler_as_dataset(scenes):
    sampler = ClipSampler(scenes, ClipSampling(min_frames=3, max_frames=3, window=4), epoch_size=5)
    loader = torch.utils.data.DataLoader(sampler, batch_size=None, shuffle=False)
    assert len(sampler) == 5 and sum(1 for _ in loader) == 5


def facing_away_scene():
    """Every frame looks the opposite way from its neighbours: anchor points are seen nowhere else."""
    eye = np.array([3.0, 2.5, 1.5])
    targets = [eye + [1, 0, -0.2], eye + [-1, 0, -0.2]]
    poses = np.stack([look_at(eye, targets[i % 2]) for i in range(6)])
    base = make_synthetic_scene(CFG, 1)
    return SyntheticScene(base.room, poses, base.intrinsics(0), 48, 64, name="facing-away")


def test_sampler_rejects_clips_seen_nowhere_and_counts_them(scenes):
    bad = facing_away_scene()
    only_bad = ClipSampler([bad], ClipSampling(min_frames=2, max_frames=2, window=1), max_tries=5, min_visible=0.05)
    with pytest.raises(ClipSamplingError, match="no acceptable clip in 5 tries"):
        only_bad.sample(0)
    assert only_bad.stats["rejected_low_visibility"] == 5
    mixed = ClipSampler([bad, scenes[0]], ClipSampling(min_frames=2, max_frames=2, window=1), seed=0)
    for index in range(10):
        clip, tracks = mixed.sample(index)
        assert clip.scene == scenes[0].name
    assert mixed.stats["accepted"] == 10 and mixed.stats["rejected_low_visibility"] > 0


def test_sampler_skips_unreadable_frames(tmp_path, scenes):
    from gasp_plugin.data import open_scene

    path = write_scene(make_synthetic_scene(SyntheticSceneConfig(height=32, width=32, num_frames=6), 5), tmp_path / "s")
    for i in (1, 2, 3):
        (path / "images" / f"{i:05d}.png").write_bytes(b"broken")
    scene = open_scene(path)
    sampler = ClipSampler([scene], ClipSampling(min_frames=2, max_frames=2, window=5, grid=4), min_visible=0.0, seed=1)
    for index in range(8):
        clip, _ = sampler.sample(index)
        assert not set(clip.frame_ids) & {1, 2, 3}
    assert sampler.stats["skipped_unreadable"] > 0 and set(scene.skipped) <= {1, 2, 3}
    assert any("00001.png" in e or "00002.png" in e or "00003.png" in e for e in sampler.errors)


def test_sampler_argument_errors(scenes):
    with pytest.raises(ValueError, match="scenes is empty"):
        ClipSampler([])
    with pytest.raises(TypeError, match="sampling must be a ClipSampling"):
        ClipSampler(scenes, {"min_frames": 2})
    with pytest.raises(ValueError, match=r"ClipSampler.min_visible must be a number in \[0, 1\]; got 1.5"):
        ClipSampler(scenes, min_visible=1.5)
    for name in ("max_tries", "epoch_size"):
        with pytest.raises(ValueError, match=rf"ClipSampler.{name} must be an int >= 1; got 0"):
            ClipSampler(scenes, **{name: 0})


def test_clip_sampling_defaults_are_the_papers():
    s = ClipSampling()
    assert (s.min_frames, s.max_frames, s.window, s.grid, s.keep) == (8, 24, 48, (8,), 0.5)
    assert s.num_frames == (8, 24)
    with pytest.raises(AttributeError):
        s.window = 3  # frozen


@pytest.mark.parametrize("kwargs, field, allowed", [
    ({"min_frames": 1}, "min_frames", "an int >= 2; got 1"),
    ({"min_frames": 2.5}, "min_frames", "an int >= 2; got 2.5"),
    ({"min_frames": 6, "max_frames": 5}, "max_frames", r"an int >= min_frames \(6\); got 5"),
    ({"window": 0}, "window", "an int >= 1; got 0"),
    ({"grid": 0}, "grid", r"an int >= 1 or a list of distinct ints >= 1 \(e.g. \[8, 24\]\); got 0"),
    ({"keep": 0}, "keep", r"a number in \(0, 1\]; got 0"),
    ({"keep": 1.5}, "keep", r"a number in \(0, 1\]; got 1.5"),
    ({"keep": True}, "keep", r"a number in \(0, 1\]; got True"),
])
def test_clip_sampling_errors_name_field_range_and_value(kwargs, field, allowed):
    with pytest.raises(ValueError, match=rf"ClipSampling.{field} must be {allowed}") as info:
        ClipSampling(**kwargs)
    assert info.value.field == field  # a recipe error names data.geometry.<field>


@pytest.mark.parametrize("value", [-0.1, 1.01, "0.5", None, True])
def test_geometry_ratio_check(value):
    from gasp_plugin.data import check_geometry_ratio

    with pytest.raises(ValueError, match=r"--gasp_ratio must be a number in \[0, 1\]; got ") as info:
        check_geometry_ratio(value, "--gasp_ratio")
    assert info.value.field == "gasp_ratio"
    assert check_geometry_ratio(1) == 1.0 and check_geometry_ratio(0.25) == 0.25


def test_clip_sampling_grids():
    """One grid or several (the paper's coarse 8 and fine 24), stored as a tuple; bad ones named."""
    assert ClipSampling(grid=[8, 24]).grid == (8, 24) and ClipSampling(grid=6).grid == (6,)
    for bad in ([], [8, 8], [0], "8", 2.5):
        with pytest.raises(ValueError, match=r"ClipSampling.grid must be an int >= 1 or a list"):
            ClipSampling(grid=bad)
