"""ARKitScenes raw captures (also the ``VIDEO_frames/`` folders of the 3DOD subset)::

    VIDEO/lowres_wide/VIDEO_T.png                 RGB (256x192), T the timestamp in seconds (%.3f)
    VIDEO/lowres_depth/VIDEO_T.png                16-bit depth in millimetres, same size, 0 = none
    VIDEO/lowres_wide_intrinsics/VIDEO_T.pincam   one line: width height fx fy cx cy
    VIDEO/lowres_wide.traj                        per line: timestamp, angle-axis rotation (3,
                                                  radians), translation (3, metres)

Conventions converted once, here: a ``.traj`` line is the **world-to-camera** transform
(``x_cam = R(angle-axis) x_world + t``, as ARKitScenes' own loader reads it), inverted with
:func:`~gasp_plugin.geometry.conventions.world_from_cam_from_extrinsics` after
:func:`~gasp_plugin.geometry.conventions.rotation_from_axis_angle`; camera axes and pixel centres are
then OpenCV's (ARKitScenes unprojects pixel ``(u, v)`` with the ``.pincam`` matrix as is).

Timestamps: each colour frame takes the trajectory line nearest in time if it lies within
``tolerance`` seconds (default 0.005 s, the tolerance of ARKitScenes' loader; the trajectory runs
at the camera's rate, so a frame's pose is stamped with its own timestamp up to rounding), else the
frame is skipped with the gap; a ``.pincam`` is matched the same way. Frames are ordered by time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gasp_plugin.data.readers.common import FileScene, read_number_rows
from gasp_plugin.geometry.conventions import rotation_from_axis_angle, world_from_cam_from_extrinsics

__all__ = ["ARKitScenesScene", "read_traj", "read_pincam", "match_timestamps"]

DEFAULT_TOLERANCE = 0.005


def _split_stamp(path: Path) -> tuple[str, float] | None:
    """``VIDEO_T.ext`` -> ``("VIDEO", T)``, or None when the name does not look like that."""
    video, sep, stamp = path.stem.rpartition("_")
    try:
        return (video, float(stamp)) if sep else None
    except ValueError:
        return None


def read_traj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(timestamps [n], world_from_cam [n, 4, 4])`` of a ``.traj`` file; ``ValueError`` naming
    the file and line for a line that is not 7 numbers."""
    rows = read_number_rows(path, 7, "timestamp, angle-axis, translation")
    if not len(rows):
        raise ValueError(f"{path}: no trajectory lines")
    return rows[:, 0], world_from_cam_from_extrinsics(rotation_from_axis_angle(rows[:, 1:4]), rows[:, 4:7])


def read_pincam(path: Path) -> np.ndarray:
    """``float64 [3, 3]`` from a ``.pincam`` line ``width height fx fy cx cy``."""
    try:
        vals = [float(v) for v in Path(path).read_text().split()]
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read intrinsics {path}: {exc}") from exc
    if len(vals) != 6:
        raise ValueError(f"{path}: expected 6 numbers (width height fx fy cx cy), got {len(vals)}")
    _, _, fx, fy, cx, cy = vals
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def match_timestamps(query: np.ndarray, reference: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """For each query time, the index of the nearest reference time and the gap to it:
    ``(index [q] int, gap [q] float)``; ``index`` is -1 where the gap exceeds ``tolerance``."""
    order = np.argsort(reference)
    ref = reference[order]
    pos = np.searchsorted(ref, query)  # ref[pos - 1] < query <= ref[pos]
    lo, hi = np.clip(pos - 1, 0, len(ref) - 1), np.clip(pos, 0, len(ref) - 1)
    nearest = np.where(np.abs(query - ref[lo]) <= np.abs(query - ref[hi]), lo, hi)
    gap = np.abs(query - ref[nearest])
    return np.where(gap <= tolerance, order[nearest], -1), gap


class ARKitScenesScene(FileScene):
    expects = ("lowres_wide/VIDEO_T.png, lowres_depth/VIDEO_T.png (uint16 mm), lowres_wide_intrinsics/*.pincam, "
               "lowres_wide.traj (timestamp, angle-axis, translation: world-to-camera)")

    @staticmethod
    def _root(path: Path) -> Path | None:
        path = Path(path)
        for cand in (path, path / f"{path.name}_frames"):
            if (cand / "lowres_wide").is_dir() and (cand / "lowres_wide.traj").is_file():
                return cand
        return None

    @classmethod
    def detect(cls, path: Path) -> bool:
        return cls._root(path) is not None

    def __init__(self, path: str | Path, tolerance: float = DEFAULT_TOLERANCE):
        path = Path(path)
        root = self._root(path)
        if root is None:
            raise ValueError(f"{path}: expected lowres_wide/ and lowres_wide.traj (ARKitScenes raw layout)")
        frames = sorted((s[1], p) for p in (root / "lowres_wide").glob("*.png") if (s := _split_stamp(p)))
        if not frames:
            raise ValueError(f"{root / 'lowres_wide'}: no VIDEO_TIMESTAMP.png colour frames found")
        times = np.array([t for t, _ in frames])
        images = [p for _, p in frames]
        traj = root / "lowres_wide.traj"
        traj_times, traj_poses = read_traj(traj)
        idx, gap = match_timestamps(times, traj_times, tolerance)
        if (idx < 0).all():
            raise ValueError(f"{traj}: no colour frame has a pose within {tolerance} s (frames span "
                             f"{times.min():.3f}-{times.max():.3f} s, the trajectory {traj_times.min():.3f}-"
                             f"{traj_times.max():.3f} s; nearest gap {gap.min():.3f} s)")
        poses = np.where((idx >= 0)[:, None, None], traj_poses[np.maximum(idx, 0)], np.nan)
        Ks, k_missing = self._intrinsics(root, times, tolerance)
        depths = [root / "lowres_depth" / p.name for p in images]
        super().__init__(path.name.removesuffix("_frames"), images, depths, Ks, poses)
        for i in map(int, np.flatnonzero(idx < 0)):
            if self.skipped.get(i, "pose ").startswith("pose "):  # say why the pose is missing
                self.skipped[i] = (f"no pose in {traj} within {tolerance} s of timestamp {times[i]:.3f} "
                                   f"(nearest {gap[i]:.3f} s away)")
        for i, reason in k_missing.items():
            self.skipped.setdefault(i, reason)
        self.timestamps = times

    @staticmethod
    def _intrinsics(root: Path, times: np.ndarray, tolerance: float) -> tuple[np.ndarray, dict[int, str]]:
        files = [(s[1], p) for p in (root / "lowres_wide_intrinsics").glob("*.pincam") if (s := _split_stamp(p))]
        Ks = np.full((len(times), 3, 3), np.nan)
        if not files:
            return Ks, {i: f"missing intrinsics: no .pincam in {root / 'lowres_wide_intrinsics'}" for i in range(len(times))}
        idx, _ = match_timestamps(times, np.array([t for t, _ in files]), tolerance)
        missing = {}
        for i, j in enumerate(idx):
            if j < 0:
                missing[i] = f"missing intrinsics: no .pincam within {tolerance} s of timestamp {times[i]:.3f}"
            else:
                Ks[i] = read_pincam(files[j][1])
        return Ks, missing
