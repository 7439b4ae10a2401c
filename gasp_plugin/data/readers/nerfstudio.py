"""nerfstudio ``transforms.json`` scenes, as DL3DV ships them::

    SCENE/transforms.json          intrinsics (fl_x, fl_y, cx, cy, w, h; global or per frame) and
                                   frames [{file_path, transform_matrix, [depth_file_path]}]
    SCENE/images/, images_2/, images_4/, images_8/   full-size and down-sampled colour frames
    SCENE/depth/STEM.png | STEM.npy   depth (not in DL3DV: supplied by the user, see below)

Conventions converted once, here: ``transform_matrix`` is camera-to-world with **OpenGL camera
axes** (x right, y up, z backward) -> :func:`~gasp_plugin.geometry.conventions.opencv_from_opengl`;
``cx, cy`` put pixel centres at +0.5 (nerfstudio's rays go through ``u + 0.5``) ->
:func:`~gasp_plugin.geometry.conventions.intrinsics_from_corner_origin`; intrinsics are for the
full ``w x h`` and are scaled to the folder actually read (``images_4/`` holds 1/4-size frames of
the same names, as nerfstudio's ``downscale_factor`` reads them). Distortion coefficients (k1, k2,
p1, p2) are ignored with a warning; fisheye and equirectangular cameras are refused.

Depth: DL3DV ships none. It comes from ``depth_file_path`` per frame when the file has them
(and no ``depth_dir`` is given), else from ``depth_dir`` (default ``SCENE/depth``; a relative path is tried from the working
folder, then from the scene): ``STEM.png`` or ``STEM.npy`` (float metres), ``STEM`` the colour
file's name without suffix. PNG depth is 16-bit with ``depth_scale`` units per metre (default
``1 / depth_unit_scale_factor`` of the file, nerfstudio's metres per unit, else 1000).
Depth maps may have another size than the colour frames if the aspect ratio is the same.
Frames are ordered by the numbers in their file names.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from gasp_plugin.data.readers.common import IMAGE_SUFFIXES, FileScene, depth_files, depth_folder, scale_intrinsics
from gasp_plugin.geometry.conventions import intrinsics_from_corner_origin, opencv_from_opengl

__all__ = ["NerfstudioScene"]

log = logging.getLogger(__name__)

REFUSED_MODELS = ("OPENCV_FISHEYE", "EQUIRECTANGULAR", "FISHEYE624")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def natural_key(name: str) -> tuple:
    """Sort key putting ``frame_2`` before ``frame_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _load_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise ValueError(f"{path}: expected an object with a non-empty 'frames' list (nerfstudio transforms.json)")
    return meta


def _camera(frame: dict, meta: dict, path: Path, k: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Intrinsics (file convention) and ``(w, h)`` of frame ``k``: per-frame keys override global ones."""
    def get(key):
        value = frame.get(key, meta.get(key))
        if value is None:
            raise ValueError(f"{path}: frame {k} ({frame.get('file_path')}): no '{key}' (per frame or global)")
        return float(value)

    fx, fy, cx, cy, w, h = (get(key) for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"))
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), (int(w), int(h))


def _pose(frame: dict) -> np.ndarray:
    """OpenGL camera-to-world of a frame; NaN (skipped by the scene) when absent or malformed."""
    try:
        T = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        return np.full((4, 4), np.nan)
    if T.shape == (3, 4):
        T = np.vstack([T, [0, 0, 0, 1]])
    return T if T.shape == (4, 4) else np.full((4, 4), np.nan)


class NerfstudioScene(FileScene):
    expects = ("transforms.json (nerfstudio / DL3DV, OpenGL camera-to-world), images[_N]/ frames, "
               "depth/STEM.png|npy (or depth_file_path per frame)")

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (Path(path) / "transforms.json").is_file()

    def __init__(self, path: str | Path, depth_dir: str | Path | None = None, depth_scale: float | None = None,
                 downscale: int | None = None):
        path = Path(path)
        meta_path = path / "transforms.json"
        meta = _load_json(meta_path)
        model = str(meta.get("camera_model", "OPENCV"))
        if model in REFUSED_MODELS:
            raise ValueError(f"{meta_path}: camera_model {model} is not a pinhole camera; undistort the frames first")
        if any(abs(float(meta.get(k, 0) or 0)) > 0 for k in DISTORTION_KEYS):
            log.warning("%s: distortion coefficients are ignored (pinhole model used)", meta_path)
        frames = sorted(meta["frames"], key=lambda f: natural_key(str(f.get("file_path", ""))))
        images_dir = self._images_dir(path, frames, downscale, meta_path)
        names = [Path(str(f.get("file_path", ""))).name for f in frames]
        images = [images_dir / n for n in names]
        scale_xy = self._downscale_ratio(images, frames, meta, meta_path)
        Ks = []
        for k, f in enumerate(frames):
            K, (w, h) = _camera(f, meta, meta_path, k)
            size = (round(w * scale_xy[0]), round(h * scale_xy[1]))
            Ks.append(scale_intrinsics(intrinsics_from_corner_origin(K), (w, h), size))
        poses = opencv_from_opengl(np.stack([_pose(f) for f in frames]))
        depths = self._depth_files(path, frames, names, depth_dir)
        if depth_scale is None:  # nerfstudio: metres = value * depth_unit_scale_factor
            depth_scale = 1.0 / float(meta.get("depth_unit_scale_factor", 1e-3))
        super().__init__(path.name, images, depths, np.stack(Ks), poses, depth_scale=depth_scale)
        self.images_dir = images_dir

    @staticmethod
    def _images_dir(path: Path, frames: list, downscale: int | None, meta_path: Path) -> Path:
        listed = Path(str(frames[0].get("file_path", "images/x"))).parent.name or "images"
        if downscale is not None:
            want = [listed if downscale == 1 else f"{listed}_{downscale}"]
        else:
            want = [listed] + [f"{listed}_{k}" for k in (2, 4, 8)]
        for name in want:
            if (path / name).is_dir():
                return path / name
        raise ValueError(f"{meta_path}: no colour folder; looked for {', '.join(str(path / w) for w in want)}")

    @staticmethod
    def _downscale_ratio(images: list[Path], frames: list, meta: dict, meta_path: Path) -> tuple[float, float]:
        """Actual image size / the size the intrinsics are for, from the first readable frame."""
        from PIL import Image

        for k, p in enumerate(images):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    with Image.open(p) as im:
                        W, H = im.size
                except OSError:
                    continue
                _, (w, h) = _camera(frames[k], meta, meta_path, k)
                return W / w, H / h
        raise ValueError(f"{meta_path}: none of the {len(images)} colour frames listed exists or is readable "
                         f"(e.g. {images[0]})")

    @staticmethod
    def _depth_files(path: Path, frames: list, names: list[str], depth_dir) -> list[Path]:
        if depth_dir is None and all("depth_file_path" in f for f in frames):
            return [path / str(f["depth_file_path"]) for f in frames]
        folder = depth_folder(path, depth_dir)
        if not folder.is_dir():
            raise ValueError(f"{path}: no depth for this scene (DL3DV ships none): put depth maps in {folder} "
                             "(STEM.png, 16-bit, depth_scale units per metre; or STEM.npy, float metres), "
                             "or pass depth_dir=")
        return depth_files(folder, [Path(n).stem for n in names])
