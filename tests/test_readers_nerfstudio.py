"""nerfstudio transforms.json (DL3DV): OpenGL camera axes, +0.5 pixel centres, intrinsics of the
full-size frames read from a down-sampled folder, depth from a user folder (.npy or 16-bit PNG)."""

import json
import re

import numpy as np
import pytest

from formats import CONFIG, GL_FROM_CV_AXES, SEED, check_tracks, gasp_tracks, views, write_nerfstudio, write_png_depth
from gasp_plugin.data import open_scene
from gasp_plugin.data.synthetic import make_synthetic_scene


@pytest.fixture(scope="module")
def synth():
    return make_synthetic_scene(CONFIG, seed=SEED)


def test_dl3dv_layout_tracks_equal_the_exact_ground_truth(tmp_path, synth):
    root = write_nerfstudio(tmp_path / "0a1b2c3d", synth, factor=4, depth="npy")
    s = open_scene(root)
    assert type(s).__name__ == "NerfstudioScene" and s.name == "0a1b2c3d" and s.images_dir.name == "images_4"
    assert len(s) == len(synth) and s.valid_frames == list(range(len(synth)))
    assert np.allclose(s.intrinsics(3), synth.intrinsics(3)) and np.allclose(s.pose(5), synth.pose(5))
    assert np.array_equal(s.image(2), synth.image(2)) and np.array_equal(s.depth(2), synth.depth(2))
    check_tracks(s, synth)


def test_the_check_catches_a_forgotten_axis_flip(synth):
    # the same frames with the OpenGL matrices taken as OpenCV ones: the tracks check must fail
    gl = views(synth, synth.intrinsics(0), synth.width, synth.height,
               poses=np.stack([synth.pose(i) @ GL_FROM_CV_AXES for i in range(len(synth))]))
    with pytest.raises(AssertionError):
        check_tracks(gl, synth)


def test_png_depth_with_the_file_scale_and_per_frame_paths(tmp_path, synth):
    root = write_nerfstudio(tmp_path / "scene", synth, factor=1, depth="png", depth_file_path=True, depth_unit=2.5e-4)
    s = open_scene(root)
    assert s.images_dir.name == "images"
    assert np.abs(s.depth(1) - synth.depth(1)).max() <= 1.25e-4 + 1e-6  # quarter-millimetre units
    check_tracks(s, synth)
    # a depth folder given by the user (relative to the scene) wins over the listed paths
    (root / "mine").mkdir()
    for i in range(len(synth)):
        np.save(root / "mine" / f"frame_{i + 1:05d}.npy", synth.depth(i) * 2)
    assert np.allclose(open_scene(root, depth_dir="mine").depth(1), synth.depth(1) * 2)


def test_depth_of_a_lower_resolution_is_resampled(tmp_path, synth):
    root = write_nerfstudio(tmp_path / "scene", synth, factor=2, depth=None)
    (root / "depth").mkdir()
    small = views(synth, np.array([[synth.intrinsics(0)[0, 0] / 3, 0, (synth.intrinsics(0)[0, 2] + 0.5) / 3 - 0.5],
                                   [0, synth.intrinsics(0)[1, 1] / 3, (synth.intrinsics(0)[1, 2] + 0.5) / 3 - 0.5],
                                   [0, 0, 1]]), 32, 24)
    for i in range(len(synth)):
        write_png_depth(root / "depth" / f"frame_{i + 1:05d}.png", small.depth(i))
    s = open_scene(root)
    d = s.depth(4)
    assert d.shape == (72, 96) and np.abs(d[1::3, 1::3] - synth.depth(4)[1::3, 1::3]).max() <= 0.0005 + 1e-6


def test_bad_input_is_named_or_skipped_and_counted(tmp_path, synth):
    root = write_nerfstudio(tmp_path / "scene", synth, depth=None)
    with pytest.raises(ValueError, match=r"scene: no depth for this scene \(DL3DV ships none\): put depth maps in .*depth"):
        open_scene(root)
    root = write_nerfstudio(tmp_path / "scene2", synth, depth="npy")
    meta = json.loads((root / "transforms.json").read_text())
    by_name = {f["file_path"]: f for f in meta["frames"]}
    by_name["images/frame_00002.png"]["transform_matrix"][0][0] = float("nan")
    del by_name["images/frame_00003.png"]["transform_matrix"]
    (root / "transforms.json").write_text(json.dumps(meta))
    (root / "depth" / "frame_00005.npy").unlink()
    (root / "images_4" / "frame_00006.png").unlink()
    s = open_scene(root)
    assert s.valid_frames == [0, 3, 6, 7]
    assert "NaN" in s.skipped[1] and "NaN" in s.skipped[2]
    assert "missing depth file" in s.skipped[4] and "frame_00005.png" in s.skipped[4]
    assert "missing colour file" in s.skipped[5]
    # depth of another aspect ratio: an error naming the file when read, then the frame is skipped
    np.save(root / "depth" / "frame_00007.npy", np.ones((10, 40), np.float32))
    with pytest.raises(ValueError, match=r"frame_00007.npy: depth map is 40x10 but the colour image is 96x72"):
        s.depth(6)
    assert 6 not in s.valid_frames
    np.save(root / "depth" / "frame_00008.npy", np.ones((72, 96), np.int32))
    with pytest.raises(ValueError, match=r"depth map .*frame_00008.npy: expected a 2-D float array in metres"):
        s.depth(7)
    (root / "transforms.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"cannot read {root / 'transforms.json'}")):
        open_scene(root)
    meta["camera_model"] = "OPENCV_FISHEYE"
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="camera_model OPENCV_FISHEYE is not a pinhole camera"):
        open_scene(root)
    del meta["camera_model"], meta["fl_x"]
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"transforms.json: frame 0 \(images/frame_00001.png\): no 'fl_x'"):
        open_scene(root)


def test_gasp_tracks_reads_a_nerfstudio_scene(tmp_path, synth):
    root = write_nerfstudio(tmp_path / "scene", synth)
    gasp_tracks(root, tmp_path)