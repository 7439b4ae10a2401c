"""COLMAP workspaces: a sparse model (binary or text) with depth from a dense workspace or a folder::

    WS/images/NAME                          the (undistorted) colour images, NAME as in the model
    WS/sparse/ or WS/sparse/0/              cameras.bin|txt, images.bin|txt (points3D unused)
    WS/stereo/depth_maps/NAME.geometric.bin dense depth (``colmap patch_match_stereo``), or
    WS/depth/STEM.png|npy                   a depth folder (16-bit PNG mm / float metres), or ``depth_dir=``

Conventions converted once, here: ``images`` hold **world-to-camera** poses, quaternion
``QW QX QY QZ`` (w first) and translation ``T`` (``x_cam = R x_world + T``) ->
:func:`~gasp_plugin.geometry.conventions.rotation_from_quaternion` and
:func:`~gasp_plugin.geometry.conventions.world_from_cam_from_extrinsics`; camera axes are OpenCV's;
COLMAP puts pixel centres at +0.5 -> :func:`~gasp_plugin.geometry.conventions.intrinsics_from_corner_origin`.
Cameras must be pinhole (``SIMPLE_PINHOLE``, ``PINHOLE``, or a distortion model whose coefficients
are all 0): undistort first (``colmap image_undistorter``, which writes the dense workspace).

COLMAP's depth-map files (``.bin`` in ``stereo/depth_maps``): an ASCII header ``width&height&channels&``
then ``float32`` values, row-major ``[height, width]``; z depth in the model's units, ``<= 0`` = none.
Frames are the model's images, ordered by name (numbers compared as numbers).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from gasp_plugin.data.readers.common import FileScene, depth_files, depth_folder
from gasp_plugin.data.readers.nerfstudio import natural_key
from gasp_plugin.geometry.conventions import (
    intrinsics_from_corner_origin,
    rotation_from_quaternion,
    world_from_cam_from_extrinsics,
)

__all__ = ["ColmapScene", "read_cameras", "read_images", "read_colmap_depth", "CAMERA_MODELS"]

# model id -> (name, number of parameters, how many leading parameters are the pinhole part)
CAMERA_MODELS = {0: ("SIMPLE_PINHOLE", 3, 3), 1: ("PINHOLE", 4, 4), 2: ("SIMPLE_RADIAL", 4, 3), 3: ("RADIAL", 5, 3),
                 4: ("OPENCV", 8, 4), 5: ("OPENCV_FISHEYE", 8, 4), 6: ("FULL_OPENCV", 12, 4), 7: ("FOV", 5, 4),
                 8: ("SIMPLE_RADIAL_FISHEYE", 4, 3), 9: ("RADIAL_FISHEYE", 5, 3), 10: ("THIN_PRISM_FISHEYE", 12, 4)}
_BY_NAME = {name: (mid, n, k) for mid, (name, n, k) in CAMERA_MODELS.items()}
_PERSPECTIVE = {"SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV"}


def _pinhole(path: Path, cam_id: int, model: str, params: list[float]) -> np.ndarray:
    """``[3, 3]`` in COLMAP's pixel convention; ``ValueError`` for a camera that is not pinhole."""
    if model not in _BY_NAME:
        raise ValueError(f"{path}: camera {cam_id}: unknown camera model {model!r}")
    _, n, k = _BY_NAME[model]
    if len(params) != n:
        raise ValueError(f"{path}: camera {cam_id} ({model}) has {len(params)} parameters, expected {n}")
    if model not in _PERSPECTIVE or any(abs(p) > 0 for p in params[k:]):
        raise ValueError(f"{path}: camera {cam_id} is {model} with distortion {params[k:]}; this reader needs "
                         "pinhole cameras: undistort first (colmap image_undistorter writes a dense workspace)")
    fx, fy, cx, cy = (params[0], params[0], params[1], params[2]) if k == 3 else params[:4]
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


class _Reader:
    """Sequential little-endian reads that name the file when it ends early."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"{self.path}: truncated (needs {self.pos + size} bytes, has {len(self.data)})")
        vals = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return vals

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ValueError(f"{self.path}: truncated (an image name runs to the end of the file)")
        s, self.pos = self.data[self.pos:end].decode("utf-8"), end + 1
        return s


def _text_lines(path: Path):
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield k, line.split()


def read_cameras(path: Path) -> dict[int, np.ndarray]:
    """``camera_id -> [3, 3]`` intrinsics in COLMAP's pixel convention, from cameras.bin or .txt."""
    path = Path(path)
    cams = {}
    if path.suffix == ".bin":
        r = _Reader(path)
        for _ in range(r.take("Q")[0]):
            cam_id, model_id, _, _ = r.take("iiQQ")
            if model_id not in CAMERA_MODELS:
                raise ValueError(f"{path}: camera {cam_id}: unknown camera model id {model_id}")
            name, n, _ = CAMERA_MODELS[model_id]
            cams[cam_id] = _pinhole(path, cam_id, name, list(r.take("d" * n)))
        return cams
    for k, tok in _text_lines(path):
        try:
            cams[int(tok[0])] = _pinhole(path, int(tok[0]), tok[1], [float(v) for v in tok[4:]])
        except (IndexError, ValueError) as exc:
            if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
                raise
            raise ValueError(f"{path}:{k}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS... ({exc})") from exc
    return cams


def read_images(path: Path) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """``[(name, camera_id, qvec (w, x, y, z), tvec)]`` from images.bin or .txt (world-to-camera)."""
    path = Path(path)
    out = []
    if path.suffix == ".bin":
        r = _Reader(path)
        for _ in range(r.take("Q")[0]):
            vals = r.take("i7di")
            name = r.cstring()
            (n_points,) = r.take("Q")
            r.pos += 24 * n_points  # (x, y, point3D_id) per keypoint: not needed
            if r.pos > len(r.data):
                raise ValueError(f"{path}: truncated (keypoints of image {name!r} run past the end)")
            out.append((name, vals[8], np.array(vals[1:5]), np.array(vals[5:8])))
        return out
    raw = path.read_text().splitlines()
    k = 0
    while k < len(raw):  # two lines per image: the header, then its keypoints (possibly empty)
        line, k = raw[k].strip(), k + 1
        if not line or line.startswith("#"):
            continue
        tok = line.split()
        if len(tok) < 10:
            raise ValueError(f"{path}:{k}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {len(tok)} fields")
        try:
            vals = [float(v) for v in tok[1:8]]
            out.append((" ".join(tok[9:]), int(tok[8]), np.array(vals[:4]), np.array(vals[4:])))
        except ValueError as exc:
            raise ValueError(f"{path}:{k}: not numbers ({exc})") from exc
        k += 1  # skip the keypoint line
    return out


def read_colmap_depth(path: Path) -> np.ndarray:
    """``float32 [h, w]`` from a COLMAP depth-map ``.bin``; values ``<= 0`` (none) become 0."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read depth map {path}: {exc}") from exc
    parts = data.split(b"&", 3)
    try:
        w, h, c = (int(p) for p in parts[:3])
    except ValueError:
        raise ValueError(f"depth map {path}: not a COLMAP array (expected a 'width&height&channels&' header)") from None
    body = parts[3] if len(parts) == 4 else b""
    if c != 1 or len(body) != 4 * w * h:
        raise ValueError(f"depth map {path}: header says {w}x{h}x{c}, the file holds {len(body) // 4} values "
                         "(expected one channel, all values)")
    depth = np.frombuffer(body, "<f4").reshape(h, w).astype(np.float32)
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)


def _model_dir(path: Path) -> Path | None:
    for cand in (path / "sparse", *sorted((path / "sparse").glob("[0-9]*"), key=lambda p: natural_key(p.name))):
        for ext in (".bin", ".txt"):
            if (cand / f"cameras{ext}").is_file() and (cand / f"images{ext}").is_file():
                return cand
    return None


class ColmapScene(FileScene):
    expects = ("images/, sparse/[0/]{cameras,images}.bin|txt (pinhole, world-to-camera, w-first quaternions), "
               "stereo/depth_maps/NAME.geometric.bin or depth/STEM.png|npy")

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return ((path / "images").is_dir() and not (path / "transforms.json").exists()
                and _model_dir(path) is not None)

    def __init__(self, path: str | Path, depth: str = "geometric", depth_dir: str | Path | None = None,
                 depth_scale: float = 1000.0):
        path = Path(path)
        model = _model_dir(path)
        if model is None:
            raise ValueError(f"{path}: no COLMAP model (cameras + images .bin or .txt) in sparse/ or sparse/N/")
        ext = ".bin" if (model / "cameras.bin").is_file() and (model / "images.bin").is_file() else ".txt"
        cams = read_cameras(model / f"cameras{ext}")
        entries = sorted(read_images(model / f"images{ext}"), key=lambda e: natural_key(e[0]))
        if not entries:
            raise ValueError(f"{model / ('images' + ext)}: the model has no registered images")
        missing_cam = [(n, c) for n, c, _, _ in entries if c not in cams]
        if missing_cam:
            raise ValueError(f"{model / ('images' + ext)}: image {missing_cam[0][0]!r} uses camera "
                             f"{missing_cam[0][1]}, which cameras{ext} does not define")
        names = [e[0] for e in entries]
        K = intrinsics_from_corner_origin(np.stack([cams[c] for _, c, _, _ in entries]))
        poses = world_from_cam_from_extrinsics(rotation_from_quaternion(np.stack([e[2] for e in entries])),
                                               np.stack([e[3] for e in entries]))
        depths, reader = self._depth_files(path, names, depth, depth_dir)
        super().__init__(path.name, [path / "images" / n for n in names], depths, K, poses,
                         depth_scale=depth_scale, depth_reader=reader)
        self.model_dir = model

    @staticmethod
    def _depth_files(path: Path, names: list[str], kind: str, depth_dir):
        dense = path / "stereo" / "depth_maps"
        if depth_dir is None and dense.is_dir():
            if kind not in ("geometric", "photometric"):
                raise ValueError(f"depth must be 'geometric' or 'photometric', got {kind!r}")
            return [dense / f"{n}.{kind}.bin" for n in names], read_colmap_depth
        folder = depth_folder(path, depth_dir)
        if not folder.is_dir():
            raise ValueError(f"{path}: no depth: expected a dense workspace ({dense}/NAME.geometric.bin) or a "
                             f"depth folder ({folder}/STEM.png or STEM.npy), or pass depth_dir=")
        return depth_files(folder, [str(Path(n).with_suffix("")) for n in names]), None
