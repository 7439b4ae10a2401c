"""Shared pieces of the file-based readers: image/depth/matrix loading, depth resampling, and
:class:`FileScene`, a scene backed by per-frame files.

Conventions: see :mod:`gasp_plugin.data.scene`. Shape notation: ``h, w`` image size,
``hd, wd`` depth-map size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gasp_plugin.data.scene import Scene
from gasp_plugin.geometry.camera import bad_pose_mask, pose_problem

__all__ = [
    "IMAGE_SUFFIXES",
    "read_rgb",
    "read_depth",
    "read_matrix",
    "read_pose_rows",
    "read_pose_files",
    "read_intrinsics",
    "scale_intrinsics",
    "depth_lookup_index",
    "resample_depth_nearest",
    "FileScene",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_rgb(path: Path) -> np.ndarray:
    """``uint8 [h, w, 3]`` RGB; ``ValueError`` naming the file if it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def read_depth(path: Path, scale: float, invalid: tuple[int, ...] = (0,)) -> np.ndarray:
    """``float32 [hd, wd]`` metres from an integer depth PNG (``value / scale``); values in
    ``invalid`` (holes, sentinels such as 65535) become 0."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            raw = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read depth map {path}: {exc}") from exc
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"depth map {path}: expected a single-channel integer PNG, got "
                         f"shape {raw.shape} dtype {raw.dtype}")
    depth = raw.astype(np.float32) / np.float32(scale)
    depth[np.isin(raw, invalid)] = 0.0
    return depth


def read_matrix(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A whitespace-separated matrix file; a 4x4 file is accepted for 3x3 (top-left block)."""
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read matrix {path}: {exc}") from exc
    if m.shape == (4, 4) and shape == (3, 3):
        m = m[:3, :3]
    if m.shape != shape:
        raise ValueError(f"{path}: expected a {shape[0]}x{shape[1]} matrix, got shape {m.shape}")
    return m


def read_pose_rows(path: Path) -> np.ndarray:
    """``float64 [f, 4, 4]`` from a file with one row-major 4x4 matrix (16 numbers) per line.

    Non-numeric entries such as ``nan`` / ``-inf`` are kept (the scene skips those frames).
    """
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not a list of numbers ({exc})") from exc
        if len(vals) != 16:
            raise ValueError(f"{path}:{n}: expected 16 numbers (a row-major 4x4 pose), got {len(vals)}")
        rows.append(vals)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4, 4)


def read_pose_files(files: list[Path]) -> tuple[np.ndarray, dict[int, str]]:
    """Poses from one 4x4 camera-to-world matrix file per frame.

    Args:
        files: ``f`` paths, one per frame.

    Returns:
        ``(poses [f, 4, 4] float64, missing {frame: reason})``: a frame whose file does not exist
        gets an all-NaN pose and the reason ``"missing pose file PATH"`` (the scene skips it).
        Non-numeric entries such as ``nan`` / ``-inf`` are kept (the scene skips those frames).

    Raises:
        ValueError naming the file when one cannot be read or is not a 4x4 matrix.
    """
    poses, missing = [], {}
    for i, f in enumerate(files):
        if Path(f).is_file():
            poses.append(read_matrix(Path(f), (4, 4)))
        else:
            poses.append(np.full((4, 4), np.nan))
            missing[i] = f"missing pose file {f}"
    return (np.stack(poses) if poses else np.zeros((0, 4, 4))), missing


def read_intrinsics(path: Path, *, optional: bool = False) -> np.ndarray | None:
    """``float64 [3, 3]`` intrinsics from a 3x3 matrix file (or the top-left block of a 4x4 one).

    A missing file gives ``None`` when ``optional``, else a ``ValueError`` naming it.
    """
    path = Path(path)
    if path.is_file():
        return read_matrix(path, (3, 3))
    if optional:
        return None
    raise ValueError(f"intrinsics file {path} is missing: this layout needs the 3x3 (or 4x4) camera matrix there")


def scale_intrinsics(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image resized from ``(w, h)`` to ``(w', h')`` (pixel centres at integers)."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0], out[0, 1], out[1, 1] = K[0, 0] * sx, K[0, 1] * sx, K[1, 1] * sy
    out[0, 2], out[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
    return out


def depth_lookup_index(K_depth: np.ndarray, K_image: np.ndarray, image_size: tuple[int, int],
                       depth_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For each image pixel, the flat index of the nearest depth pixel seen from the same camera
    centre and orientation: ``(index [h*w], inside [h*w] bool)``; ``image_size`` is ``(w, h)``."""
    w, h = image_size
    hd, wd = depth_shape
    M = K_depth @ np.linalg.inv(K_image)  # image pixel -> depth pixel (homogeneous, z = 1)
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    ud = np.floor(M[0, 0] * u + M[0, 1] * v + M[0, 2] + 0.5).astype(np.int64).reshape(-1)
    vd = np.floor(M[1, 0] * u + M[1, 1] * v + M[1, 2] + 0.5).astype(np.int64).reshape(-1)
    inside = (ud >= 0) & (ud < wd) & (vd >= 0) & (vd < hd)
    return np.where(inside, vd * wd + ud, 0), inside


def resample_depth_nearest(depth: np.ndarray, K_depth: np.ndarray, K_image: np.ndarray,
                           image_size: tuple[int, int], index=None) -> np.ndarray:
    """Depth ``[hd, wd]`` seen with ``K_depth`` -> ``[h, w]`` seen with ``K_image`` from the same
    camera centre and orientation, by nearest lookup (no blending across depth edges); pixels
    falling outside the depth map get 0. ``image_size`` is ``(w, h)``; ``index`` may pass a
    precomputed :func:`depth_lookup_index`."""
    w, h = image_size
    flat, inside = index if index is not None else depth_lookup_index(K_depth, K_image, image_size, depth.shape)
    return np.where(inside, depth.reshape(-1)[flat], 0).astype(np.float32).reshape(h, w)


class FileScene(Scene):
    """A scene whose frames are files: colour images, integer depth PNGs, per-frame intrinsics
    and poses. Readers build one of these after parsing their layout.

    Args:
        name: scene name.
        image_paths / depth_paths: one per frame (``None`` where the file is missing).
        intrinsics: ``[f, 3, 3]`` or ``[3, 3]`` for the colour images.
        poses: ``[f, 4, 4]`` camera-to-world.
        depth_scale: depth PNG units per metre (1000 for millimetres).
        depth_invalid: raw depth values meaning "no measurement".
        depth_intrinsics: ``[3, 3]`` of the depth maps when they differ from the colour camera's
            (ScanNet); by default a depth map of another size is taken as a resized colour image.
    """

    def __init__(self, name, image_paths, depth_paths, intrinsics, poses, depth_scale=1000.0,
                 depth_invalid=(0,), depth_intrinsics=None):
        n = len(image_paths)
        if len(depth_paths) != n or len(poses) != n:
            raise ValueError(f"scene {name!r}: {n} images, {len(depth_paths)} depth maps and "
                             f"{len(poses)} poses: the counts must match")
        self.name = name
        self._images = list(image_paths)
        self._depths = list(depth_paths)
        K = np.asarray(intrinsics, dtype=np.float64)
        self._K = np.broadcast_to(K, (n, 3, 3)) if K.shape == (3, 3) else K
        self._poses = np.asarray(poses, dtype=np.float64)
        self._scale, self._invalid = float(depth_scale), tuple(depth_invalid)
        self._K_depth = None if depth_intrinsics is None else np.asarray(depth_intrinsics, np.float64)
        self._index_cache: dict = {}
        self._sizes: dict[int, tuple[int, int]] = {}
        bad_pose = bad_pose_mask(torch.from_numpy(self._poses)).tolist() if n else []  # all frames at once
        for i in range(n):
            reason = self._frame_problem(i, bad_pose[i])
            if reason:
                self.skipped[i] = reason

    def _frame_problem(self, i: int, bad_pose: bool) -> str | None:
        if self._images[i] is None or not Path(self._images[i]).is_file():
            return f"missing colour file {self._images[i]}"
        if self._depths[i] is None or not Path(self._depths[i]).is_file():
            return f"missing depth file {self._depths[i]}"
        problem = pose_problem(torch.from_numpy(self._poses[i])) if bad_pose else None
        return f"pose {problem}" if problem else None

    def __len__(self) -> int:
        return len(self._images)

    def _read_or_skip(self, i: int, fn):
        try:
            return fn()
        except ValueError as exc:
            self.skipped[i] = str(exc)  # never served again; the sampler counts it
            raise

    def image(self, i: int) -> np.ndarray:
        i = self.check_frame(i)
        return self._read_or_skip(i, lambda: read_rgb(Path(self._images[i])))

    def depth(self, i: int) -> np.ndarray:
        i = self.check_frame(i)
        d = self._read_or_skip(i, lambda: read_depth(Path(self._depths[i]), self._scale, self._invalid))
        size = self.image_size(i)
        if d.shape == (size[1], size[0]) and self._K_depth is None:
            return d
        key = (self._K[i].tobytes(), size, d.shape)
        if key not in self._index_cache:  # one lookup table per camera setup, not per frame
            K_depth = self._K_depth
            if K_depth is None:
                K_depth = scale_intrinsics(self._K[i], size, (d.shape[1], d.shape[0]))
            self._index_cache[key] = depth_lookup_index(K_depth, self._K[i], size, d.shape)
        return resample_depth_nearest(d, None, None, size, index=self._index_cache[key])

    def image_size(self, i: int) -> tuple[int, int]:
        """``(w, h)`` of frame ``i``'s colour image (read from the file header once)."""
        from PIL import Image

        if i not in self._sizes:
            try:
                with Image.open(self._images[i]) as im:
                    self._sizes[i] = im.size
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read image {self._images[i]}: {exc}") from exc
        return self._sizes[i]

    def intrinsics(self, i: int) -> np.ndarray:
        return self._K[self.check_frame(i)].copy()

    def pose(self, i: int) -> np.ndarray:
        return self._poses[self.check_frame(i)].copy()
