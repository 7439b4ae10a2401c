"""Ground-truth tracks: analytic cases, visibility rules, keep_best, the saved layout, and the real
HoloLens sample (cycle consistency and colour agreement)."""

import numpy as np
import pytest
import torch

from gasp_plugin.data import load_clip
from gasp_plugin.geometry.tracks import (
    Tracks,
    compute_tracks,
    grid_queries,
    load_tracks_metadata,
    track_points,
    tracks_for_clip,
)

H, W = 60, 80
K = torch.tensor([[50.0, 0, 39.5], [0, 50, 29.5], [0, 0, 1]], dtype=torch.float64)


def plane_clip(f=3, z=2.0):
    depth = torch.full((f, H, W), z)
    return depth, K.expand(f, 3, 3).clone(), torch.eye(4, dtype=torch.float64).repeat(f, 1, 1)


def test_grid_queries_are_cell_centre_pixels():
    q = grid_queries(224, 224, 8)
    assert q.shape == (64, 2)
    centres = [14.0 + 28 * i for i in range(8)]  # (i + 0.5) * 28 - 0.5 = 13.5 + 28 i, rounded up
    assert q[:8, 0].tolist() == centres and q[:8, 1].tolist() == [14.0] * 8
    assert q[::8, 1].tolist() == centres
    with pytest.raises(ValueError, match="grid must be an integer"):
        grid_queries(10, 10, 0)


def test_identity_poses_give_identity_tracks():
    depth, Ks, poses = plane_clip()
    depth[:, 10:30, 20:50] = 1.3
    t = compute_tracks(depth, Ks, poses, anchor=1, grid=6)
    assert t.num_points == 36 and t.anchor == 1
    assert torch.equal(t.xy, t.query_xy.expand(3, 36, 2))
    assert t.visible.all()
    q = t.query_xy.long()
    assert torch.equal(t.depth, depth[1, q[:, 1], q[:, 0]].expand(3, 36))


def test_sideways_camera_motion_shifts_by_disparity():
    depth, Ks, poses = plane_clip(f=2, z=2.0)
    poses[1, 0, 3] = 0.4  # frame 1 camera 0.4 m to the right: disparity 50 * 0.4 / 2 = 10 px
    t = compute_tracks(depth, Ks, poses, anchor=0, grid=4)
    assert torch.allclose(t.xy[1], t.query_xy - torch.tensor([10.0, 0.0]), atol=1e-5)
    assert torch.allclose(t.depth[1], torch.full((16,), 2.0))
    # inside with a 4 px margin: x' >= 4; the left column (x = 10 -> 0) leaves the image
    assert torch.equal(t.visible[1], t.xy[1, :, 0] >= 4)
    assert not t.visible[1, ::4].any() and t.visible[1, 1::4].all()


def test_margin_and_depth_tolerance_are_configurable():
    depth, Ks, poses = plane_clip(f=2, z=2.0)
    poses[1, 0, 3] = 0.4
    # shifted x: 0, 20, 40, 60; y: 7, 22, 37, 52 (pixel centres at integers: x = 0 is inside)
    assert compute_tracks(depth, Ks, poses, 0, grid=4, margin=0.0).visible[1].all()
    wide = compute_tracks(depth, Ks, poses, 0, grid=4, margin=20.5).visible[1].reshape(4, 4)
    assert wide.tolist() == [[False] * 4] + [[False, False, True, False]] * 2 + [[False] * 4]
    near = depth.clone()
    near[1] = 2.0 * 0.96  # 4 % nearer than the projected points: passes 5 %, fails 3 %
    assert compute_tracks(near, Ks, poses, 0, grid=4).visible[1].sum() > 0
    assert compute_tracks(near, Ks, poses, 0, grid=4, depth_tolerance=0.03).visible[1].sum() == 0


def test_occluder_and_holes_make_points_invisible_and_invalid_anchor_depth_drops_queries():
    depth, Ks, poses = plane_clip(f=3, z=2.0)
    depth[1, :, :40] = 1.0  # something nearer covers the left half of frame 1
    depth[2, :, 40:] = 0.0  # no measurement on the right half of frame 2
    depth[0, :30] = float("nan")  # top half of the anchor has no depth
    t = compute_tracks(depth, Ks, poses, anchor=0, grid=4)
    assert t.num_points == 8 and (t.query_xy[:, 1] > 30).all()
    left = t.query_xy[:, 0] < 40
    assert torch.equal(t.visible[1], ~left) and torch.equal(t.visible[2], left)
    assert t.visible[0].all()


def test_bad_inputs_name_the_problem():
    depth, Ks, poses = plane_clip()
    bad = poses.clone()
    bad[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"poses\[2\].*NaN"):
        compute_tracks(depth, Ks, bad, anchor=0)
    with pytest.raises(ValueError, match=r"intrinsics: expected shape \[3, 3, 3\]"):
        compute_tracks(depth, Ks[:2], poses, anchor=0)
    with pytest.raises(ValueError, match=r"anchor: expected a row in \[0, 3\)"):
        compute_tracks(depth, Ks, poses, anchor=3)


def hand_tracks():
    visible = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 0, 1], [0, 1, 0, 0, 1]], dtype=torch.bool)
    xy = torch.arange(30, dtype=torch.float32).reshape(3, 5, 2)
    return Tracks(xy=xy, visible=visible, depth=torch.rand(3, 5) + 1, query_xy=xy[0].clone(), anchor=0)


def test_keep_best_keeps_longest_tracks_in_original_order():
    t = hand_tracks()  # visible counts per point: 1, 3, 2, 1, 3
    best = t.keep_best(0.5)  # ceil(2.5) = 3 points: 1, 4 (3 frames), 2 (2 frames)
    assert best.num_points == 3
    assert torch.equal(best.query_xy, t.query_xy[[1, 2, 4]])
    assert t.keep_best(0.2).query_xy.tolist() == t.query_xy[[1]].tolist()  # tie -> earlier point
    assert t.keep_best(1.0) is t
    with pytest.raises(ValueError, match="fraction"):
        t.keep_best(0.0)


def test_save_load_round_trip_and_metadata(tmp_path):
    t = hand_tracks()
    path = t.save(tmp_path / "t.safetensors", metadata={"scene": "x"})
    back = Tracks.load(path)
    for name in ("xy", "visible", "depth", "query_xy"):
        assert torch.equal(getattr(back, name), getattr(t, name))
    assert back.anchor == 0 and load_tracks_metadata(path)["scene"] == "x"
    no_anchor = t.select_frames([2, 1])
    assert no_anchor.anchor is None and Tracks.load(no_anchor.save(tmp_path / "n.safetensors")).anchor is None


def test_load_tracks_from_another_tool(tmp_path):
    from safetensors.torch import save_file

    xy = torch.rand(4, 6, 2) * 50
    vis = (torch.rand(4, 6) > 0.3).to(torch.uint8)
    xy[vis == 0] = float("nan")  # a point tracker may write NaN where a point is hidden
    save_file({"xy": xy, "visible": vis, "depth": torch.ones(4, 6, dtype=torch.float64)},
              str(tmp_path / "ext.safetensors"), metadata={"anchor": "2"})
    t = Tracks.load(tmp_path / "ext.safetensors")
    assert t.visible.dtype == torch.bool and t.anchor == 2 and t.depth.dtype == torch.float32
    assert torch.equal(t.query_xy.nan_to_num(-1), xy[2].nan_to_num(-1))


@pytest.mark.parametrize("tensors, message", [
    ({"xy": torch.zeros(2, 3, 2), "visible": torch.ones(2, 3)}, r"missing tensor\(s\) \['depth'\]"),
    ({"xy": torch.zeros(2, 3, 2), "visible": torch.ones(2, 4), "depth": torch.ones(2, 3)}, "Tracks.visible"),
    ({"xy": torch.full((2, 3, 2), float("nan")), "visible": torch.ones(2, 3), "depth": torch.ones(2, 3)},
     "non-finite"),
])
def test_load_rejects_bad_files_naming_them(tmp_path, tensors, message):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=message) as err:
        Tracks.load(path)
    assert "bad.safetensors" in str(err.value)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors"):
        Tracks.load(tmp_path / "junk.safetensors")


# --- the real HoloLens sample -------------------------------------------------------------------

PAIRS = [(0, 2), (4, 6), (10, 11), (20, 21)]  # the camera moves fast: nearby frames


@pytest.mark.parametrize("i, j", PAIRS)
def test_hololens_tracks_are_cycle_consistent(hololens_scene, i, j):
    clip = load_clip(hololens_scene, [i, j], anchor_row=0)
    args = (torch.from_numpy(clip.depth), torch.from_numpy(clip.intrinsics), torch.from_numpy(clip.poses))
    fwd = compute_tracks(*args, anchor=0, grid=24)
    vis = fwd.visible[1]
    assert vis.float().mean() > 0.5
    back, kept = track_points(fwd.xy[1, vis], *args, anchor=1)
    err = (back.xy[0] - fwd.query_xy[vis][kept]).norm(dim=-1)
    ok = back.visible[0]
    assert ok.float().mean() > 0.8
    assert (err[ok] < 1.0).float().mean() > 0.9, f"median cycle error {err[ok].median():.3f} px"


def test_hololens_matched_colours_agree_far_better_than_random(hololens_scene):
    gen = np.random.default_rng(0)
    matched, random = [], []
    for i, j in PAIRS:
        clip = load_clip(hololens_scene, [i, j], anchor_row=0)
        t = tracks_for_clip(clip, grid=24, keep=1.0)
        vis = t.visible[1].numpy()
        qa = t.query_xy[vis].round().long().numpy()
        qb = t.xy[1, vis].round().long().numpy()
        a = clip.images[0][qa[:, 1], qa[:, 0]].astype(float)
        b = clip.images[1][qb[:, 1], qb[:, 0]].astype(float)
        matched.append(np.abs(a - b).mean(1))
        rb = clip.images[1][gen.integers(0, clip.images.shape[1], len(qa)), gen.integers(0, clip.images.shape[2], len(qa))]
        random.append(np.abs(a - rb.astype(float)).mean(1))
    m, r = np.concatenate(matched).mean(), np.concatenate(random).mean()
    assert m < 0.4 * r, f"matched colour error {m:.1f} vs random {r:.1f}"


def test_several_grids_keep_per_grid(hololens_scene):
    """The paper's coarse and fine grids: each grid's best-tracked half is kept on its own, so the
    576 fine points cannot crowd out the 64 coarse ones; points are concatenated coarse to fine."""
    import math

    from gasp_plugin.data import load_clip
    from gasp_plugin.geometry.tracks import grid_tracks, tracks_for_clip

    clip = load_clip(hololens_scene, [10, 12, 14])
    coarse, fine = grid_tracks(clip, (8, 24))
    both = tracks_for_clip(clip, grid=[8, 24], keep=0.5)
    k8, k24 = math.ceil(0.5 * coarse.num_points), math.ceil(0.5 * fine.num_points)
    assert both.num_points == k8 + k24 and fine.num_points > 8 * coarse.num_points
    assert torch.equal(both.query_xy[:k8], tracks_for_clip(clip, grid=8, keep=0.5).query_xy)
    assert torch.equal(both.xy[:, k8:], tracks_for_clip(clip, grid=24, keep=0.5).xy)


def test_grids_tracked_in_one_pass_match_each_grid_alone(hololens_scene):
    """grid_tracks tracks all grids' queries together and splits them: the same tracks as
    compute_tracks grid by grid, also when anchor-depth holes drop different counts per grid."""
    from gasp_plugin.geometry.tracks import grid_tracks

    clip = load_clip(hololens_scene, [8, 10, 12, 14], anchor_row=1)
    clip.depth[1, :120, :200] = 0.0  # a hole in the anchor's depth
    parts = grid_tracks(clip, (8, 24, 5), margin=3.0, depth_tolerance=0.07)
    for grid, got in zip((8, 24, 5), parts):
        want = compute_tracks(torch.from_numpy(clip.depth), torch.from_numpy(clip.intrinsics),
                              torch.from_numpy(clip.poses), 1, grid=grid, margin=3.0, depth_tolerance=0.07)
        assert got.num_points < grid * grid and got.anchor == want.anchor == 1
        for name in ("xy", "visible", "depth", "query_xy"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (grid, name)
    with pytest.raises(ValueError, match="grid must be an integer"):
        grid_tracks(clip, (8, 0))
