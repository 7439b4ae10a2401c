"""Every scene reader on layouts written here from synthetic scenes (ScanNet export, 7-Scenes,
colour from an mp4 via decord, hololens), plus the bad-input cases."""

import pickle
import re

import numpy as np
import pytest
from PIL import Image

from gasp_plugin.data import known_layouts, open_scene, register_reader
from gasp_plugin.data.readers.sevenscenes import SEVEN_SCENES_INTRINSICS
from gasp_plugin.data.synthetic import SyntheticScene, SyntheticSceneConfig, make_synthetic_scene, write_scene

CFG = SyntheticSceneConfig(height=48, width=64, num_frames=6)


@pytest.fixture(scope="module")
def synth():
    return make_synthetic_scene(CFG, seed=11)


def write_depth_mm(path, depth, invalid_value=0):
    mm = np.round(depth.astype(np.float64) * 1000)
    mm[depth <= 0] = invalid_value
    Image.fromarray(mm.astype(np.uint16)).save(path)


def write_mat(path, m):
    np.savetxt(path, m)


# --- hololens -----------------------------------------------------------------------------------

def test_hololens_sample_reads_in_scene_conventions(hololens_scene):
    s = hololens_scene
    assert len(s) == 24 and s.valid_frames == list(range(24)) and not s.skipped
    img, d = s.image(3), s.depth(3)
    assert img.shape == (360, 540, 3) and img.dtype == np.uint8
    assert d.shape == (360, 540) and d.dtype == np.float32
    assert 0.2 < np.median(d[d > 0]) < 10 and (d == 0).mean() > 0.1  # metres, holes kept as 0
    assert s.intrinsics(0).shape == (3, 3) and np.allclose(s.pose(0)[3], [0, 0, 0, 1])


def make_hololens(tmp_path, synth):
    return write_scene(synth, tmp_path / "holo")


def test_hololens_bad_frames_are_skipped_with_reasons(tmp_path, synth):
    path = make_hololens(tmp_path, synth)
    rows = (path / "poses.txt").read_text().splitlines()
    rows[2] = " ".join(["nan"] * 16)
    rows[4] = " ".join(str(v) for v in np.diag([2.0, 2.0, 2.0, 1.0]).reshape(-1))  # scaled, not rigid
    (path / "poses.txt").write_text("\n".join(rows) + "\n")
    (path / "depth" / "00003.png").unlink()
    s = open_scene(path)
    assert s.valid_frames == [0, 1, 5]
    assert "NaN" in s.skipped[2] and "orthonormal" in s.skipped[4] and "00003.png" in s.skipped[3]
    with pytest.raises(ValueError, match="frame 2 is skipped: pose contains NaN"):
        s.depth(2)
    with pytest.raises(IndexError, match=r"frame 6 out of range \[0, 6\)"):
        s.image(6)
    # a corrupt file is reported by name when read, then skipped
    (path / "images" / "00001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="00001.png"):
        s.image(1)
    assert 1 in s.skipped and s.valid_frames == [0, 5]


def test_hololens_mismatched_pose_count_names_the_file(tmp_path, synth):
    path = make_hololens(tmp_path, synth)
    rows = (path / "poses.txt").read_text().splitlines()
    (path / "poses.txt").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"poses.txt has 5 poses but .*images has 6 images"):
        open_scene(path)
    (path / "poses.txt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"poses.txt:1: expected 16 numbers"):
        open_scene(path)


def test_unknown_layout_and_registry(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unknown scene layout") as err:
        open_scene(tmp_path / "empty")
    for name in ("hololens", "scannet", "7scenes", "video"):
        assert name in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_scene(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"unknown scene layout 'nope'; known layouts: \["):
        open_scene(tmp_path / "empty", layout="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_reader("hololens", "x.y:Z")
    custom: dict = {}
    register_reader("mine", "gasp_plugin.data.readers.hololens:HololensScene", readers=custom)
    assert known_layouts(custom)["mine"].startswith("images/")


# --- ScanNet ------------------------------------------------------------------------------------

def test_scannet_export_resamples_depth_into_the_colour_camera(tmp_path, synth):
    # colour at 2x the depth resolution, and a depth camera whose principal point is off-centre
    K_c = np.array([[80.0, 0, 63.5], [0, 80, 47.5], [0, 0, 1]])
    K_d = np.array([[40.0, 0, 33.0], [0, 40, 22.0], [0, 0, 1]])
    poses = np.stack([synth.pose(i) for i in range(4)])
    colour = SyntheticScene(synth.room, poses, K_c, 96, 128)
    depth = SyntheticScene(synth.room, poses, K_d, 48, 64)
    root = tmp_path / "scene0000_00"
    for sub in ("color", "depth", "pose", "intrinsic"):
        (root / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(colour.image(i)).save(root / "color" / f"{i}.jpg", quality=95)
        write_depth_mm(root / "depth" / f"{i}.png", depth.depth(i))
        write_mat(root / "pose" / f"{i}.txt", poses[i] if i != 2 else np.full((4, 4), -np.inf))
    K4 = np.eye(4)
    K4[:3, :3] = K_c
    write_mat(root / "intrinsic" / "intrinsic_color.txt", K4)
    K4[:3, :3] = K_d
    write_mat(root / "intrinsic" / "intrinsic_depth.txt", K4)
    s = open_scene(root)
    assert type(s).__name__ == "ScanNetScene" and s.valid_frames == [0, 1, 3] and "inf" in s.skipped[2]
    assert s.image(1).shape == (96, 128, 3) and np.allclose(s.intrinsics(1), K_c)
    d, exact = s.depth(1), colour.depth(1)
    assert d.shape == exact.shape
    rel = np.abs(d - exact) / exact
    assert (rel < 0.03).mean() > 0.9  # nearest resampling differs only near depth edges
    assert np.abs(s.image(3).astype(float) - colour.image(3)).mean() < 6  # JPEG


# --- 7-Scenes -----------------------------------------------------------------------------------

def write_seven_scenes(root, synth, n=4, with_k=True):
    root.mkdir(parents=True)
    for i in range(n):
        stem = root / f"frame-{i:06d}"
        Image.fromarray(synth.image(i)).save(f"{stem}.color.png")
        write_depth_mm(f"{stem}.depth.png", synth.depth(i))
        write_mat(f"{stem}.pose.txt", synth.pose(i))
    if with_k:
        write_mat(root / "K.txt", synth.intrinsics(0))
    return root


def test_seven_scenes_sentinel_is_invalid_and_intrinsics_default(tmp_path, synth):
    root = write_seven_scenes(tmp_path / "seq-01", synth)
    raw = np.asarray(Image.open(root / "frame-000001.depth.png")).copy()
    raw[:5, :7] = 65535
    Image.fromarray(raw).save(root / "frame-000001.depth.png")
    (root / "frame-000003.pose.txt").unlink()
    s = open_scene(root)
    assert type(s).__name__ == "SevenScenesScene" and s.valid_frames == [0, 1, 2]
    assert "frame-000003.pose.txt" in s.skipped[3]
    d = s.depth(1)
    assert (d[:5, :7] == 0).all()
    assert np.abs(d[5:] - synth.depth(1)[5:]).max() <= 0.0005 + 1e-6
    assert np.allclose(s.intrinsics(0), synth.intrinsics(0)) and np.allclose(s.pose(2), synth.pose(2))
    (root / "K.txt").unlink()
    assert np.allclose(open_scene(root).intrinsics(0), SEVEN_SCENES_INTRINSICS)


# --- video (decord) -----------------------------------------------------------------------------

def write_video_scene(root, synth, n=None):
    import av

    n = n or len(synth)
    (root / "depth").mkdir(parents=True)
    with av.open(str(root / "colour.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = synth.width, synth.height, "yuv420p"
        stream.options = {"crf": "10"}
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(synth.image(i), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    for i in range(len(synth)):
        write_depth_mm(root / "depth" / f"{i:05d}.png", synth.depth(i))
    write_mat(root / "K.txt", synth.intrinsics(0))
    np.savetxt(root / "poses.txt", np.stack([synth.pose(i).reshape(-1) for i in range(len(synth))]))
    return root


def test_video_scene_decodes_frames_by_index(tmp_path, synth):
    root = write_video_scene(tmp_path / "vid", synth)
    s = open_scene(root)
    assert type(s).__name__ == "VideoScene" and len(s) == len(synth)
    batch = s.images([4, 1, 2])
    assert batch.shape == (3, 48, 64, 3)
    for row, i in enumerate([4, 1, 2]):
        errs = [np.abs(batch[row].astype(float) - synth.image(j)).mean() for j in range(len(synth))]
        assert int(np.argmin(errs)) == i and errs[i] < 0.5 * sorted(errs)[1]  # yuv420 + crf loss
    assert np.abs(s.depth(3) - synth.depth(3)).max() <= 0.0005 + 1e-6
    clone = pickle.loads(pickle.dumps(s))  # e.g. into a DataLoader worker: the decoder reopens
    assert np.array_equal(clone.image(2), s.image(2))


def test_video_frame_count_mismatch_is_an_error(tmp_path, synth):
    root = write_video_scene(tmp_path / "vid", synth, n=len(synth) - 2)
    with pytest.raises(ValueError, match=r"colour.mp4 has 4 frames, depth/ has 6 maps and poses.txt has 6"):
        open_scene(root)


# --- shared pose / intrinsics files -------------------------------------------------------------


def test_read_pose_files_keeps_nan_and_names_bad_files(tmp_path):
    from gasp_plugin.data.readers.common import read_pose_files

    good, nan = tmp_path / "0.txt", tmp_path / "1.txt"
    write_mat(good, np.eye(4))
    nan.write_text("\n".join(" ".join(["nan"] * 4) for _ in range(4)))
    poses, missing = read_pose_files([good, nan, tmp_path / "2.txt"])
    assert poses.shape == (3, 4, 4) and poses.dtype == np.float64
    assert np.array_equal(poses[0], np.eye(4))
    assert np.isnan(poses[1]).all() and np.isnan(poses[2]).all()  # the scene skips these frames
    assert missing == {2: f"missing pose file {tmp_path / '2.txt'}"}
    wrong = tmp_path / "3.txt"
    write_mat(wrong, np.eye(3))
    with pytest.raises(ValueError, match=re.escape(f"{wrong}: expected a 4x4 matrix, got shape (3, 3)")):
        read_pose_files([good, wrong])
    text = tmp_path / "4.txt"
    text.write_text("1 0 0 0\n0 one 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(ValueError, match=re.escape(f"cannot read matrix {text}")):
        read_pose_files([text])


def test_read_intrinsics_takes_a_4x4_block_and_names_a_missing_file(tmp_path):
    from gasp_plugin.data.readers.common import read_intrinsics

    K4 = np.eye(4)
    K4[:3, :3] = [[500.0, 0, 32], [0, 510, 24], [0, 0, 1]]
    write_mat(tmp_path / "K.txt", K4)
    assert np.array_equal(read_intrinsics(tmp_path / "K.txt"), K4[:3, :3])
    assert read_intrinsics(tmp_path / "none.txt", optional=True) is None
    with pytest.raises(ValueError, match=re.escape(f"intrinsics file {tmp_path / 'none.txt'} is missing")):
        read_intrinsics(tmp_path / "none.txt")
