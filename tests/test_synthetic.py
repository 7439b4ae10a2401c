"""Synthetic scenes: determinism, exact geometry (checked against the surfaces themselves and an
independent projection), occlusion, camera motion, texture consistency, and the disk round trip."""

import math
import re

import numpy as np
import pytest
import torch

from gasp_plugin.data import load_clip, open_scene
from gasp_plugin.data.render import Box, Room, look_at, pixel_rays
from gasp_plugin.data.synthetic import (
    SyntheticScene,
    SyntheticSceneConfig,
    covisibility,
    generate_scenes,
    make_synthetic_scene,
    write_scene,
)
from gasp_plugin.geometry.tracks import compute_tracks, tracks_for_clip

SMALL = SyntheticSceneConfig(height=96, width=112, num_frames=12)


@pytest.fixture(scope="module")
def scene():
    return make_synthetic_scene(SMALL, seed=3)


def clip_tensors(scene, ids):
    return (torch.from_numpy(np.stack([scene.depth(i) for i in ids])),
            torch.from_numpy(np.stack([scene.intrinsics(i) for i in ids])),
            torch.from_numpy(np.stack([scene.pose(i) for i in ids])))


def test_deterministic_from_seed(scene):
    again = make_synthetic_scene(SMALL, seed=3)
    other = make_synthetic_scene(SMALL, seed=4)
    for i in (0, 7):
        assert np.array_equal(scene.image(i), again.image(i)) and np.array_equal(scene.depth(i), again.depth(i))
    assert np.array_equal(scene.pose(5), again.pose(5)) and not np.allclose(scene.pose(5), other.pose(5))
    assert scene.image(0).shape == (96, 112, 3) and scene.depth(0).dtype == np.float32


@pytest.mark.parametrize("field, value", [("height", 8), ("num_frames", 1), ("speed_deg", -1.0),
                                          ("num_boxes", (5, 2)), ("supersample", 0), ("orbit", 0.95),
                                          ("height", 64.0), ("fov_deg", "wide"), ("room_size", (6.0, 5.0)),
                                          ("num_boxes", (1.5, 3)), ("box_side", (0.5,)), ("camera_height", None),
                                          ("roll_deg", True)])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SyntheticSceneConfig.{field}: expected .*got {re.escape(repr(value))}") as info:
        SyntheticSceneConfig(**{field: value})
    assert info.value.field == field  # a recipe error names data.geometry.synthetic.config.<field>


def test_misspelt_config_key_in_a_recipe_names_the_key_path():
    from gasp_plugin.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=r"unknown key 'data\.geometry\.synthetic\.config\.hieght' in .*tiny_cpu\.yaml"):
        load_recipe("tiny_cpu", ["data.geometry.synthetic.config.hieght=3"])


def world_points(scene, i):
    """Every pixel of frame i lifted with its depth, ``[h*w, 3]`` float64 world coordinates."""
    origin, dirs = pixel_rays(scene.intrinsics(i), scene.pose(i), scene.height, scene.width)
    return origin + scene.depth(i).astype(np.float64).reshape(-1, 1) * dirs


def test_depth_lands_on_a_surface(scene):
    # independent of the ray caster: each lifted pixel must lie on a wall plane or on a box face
    for i in (0, 11):
        X = world_points(scene, i)
        size = np.array(scene.room.size)
        dist = np.minimum(np.abs(X), np.abs(X - size)).min(1)  # to the nearest wall plane
        for box in scene.room.boxes:
            c, s = math.cos(box.yaw), math.sin(box.yaw)
            R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
            local = (X - np.array(box.centre)) @ R
            outside = np.clip(np.abs(local) - np.array(box.half), 0, None)
            on_face = np.abs(np.abs(local) - np.array(box.half)).min(1)
            dist = np.minimum(dist, np.where(np.linalg.norm(outside, axis=1) < 1e-4, on_face, np.inf))
        assert np.all(dist < 2e-4 * np.linalg.norm(X - scene.pose(i)[:3, 3], axis=1) + 1e-5)
        assert ((X > -1e-4) & (X < size + 1e-4)).all()


def test_tracks_match_analytic_projection_and_visibility(scene):
    anchor, ids = 0, [0, 2, 5, 8]
    t = compute_tracks(*clip_tensors(scene, ids), anchor=0, grid=16)
    q = t.query_xy.long()
    X = world_points(scene, anchor).reshape(scene.height, scene.width, 3)[q[:, 1], q[:, 0]]  # [p, 3]
    agree, occluded_seen = [], 0
    for row, i in enumerate(ids):
        T, K = scene.pose(i), scene.intrinsics(i)
        cam = (np.linalg.inv(T) @ np.c_[X, np.ones(len(X))].T).T[:, :3]
        xy = (K @ cam.T).T
        xy = xy[:, :2] / xy[:, 2:]
        vis = t.visible[row].numpy()
        assert np.abs(xy[vis] - t.xy[row, vis].numpy()).max() < 0.1
        # analytic visibility: the first hit from camera i towards X is X itself
        hit_t, _, _ = scene.raycast(T[:3, 3], X - T[:3, 3])
        inside = ((xy >= 4) & (xy <= [scene.width - 5, scene.height - 5])).all(1) & (cam[:, 2] > 0)
        truth = inside & (hit_t > 1 - 1e-6)
        agree.append((truth == vis).mean())
        hidden = inside & (hit_t < 0.9)  # something clearly in front of the point
        occluded_seen += hidden.sum()
        assert not vis[hidden].any(), "a point hidden behind an occluder was marked visible"
    assert np.mean(agree) > 0.97
    assert occluded_seen > 0, "the scene should exercise occlusion"


def test_point_behind_a_box_is_invisible():
    # a wall point seen by camera A; camera B looks at it through a box standing in between
    box = Box(centre=(3.0, 2.5, 0.75), half=(0.3, 0.3, 0.75))
    room = Room(size=(6.0, 5.0, 3.0), boxes=(box,), colours=((0.5, 0.5, 0.5),) * 7)
    wall_point = np.array([3.0, 5.0, 0.75])  # on the +y wall, straight behind the box from B
    eye_a, eye_b = np.array([1.0, 1.0, 1.5]), np.array([3.0, 0.8, 0.75])
    poses = np.stack([look_at(eye_a, wall_point), look_at(eye_b, wall_point + [0, 0, 0.01])])
    K = np.array([[60.0, 0, 47.5], [0, 60, 47.5], [0, 0, 1]])
    scene = SyntheticScene(room, poses, K, 96, 96)
    depth, Ks, Ts = clip_tensors(scene, [0, 1])
    t = compute_tracks(depth, Ks, Ts, anchor=0, grid=96)  # every pixel
    cam_a = np.linalg.inv(poses[0]) @ np.r_[wall_point, 1]
    pix = (K @ cam_a[:3])[:2] / cam_a[2]
    k = int(np.argmin(np.linalg.norm(t.query_xy.numpy() - pix, axis=1)))
    assert np.linalg.norm(t.xy[1, k].numpy() - [47.5, 47.5]) < 2.0  # lands mid-image in B...
    assert not t.visible[1, k]  # ...but the box hides it
    no_box = SyntheticScene(Room(room.size, (), room.colours[:6]), poses, K, 96, 96)
    assert compute_tracks(*clip_tensors(no_box, [0, 1]), anchor=0, grid=96).visible[1, k]


def test_camera_rotates_and_translates(scene):
    for i in range(len(scene) - 1):
        rel = np.linalg.inv(scene.pose(i + 1)) @ scene.pose(i)
        angle = math.degrees(math.acos(np.clip((np.trace(rel[:3, :3]) - 1) / 2, -1, 1)))
        assert angle > 0.5 and np.linalg.norm(rel[:3, 3]) > 0.02


def test_default_path_covisibility():
    vals = [covisibility(make_synthetic_scene(SyntheticSceneConfig(height=112, width=112), seed), [1, 8],
                         max_anchors=4) for seed in range(4)]
    gap1, gap8 = np.mean([v[1] for v in vals]), np.mean([v[8] for v in vals])
    assert gap1 > 0.8 and 0.4 < gap8 < 0.7, (gap1, gap8)
    slow = covisibility(make_synthetic_scene(SyntheticSceneConfig(height=112, width=112, speed_deg=1.0), 0),
                        [8], max_anchors=4)[8]
    assert slow > vals[0][8]


def test_texture_is_consistent_across_views(scene):
    gen = np.random.default_rng(0)
    clip = load_clip(scene, [1, 4], anchor_row=0)
    t = tracks_for_clip(clip, grid=32, keep=1.0)
    vis = t.visible[1].numpy()
    qa, qb = t.query_xy[vis].long().numpy(), t.xy[1, vis].round().long().numpy()
    a = clip.images[0][qa[:, 1], qa[:, 0]].astype(float)
    b = clip.images[1][qb[:, 1], qb[:, 0]].astype(float)
    r = clip.images[1][gen.integers(0, 96, len(qa)), gen.integers(0, 112, len(qa))].astype(float)
    assert np.abs(a - b).mean() < 0.15 * np.abs(a - r).mean()
    # locally distinctive: neighbouring token-sized patches differ
    img = clip.images[0].astype(float)
    assert np.abs(img[:, 14:] - img[:, :-14]).mean() > 10


def test_write_then_open_round_trip(scene, tmp_path):
    path = write_scene(scene, tmp_path / "s")
    disk = open_scene(path)
    assert type(disk).__name__ == "HololensScene" and len(disk) == len(scene)
    for i in (0, 6):
        assert np.array_equal(disk.image(i), scene.image(i))
        assert np.abs(disk.depth(i) - scene.depth(i)).max() <= 0.0005 + 1e-6
        assert np.allclose(disk.pose(i), scene.pose(i), atol=1e-12)
        assert np.allclose(disk.intrinsics(i), scene.intrinsics(i), atol=1e-12)
    a = compute_tracks(*clip_tensors(scene, [0, 3]), anchor=0, grid=8)
    b = compute_tracks(*clip_tensors(disk, [0, 3]), anchor=0, grid=8)
    both = a.visible & b.visible
    assert both.sum() > 0.9 * a.visible.sum()
    assert (a.xy - b.xy)[both].abs().max() < 0.05


def test_generate_scenes_is_deterministic_and_reuses(tmp_path):
    cfg = SyntheticSceneConfig(height=32, width=32, num_frames=3)
    paths = generate_scenes(tmp_path, count=2, seed=7, config=cfg, progress=False)
    assert [p.name for p in paths] == ["synthetic-7-000", "synthetic-7-001"]
    stamp = (paths[0] / "images" / "00000.png").stat().st_mtime_ns
    again = generate_scenes(tmp_path, count=2, seed=7, config=cfg, progress=False)
    assert again == paths and (paths[0] / "images" / "00000.png").stat().st_mtime_ns == stamp
    assert not np.array_equal(open_scene(paths[0]).image(0), open_scene(paths[1]).image(0))
    with pytest.raises(ValueError, match="count"):
        generate_scenes(tmp_path, count=0)


def test_generate_scenes_split_across_processes_makes_the_same_scenes(tmp_path):
    """``only``: each of two processes (as the demo runs them) makes every other scene; together
    they write exactly the scenes one call makes, byte for byte."""
    cfg = SyntheticSceneConfig(height=32, width=32, num_frames=2)
    whole = generate_scenes(tmp_path / "one", count=3, seed=5, config=cfg, progress=False)
    halves = [generate_scenes(tmp_path / "two", count=3, seed=5, config=cfg, progress=False, only=range(i, 3, 2))
              for i in range(2)]
    assert [p.name for p in halves[0]] == ["synthetic-5-000", "synthetic-5-002"]
    assert sorted(p.name for h in halves for p in h) == [p.name for p in whole]
    for p in whole:
        for f in sorted(x.relative_to(p) for x in p.rglob("*") if x.is_file()):
            assert (p / f).read_bytes() == (tmp_path / "two" / p.name / f).read_bytes(), f
    with pytest.raises(ValueError, match=r"indices \[3\] are outside range\(3\)"):
        generate_scenes(tmp_path, count=3, only=[3])


def test_texture_hash_matches_a_64_bit_reference():
    """The 32-bit lattice hash gives bit for bit what 64-bit products masked to 32 bits give (the
    generator's texture, so scenes written before stay valid), negative coordinates included."""
    from gasp_plugin.data.render import _hash

    def reference(ix, iy, iz, seed, channels):
        m = (1 << 32) - 1
        out = np.zeros((len(ix), channels))
        for i, (x, y, z, s) in enumerate(zip(ix.tolist(), iy.tolist(), iz.tolist(), seed.tolist())):
            base = (((x * 73856093) & m) ^ ((y * 19349663) & m) ^ ((z * 83492791) & m)) ^ ((s * 668265261) & m)
            for c in range(channels):
                h = base ^ ((c * 0x5BD1E995) & m)
                for _ in range(2):
                    h = ((h ^ (h >> 16)) * 0x45D9F3B) & m
                out[i, c] = (h ^ (h >> 16)) / float(1 << 32)
        return out

    rng = np.random.default_rng(3)
    ix, iy, iz = (rng.integers(-400, 400, 300) for _ in range(3))
    seed = rng.integers(0, 1 << 27, 300)
    np.testing.assert_array_equal(_hash(ix, iy, iz, seed, 3), reference(ix, iy, iz, seed, 3))
