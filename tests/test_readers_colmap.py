"""COLMAP workspaces: binary and text models (world-to-camera, w-first quaternions, pixel centres at
+0.5), dense geometric depth maps or a depth folder; tracks equal the exact ground truth."""

import re

import numpy as np
import pytest

from formats import CONFIG, SEED, check_tracks, colmap_array, gasp_tracks, write_colmap
from gasp_plugin.data import open_scene
from gasp_plugin.data.readers.colmap import read_colmap_depth
from gasp_plugin.data.synthetic import make_synthetic_scene


@pytest.fixture(scope="module")
def synth():
    return make_synthetic_scene(CONFIG, seed=SEED)


def test_dense_workspace_binary_model_tracks_equal_the_exact_ground_truth(tmp_path, synth):
    root = write_colmap(tmp_path / "dense", synth, binary=True, dense=True)
    s = open_scene(root)
    assert type(s).__name__ == "ColmapScene" and len(s) == len(synth) and not s.skipped
    assert np.allclose(s.pose(6), synth.pose(6)) and np.allclose(s.intrinsics(0), synth.intrinsics(0))
    assert np.array_equal(s.depth(3), synth.depth(3))
    check_tracks(s, synth)


@pytest.mark.parametrize("model", ["PINHOLE", "SIMPLE_PINHOLE"])
def test_text_model_in_sparse_0_with_a_depth_folder(tmp_path, synth, model):
    root = write_colmap(tmp_path / "proj", synth, binary=False, dense=False, model=model, subdir="sparse/0")
    s = open_scene(root)
    assert s.model_dir.name == "0" and [p.name for p in s._images][:2] == ["IMG_0000.png", "IMG_0001.png"]
    check_tracks(s, synth)


def test_depth_map_files_round_trip_and_bad_ones_are_named(tmp_path):
    d = np.array([[1.0, -1.0, 0.0], [np.nan, 2.5, 3.0]], np.float32)
    (tmp_path / "a.bin").write_bytes(colmap_array(d))
    assert np.array_equal(read_colmap_depth(tmp_path / "a.bin"), [[1.0, 0, 0], [0, 2.5, 3.0]])
    (tmp_path / "b.bin").write_bytes(colmap_array(d)[:-4])
    with pytest.raises(ValueError, match=r"b.bin: header says 3x2x1, the file holds 5 values"):
        read_colmap_depth(tmp_path / "b.bin")
    (tmp_path / "c.bin").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match=r"c.bin: not a COLMAP array"):
        read_colmap_depth(tmp_path / "c.bin")


def test_bad_input_is_named_or_skipped_and_counted(tmp_path, synth):
    root = write_colmap(tmp_path / "ws", synth)
    (root / "images" / "IMG_0002.png").unlink()
    (root / "stereo" / "depth_maps" / "IMG_0004.png.geometric.bin").unlink()
    data = (root / "stereo" / "depth_maps" / "IMG_0005.png.geometric.bin").read_bytes()
    (root / "stereo" / "depth_maps" / "IMG_0005.png.geometric.bin").write_bytes(data[:100])
    s = open_scene(root)
    assert s.valid_frames == [0, 1, 3, 5, 6, 7]
    assert "missing colour file" in s.skipped[2] and "IMG_0004.png.geometric.bin" in s.skipped[4]
    with pytest.raises(ValueError, match=r"IMG_0005.png.geometric.bin: header says 96x72x1"):
        s.depth(5)
    assert 5 not in s.valid_frames
    # wrong-size dense depth (another aspect ratio) names the file
    (root / "stereo" / "depth_maps" / "IMG_0006.png.geometric.bin").write_bytes(colmap_array(np.ones((10, 50))))
    with pytest.raises(ValueError, match=r"IMG_0006.png.geometric.bin: depth map is 50x10 but the colour image is 96x72"):
        s.depth(6)
    images_bin = root / "sparse" / "images.bin"
    images_bin.write_bytes(images_bin.read_bytes()[:150])
    with pytest.raises(ValueError, match=re.escape(f"{images_bin}: truncated")):
        open_scene(root)


def test_distorted_cameras_and_missing_depth_are_refused(tmp_path, synth):
    root = write_colmap(tmp_path / "raw", synth, model="OPENCV", extra_params=(0.1, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"cameras.bin: camera 1 is OPENCV with distortion \[0.1, 0.0, 0.0, 0.0\]; "
                                         r".*colmap image_undistorter"):
        open_scene(root)
    root = write_colmap(tmp_path / "zero", synth, model="OPENCV", extra_params=(0.0, 0.0, 0.0, 0.0))
    assert np.allclose(open_scene(root).intrinsics(0), synth.intrinsics(0))  # zero distortion is pinhole
    root = write_colmap(tmp_path / "nodepth", synth, binary=False, dense=False)
    for f in (root / "depth").iterdir():
        f.unlink()
    (root / "depth").rmdir()
    with pytest.raises(ValueError, match=r"nodepth: no depth: expected a dense workspace"):
        open_scene(root)


def test_gasp_tracks_reads_a_colmap_workspace(tmp_path, synth):
    root = write_colmap(tmp_path / "ws", synth)
    gasp_tracks(root, tmp_path)