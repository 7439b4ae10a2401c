"""ScanNet .sens (raw SensorData stream) read in place: a synthetic scene written as a real .sens
binary; tracks equal the exact ground truth; the offset index is cached; bad input is named."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from formats import CONFIG, SEED, check_tracks, gasp_tracks, jpeg_bytes, views, write_png_depth, write_sens
from gasp_plugin.data import open_scene
from gasp_plugin.data.readers import scannet_sens
from gasp_plugin.data.readers.common import scale_intrinsics
from gasp_plugin.data.synthetic import make_synthetic_scene


@pytest.fixture(scope="module")
def synth():
    return make_synthetic_scene(CONFIG, seed=SEED)


def test_sens_tracks_equal_the_exact_ground_truth_and_inf_poses_are_skipped(tmp_path, synth):
    poses = np.stack([synth.pose(i) for i in range(len(synth))])
    poses[2] = -np.inf  # ScanNet marks lost tracking this way
    path = write_sens(tmp_path / "scene0000_00" / "scene0000_00.sens", synth, poses=poses)
    s = open_scene(path.parent)
    assert type(s).__name__ == "ScanNetSensScene" and s.name == "scene0000_00" and len(s) == len(synth)
    assert 2 not in s.valid_frames and "pose contains NaN or inf" in s.skipped[2]
    jpeg = np.asarray(Image.open(io.BytesIO(jpeg_bytes(synth.image(1)))).convert("RGB"))
    assert s.image(1).shape == (72, 96, 3) and np.array_equal(s.image(1), jpeg)  # the frame's JPEG, decoded
    assert np.abs(s.depth(1) - synth.depth(1)).max() <= 0.0005 + 1e-6  # millimetres
    assert np.allclose(s.intrinsics(0), synth.intrinsics(0), atol=1e-4)
    assert s.timestamps(3) == (3000, 3007)
    check_tracks(s, synth)
    assert type(open_scene(path)).__name__ == "ScanNetSensScene"  # the file itself also opens


def test_sens_depth_of_another_size_is_resampled_as_the_export_reader_does(tmp_path, synth):
    # colour 3x the depth size: colour pixel 3k+1 sees exactly the centre of depth pixel k
    K_c = synth.intrinsics(0)
    K_d = scale_intrinsics(K_c, (96, 72), (32, 24))
    depth_cam = views(synth, K_d, 32, 24)
    path = write_sens(tmp_path / "scene0001_00" / "scene0001_00.sens", synth, depth=depth_cam)
    s = open_scene(path.parent)
    d = s.depth(4)
    assert d.shape == (72, 96)
    exact = synth.depth(4)
    assert np.abs(d[1::3, 1::3] - exact[1::3, 1::3]).max() <= 0.0005 + 1e-6
    assert (np.abs(d - exact) / exact < 0.03).mean() > 0.85  # nearest lookup differs only near edges
    # the same frames exported (color/, depth/, pose/, intrinsic/) read identically
    root = tmp_path / "export"
    for sub in ("color", "depth", "pose", "intrinsic"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        (root / "color" / f"{i}.jpg").write_bytes(jpeg_bytes(synth.image(i)))
        write_png_depth(root / "depth" / f"{i}.png", depth_cam.depth(i))
        np.savetxt(root / "pose" / f"{i}.txt", synth.pose(i).astype(np.float32))
    np.savetxt(root / "intrinsic" / "intrinsic_color.txt", K_c.astype(np.float32))
    np.savetxt(root / "intrinsic" / "intrinsic_depth.txt", K_d.astype(np.float32))
    export = open_scene(root)
    assert type(export).__name__ == "ScanNetScene"
    for i in range(3):
        assert np.array_equal(export.depth(i), s.depth(i)) and np.array_equal(export.image(i), s.image(i))


def test_sens_offset_index_is_built_once_and_cached(tmp_path, synth, monkeypatch):
    path = write_sens(tmp_path / "scene0002_00" / "scene0002_00.sens", synth, frames=4)
    s = open_scene(path.parent)
    assert s.index_path == path.with_name("scene0002_00.sens.gasp-index.npz") and s.index_path.is_file()

    def no_rebuild(p):
        raise AssertionError("the index was rebuilt")

    monkeypatch.setattr(scannet_sens, "build_sens_index", no_rebuild)
    again = open_scene(path.parent)
    assert np.array_equal(again.image(3), s.image(3)) and again.valid_frames == [0, 1, 2, 3]
    monkeypatch.undo()
    # data on a read-only file system: the index goes to the cache folder instead
    s.index_path.unlink()
    real_save = scannet_sens._save_index

    def read_only_beside_data(target, arrays):
        if target.parent == path.parent:
            raise PermissionError(f"read-only file system: {target}")
        real_save(target, arrays)

    monkeypatch.setattr(scannet_sens, "_save_index", read_only_beside_data)
    monkeypatch.setenv("GASP_CACHE_DIR", str(tmp_path / "cache"))
    ro = open_scene(path.parent)
    assert ro.index_path.parent == tmp_path / "cache" / "sens-index" and ro.index_path.is_file()
    assert not path.with_name("scene0002_00.sens.gasp-index.npz").exists()
    assert open_scene(path.parent, cache_dir=tmp_path / "elsewhere").index_path.parent == tmp_path / "elsewhere"
    # a changed file (e.g. a finished download) invalidates the cached index
    write_sens(path, synth, frames=6)
    assert len(open_scene(path.parent)) == 6


def test_sens_truncated_file_keeps_its_complete_frames(tmp_path, synth):
    path = write_sens(tmp_path / "scene0003_00" / "scene0003_00.sens", synth, frames=6)
    full = open_scene(path)
    data = path.read_bytes()
    cut = int(full._offsets[4]) + 10  # inside frame 4's colour blob
    path.write_bytes(data[:cut])
    s = open_scene(path)
    assert s.valid_frames == [0, 1, 2, 3] and len(s) == 6
    assert re.search(r"truncated file: frame 4 lies past the end of .*scene0003_00.sens .*4 of 6 frames", s.skipped[4])
    assert np.array_equal(s.image(3), full.image(3))
    with pytest.raises(ValueError, match="frame 5 is skipped: truncated file"):
        s.depth(5)
    path.write_bytes(data[:30])
    with pytest.raises(ValueError, match=re.escape(f"{path}: truncated .sens header")):
        open_scene(path)
    path.write_bytes(b"\x03\x00\x00\x00" + data[4:])
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a ScanNet SensorData file of version 4")):
        open_scene(path)


def test_sens_bad_frame_data_names_the_file_and_frame_then_skips_it(tmp_path, synth):
    path = write_sens(tmp_path / "scene0004_00" / "scene0004_00.sens", synth, frames=3)
    s = open_scene(path)
    data = bytearray(path.read_bytes())
    depth_at = int(s._offsets[1] + s._sizes[1, 0])
    data[depth_at:depth_at + 8] = b"garbage!"  # frame 1's zlib stream
    path.write_bytes(bytes(data))  # same size: the cached index still applies
    s = open_scene(path, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match=r"scene0004_00.sens: frame 1: cannot decompress the zlib depth map"):
        s.depth(1)
    assert 1 not in s.valid_frames and s.valid_frames == [0, 2]
    # depth of the wrong size: the header says 96x72, the frames hold 32x24
    small = views(synth, synth.intrinsics(0), 32, 24)
    bad = write_sens(tmp_path / "bad" / "bad.sens", synth, depth=small, frames=2)
    raw = bytearray(bad.read_bytes())
    header_sizes_at = 4 + 8 + len(b"StructureSensor") + 4 * 64 + 8 + 8  # depth width, height
    raw[header_sizes_at:header_sizes_at + 8] = np.array([96, 72], "<u4").tobytes()
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad.sens: frame 0: depth map has 768 values, the header says 96x72 = 6912"):
        open_scene(bad).depth(0)


def test_gasp_tracks_reads_a_sens_file(tmp_path, synth):
    path = write_sens(tmp_path / "scene0005_00" / "scene0005_00.sens", synth)
    gasp_tracks(path.parent, tmp_path)