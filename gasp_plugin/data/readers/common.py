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
    "read_number_rows",
    "read_pose_rows",
    "read_pose_files",
    "read_intrinsics",
    "scale_intrinsics",
    "depth_lookup_index",
    "resample_depth_nearest",
    "read_depth_npy",
    "read_depth_file",
    "DepthResampler",
    "pose_reasons",
    "depth_folder",
    "depth_files",
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


def read_depth_npy(path: Path) -> np.ndarray:
    """``float32 [hd, wd]`` metres from a float ``.npy`` array; non-finite and negative values
    become 0 (invalid)."""
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read depth map {path}: {exc}") from exc
    if raw.ndim == 3 and 1 in (raw.shape[0], raw.shape[-1]):
        raw = raw.reshape(raw.shape[1:] if raw.shape[0] == 1 else raw.shape[:2])
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.floating):
        raise ValueError(f"depth map {path}: expected a 2-D float array in metres, got shape {raw.shape} "
                         f"dtype {raw.dtype}")
    depth = raw.astype(np.float32)
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth


def read_depth_file(path: Path, scale: float, invalid: tuple[int, ...] = (0,)) -> np.ndarray:
    """``float32 [hd, wd]`` metres from an integer PNG (``value / scale``) or a float ``.npy``
    (metres), chosen by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return read_depth_npy(path)
    if suffix == ".png":
        return read_depth(path, scale, invalid)
    raise ValueError(f"depth map {path}: unsupported file type {suffix!r} (expected .png or .npy)")


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


def read_number_rows(path: Path, count: int, what: str) -> np.ndarray:
    """``float64 [n, count]`` from a text file with ``count`` numbers per non-empty line;
    ``ValueError`` naming the file and line otherwise (``what`` says what a line holds).
    Entries such as ``nan`` / ``-inf`` are kept."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not a list of numbers ({exc})") from exc
        if len(vals) != count:
            raise ValueError(f"{path}:{n}: expected {count} numbers ({what}), got {len(vals)}")
        rows.append(vals)
    return np.asarray(rows, dtype=np.float64).reshape(-1, count)


def read_pose_rows(path: Path) -> np.ndarray:
    """``float64 [f, 4, 4]`` from a file with one row-major 4x4 matrix (16 numbers) per line.

    Non-numeric entries such as ``nan`` / ``-inf`` are kept (the scene skips those frames).
    """
    return read_number_rows(path, 16, "a row-major 4x4 pose").reshape(-1, 4, 4)


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


class DepthResampler:
    """Brings depth maps into the colour camera, keeping one lookup table per camera setup.

    A depth map of the image's size without depth intrinsics is returned as it is. With
    ``K_depth`` (a separate depth camera at the same centre and orientation, e.g. ScanNet) it is
    resampled by nearest lookup (:func:`resample_depth_nearest`); without, a depth map of another
    size is taken as a resized colour image (intrinsics scaled), and must then have the image's
    aspect ratio (within a pixel), else a ``ValueError`` names ``source``.
    """

    def __init__(self):
        self._cache: dict = {}

    def __call__(self, depth: np.ndarray, K_image: np.ndarray, image_size: tuple[int, int],
                 K_depth: np.ndarray | None = None, source: str = "depth map") -> np.ndarray:
        w, h = image_size
        hd, wd = depth.shape
        if (hd, wd) == (h, w) and K_depth is None:
            return depth
        if K_depth is None and (abs(hd * w / wd - h) > 1 or abs(wd * h / hd - w) > 1):
            raise ValueError(f"{source}: depth map is {wd}x{hd} but the colour image is {w}x{h}; the "
                             "aspect ratios differ, so the depth cannot be a resized image (give the "
                             "depth camera's intrinsics, or depth of the image's size)")
        key = (np.asarray(K_image).tobytes(), None if K_depth is None else np.asarray(K_depth).tobytes(),
               tuple(image_size), depth.shape)
        if key not in self._cache:
            Kd = K_depth if K_depth is not None else scale_intrinsics(K_image, image_size, (wd, hd))
            self._cache[key] = depth_lookup_index(Kd, K_image, image_size, depth.shape)
        return resample_depth_nearest(depth, None, None, image_size, index=self._cache[key])


def depth_folder(scene: Path, depth_dir: str | Path | None, default: str = "depth") -> Path:
    """The folder of user-supplied depth maps: ``depth_dir`` (a relative path is tried from the
    working folder, then from ``scene``) or ``scene / default``. It may not exist."""
    if depth_dir is None:
        return Path(scene) / default
    folder = Path(depth_dir)
    return folder if folder.is_absolute() or folder.exists() else Path(scene) / folder


def depth_files(folder: Path, stems: list[str]) -> list[Path]:
    """Per frame ``folder/STEM.npy`` if it exists, else ``folder/STEM.png`` (which may not)."""
    out = []
    for stem in stems:
        npy = Path(folder) / f"{stem}.npy"
        out.append(npy if npy.is_file() else Path(folder) / f"{stem}.png")
    return out


def pose_reasons(poses: np.ndarray) -> dict[int, str]:
    """``{frame: "pose <problem>"}`` for the poses of ``[f, 4, 4]`` that are not finite rigid
    transforms (checked in one batch; the message only for the bad ones)."""
    if not len(poses):
        return {}
    T = torch.from_numpy(np.asarray(poses, dtype=np.float64))
    bad = bad_pose_mask(T).tolist()
    return {i: f"pose {pose_problem(T[i])}" for i, b in enumerate(bad) if b}


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
        depth_reader: ``path -> float32 [hd, wd]`` metres; by default :func:`read_depth_file`
            (integer PNG with ``depth_scale``, or float ``.npy``).
    """

    def __init__(self, name, image_paths, depth_paths, intrinsics, poses, depth_scale=1000.0,
                 depth_invalid=(0,), depth_intrinsics=None, depth_reader=None):
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
        self._depth_reader = depth_reader
        self._resample = DepthResampler()
        self._sizes: dict[int, tuple[int, int]] = {}
        bad_pose = pose_reasons(self._poses)  # all frames at once
        for i in range(n):
            reason = self._frame_problem(i) or bad_pose.get(i)
            if reason:
                self.skipped[i] = reason

    def _frame_problem(self, i: int) -> str | None:
        if self._images[i] is None or not Path(self._images[i]).is_file():
            return f"missing colour file {self._images[i]}"
        if self._depths[i] is None or not Path(self._depths[i]).is_file():
            return f"missing depth file {self._depths[i]}"
        return None

    def __len__(self) -> int:
        return len(self._images)

    def image(self, i: int) -> np.ndarray:
        i = self.check_frame(i)
        return self.read_or_skip(i, lambda: read_rgb(Path(self._images[i])))

    def depth(self, i: int) -> np.ndarray:
        i = self.check_frame(i)
        path = Path(self._depths[i])
        if self._depth_reader is not None:
            read = lambda: self._depth_reader(path)  # noqa: E731
        else:
            read = lambda: read_depth_file(path, self._scale, self._invalid)  # noqa: E731
        d = self.read_or_skip(i, read)
        size = self.image_size(i)
        return self.read_or_skip(i, lambda: self._resample(d, self._K[i], size, self._K_depth, source=str(path)))

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
