"""ARKitScenes raw: .traj angle-axis world-to-camera poses matched to frames by timestamp, .pincam
intrinsics; tracks equal the exact ground truth; mismatched timestamps are skipped and counted."""

import re

import numpy as np
import pytest

from formats import CONFIG, SEED, check_tracks, gasp_tracks, traj_line, write_arkitscenes
from gasp_plugin.data import open_scene
from gasp_plugin.data.readers.arkitscenes import match_timestamps
from gasp_plugin.data.synthetic import make_synthetic_scene


@pytest.fixture(scope="module")
def synth():
    return make_synthetic_scene(CONFIG, seed=SEED)


def test_raw_capture_tracks_equal_the_exact_ground_truth(tmp_path, synth):
    root = write_arkitscenes(tmp_path / "41069025", synth)
    s = open_scene(root)
    assert type(s).__name__ == "ARKitScenesScene" and s.name == "41069025" and not s.skipped
    assert np.allclose(s.timestamps, 6251.483 + 0.1 * np.arange(len(synth)))
    assert np.allclose(s.pose(4), synth.pose(4), atol=1e-7)  # the nearest line, not the decoys 1/60 s away
    assert np.allclose(s.intrinsics(2), synth.intrinsics(2)) and np.array_equal(s.image(1), synth.image(1))
    check_tracks(s, synth)


def test_3dod_frames_folder_is_found(tmp_path, synth):
    write_arkitscenes(tmp_path / "47333462" / "47333462_frames", synth, decoys=False)
    s = open_scene(tmp_path / "47333462")
    assert s.name == "47333462" and len(s) == len(synth)


def test_match_timestamps_takes_the_nearest_within_the_tolerance():
    idx, gap = match_timestamps(np.array([0.0, 1.004, 2.0, 5.0]), np.array([2.001, 1.0, 0.0, 3.0]), 0.005)
    assert idx.tolist() == [2, 1, 0, -1] and np.allclose(gap, [0, 0.004, 0.001, 2.0])


def test_mismatched_timestamps_skip_frames_with_the_gap(tmp_path, synth):
    root = write_arkitscenes(tmp_path / "v", synth, decoys=False)
    lines = (root / "lowres_wide.traj").read_text().splitlines()
    # frame 2's pose stamped 20 ms late (beyond 5 ms), frame 5's line missing, frame 6's .pincam missing
    stamp = float(lines[2].split()[0])
    lines[2] = traj_line(stamp + 0.02, synth.pose(2))
    del lines[5]
    (root / "lowres_wide.traj").write_text("\n".join(lines) + "\n")
    next((root / "lowres_wide_intrinsics").glob("*_6252.083.pincam")).unlink()
    next((root / "lowres_depth").glob("*_6252.183.png")).unlink()
    s = open_scene(root)
    assert s.valid_frames == [0, 1, 3, 4]
    assert re.search(r"no pose in .*lowres_wide.traj within 0.005 s of timestamp 6251.683 \(nearest 0.021 s away\)",
                     s.skipped[2])
    assert "no pose" in s.skipped[5] and "missing intrinsics" in s.skipped[6] and "missing depth file" in s.skipped[7]
    # a wider tolerance accepts frame 2's late pose
    assert 2 in open_scene(root, tolerance=0.03).valid_frames
    # a trajectory of another recording (no frame within the tolerance) is an error naming the file
    shifted = [" ".join([str(float(l.split()[0]) + 100.0), *l.split()[1:]]) for l in lines]
    (root / "lowres_wide.traj").write_text("\n".join(shifted) + "\n")
    with pytest.raises(ValueError, match=r"lowres_wide.traj: no colour frame has a pose within 0.005 s \(frames span "
                                         r"6251.483-6252.183 s, the trajectory 6351"):
        open_scene(root)
    (root / "lowres_wide.traj").write_text(lines[0] + "\n1 2 3\n")
    with pytest.raises(ValueError, match=r"lowres_wide.traj:2: expected 7 numbers"):
        open_scene(root)


def test_gasp_tracks_reads_an_arkitscenes_capture(tmp_path, synth):
    root = write_arkitscenes(tmp_path / "v", synth)
    gasp_tracks(root, tmp_path)