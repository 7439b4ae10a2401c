"""ScanNet++ iPhone captures: pose_intrinsic_imu.json (aligned_pose), colour frames or video, depth
PNGs (lower resolution) or the per-frame depth.bin stream; tracks equal the exact ground truth."""

import json

import numpy as np
import pytest

from formats import CONFIG, POSE_JSON, SEED, check_tracks, gasp_tracks, views, write_scannetpp
from gasp_plugin.data import open_scene
from gasp_plugin.data.readers.common import scale_intrinsics
from gasp_plugin.data.synthetic import make_synthetic_scene


@pytest.fixture(scope="module")
def synth():
    return make_synthetic_scene(CONFIG, seed=SEED)


def test_extracted_frames_tracks_equal_the_exact_ground_truth(tmp_path, synth):
    root = write_scannetpp(tmp_path / "0a5c013435", synth)
    for path in (root, root / "iphone"):
        s = open_scene(path)
        assert type(s).__name__ == "ScanNetPPScene" and s.name == "0a5c013435" and not s.skipped
    assert np.allclose(s.pose(3), synth.pose(3))  # aligned_pose, not the raw ARKit pose
    check_tracks(s, synth)
    assert not np.allclose(open_scene(root, pose_key="pose").pose(3), synth.pose(3))


def test_low_resolution_depth_is_resampled_into_the_colour_camera(tmp_path, synth):
    K = synth.intrinsics(0)
    small = views(synth, scale_intrinsics(K, (96, 72), (32, 24)), 32, 24)
    s = open_scene(write_scannetpp(tmp_path / "s", synth, depth=small))
    d = s.depth(2)
    assert d.shape == (72, 96) and np.abs(d[1::3, 1::3] - synth.depth(2)[1::3, 1::3]).max() <= 0.0005 + 1e-6


def test_video_colour_and_depth_bin_stream(tmp_path, synth):
    root = write_scannetpp(tmp_path / "v", synth, colour="video", depth_store="bin", first=2)
    s = open_scene(root, depth_size=(96, 72))
    assert s.video_path.name == "rgb.mp4" and s.frame_numbers[0] == 2
    assert np.array_equal(s.depth(1), synth.depth(1))  # float32 metres, exact
    errs = [np.abs(s.image(4).astype(float) - synth.image(j)).mean() for j in range(len(synth))]
    assert int(np.argmin(errs)) == 4  # frame_000006 is video frame 6 = synthetic frame 4
    check_tracks(s, synth)


def test_lz4_depth_bin_stream(tmp_path, synth, monkeypatch):
    """The other depth.bin codec: lz4 blocks of uint16 millimetres (read as metres, to the mm)."""
    pytest.importorskip("lz4")
    root = write_scannetpp(tmp_path / "l", synth, depth_store="bin_lz4")
    s = open_scene(root, depth_size=(96, 72))
    for i in (0, 5):
        expected = np.round(synth.depth(i).astype(np.float64) * 1000) / 1000
        np.testing.assert_allclose(s.depth(i), expected, atol=1e-6)
    check_tracks(s, synth)
    monkeypatch.setitem(__import__("sys").modules, "lz4.block", None)  # lz4 not installed
    with pytest.raises(ValueError, match=r"lz4-compressed depth needs the lz4 package \(pip install lz4, or the scannetpp extra"):
        open_scene(root, depth_size=(96, 72)).depth(0)


def test_bad_input_is_named_or_skipped_and_counted(tmp_path, synth):
    root = write_scannetpp(tmp_path / "b", synth)
    meta_path = root / "iphone" / POSE_JSON
    meta = json.loads(meta_path.read_text())
    meta["frame_000001"]["aligned_pose"] = np.full((4, 4), -np.inf).tolist()
    del meta["frame_000002"]["aligned_pose"]
    meta["frame_000003"]["intrinsic"] = [1, 2]
    meta_path.write_text(json.dumps(meta))  # -inf is written as -Infinity, as Python and ScanNet++ read it
    (root / "iphone" / "depth" / "frame_000004.png").unlink()
    (root / "iphone" / "rgb" / "frame_000005.jpg").unlink()
    s = open_scene(root)
    assert s.valid_frames == [0, 6, 7]
    assert "NaN or inf" in s.skipped[1] and "no 'aligned_pose' for frame_000002" in s.skipped[2]
    assert "no valid 'intrinsic' for frame_000003" in s.skipped[3]
    assert "missing depth file" in s.skipped[4] and "missing colour file" in s.skipped[5]
    with pytest.raises(ValueError, match=r"pose_intrinsic_imu.json: no frame has 'nope' \(keys of frame_000000:"):
        open_scene(root, pose_key="nope")
    meta_path.write_text("[1, 2")
    with pytest.raises(ValueError, match=r"cannot read .*pose_intrinsic_imu.json"):
        open_scene(root)


def test_depth_bin_stream_bad_input(tmp_path, synth):
    root = write_scannetpp(tmp_path / "d", synth, depth_store="bin")
    data = (root / "iphone" / "depth.bin").read_bytes()
    (root / "iphone" / "depth.bin").write_bytes(data[:-10])  # truncated in the last record
    with pytest.raises(ValueError, match=r"depth.bin: not a per-frame depth stream \(record 7 at byte"):
        open_scene(root, depth_size=(96, 72))
    (root / "iphone" / "depth.bin").write_bytes(data)
    s = open_scene(root)  # the default 256x192 does not fit these 96x72 maps
    with pytest.raises(ValueError, match=r"depth.bin frame 0: the depth blob holds 6912 float32 values, expected 256x192"):
        s.depth(0)
    meta = json.loads((root / "iphone" / POSE_JSON).read_text())
    meta["frame_000099"] = meta["frame_000007"]
    (root / "iphone" / POSE_JSON).write_text(json.dumps(meta))
    (root / "iphone" / "rgb" / "frame_000099.jpg").write_bytes((root / "iphone" / "rgb" / "frame_000007.jpg").read_bytes())
    s = open_scene(root, depth_size=(96, 72))
    assert "frame 99 is past the end of" in s.skipped[8] and s.valid_frames == list(range(8))


def test_gasp_tracks_reads_a_scannetpp_capture(tmp_path, synth):
    root = write_scannetpp(tmp_path / "s", synth)
    gasp_tracks(root, tmp_path)