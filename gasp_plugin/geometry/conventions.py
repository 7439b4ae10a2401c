"""Conversions from the pose and pixel conventions data sets ship in to this package's own.

This package's conventions (see :mod:`gasp_plugin.geometry.camera`): OpenCV camera axes (x right,
y down, z forward), poses ``world_from_cam`` 4x4, pixel centres at integer coordinates. Readers
convert with the functions here, once, when a scene opens:

- **OpenGL / nerfstudio / ARKit camera axes** (x right, y up, z backward): :func:`opencv_from_opengl`.
- **World-to-camera extrinsics** (COLMAP ``images``, ARKitScenes ``.traj``):
  :func:`world_from_cam_from_extrinsics`.
- **Quaternions** are ``(w, x, y, z)``, w first (COLMAP's order): :func:`rotation_from_quaternion`.
- **Angle-axis** vectors (ARKitScenes ``.traj``; OpenCV's Rodrigues): :func:`rotation_from_axis_angle`.
- **Pixel centres at +0.5** (COLMAP, nerfstudio: the image spans ``[0, w]`` and pixel ``u`` is
  centred at ``u + 0.5``): :func:`intrinsics_from_corner_origin`.

Pure numpy functions on float64 arrays with any number of leading (batch) dimensions ``*``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "OPENGL_FROM_OPENCV",
    "opencv_from_opengl",
    "opengl_from_opencv",
    "rigid_matrix",
    "invert_rigid",
    "world_from_cam_from_extrinsics",
    "rotation_from_quaternion",
    "quaternion_from_rotation",
    "rotation_from_axis_angle",
    "axis_angle_from_rotation",
    "intrinsics_from_corner_origin",
    "corner_origin_from_intrinsics",
]

# camera axes: OpenGL (x right, y up, z back) = OpenCV (x right, y down, z forward) with y, z negated
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def _check_tail(x: np.ndarray, tail: tuple[int, ...], name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.shape[x.ndim - len(tail):] != tail or x.ndim < len(tail):
        want = "[*, " + ", ".join(map(str, tail)) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(x.shape)}")
    return x


def opencv_from_opengl(world_from_cam_gl: np.ndarray) -> np.ndarray:
    """``[*, 4, 4]`` camera-to-world pose with OpenGL camera axes -> the same camera with OpenCV
    axes (the camera's y and z columns negated; the camera centre is unchanged)."""
    T = _check_tail(world_from_cam_gl, (4, 4), "world_from_cam_gl")
    return T @ OPENGL_FROM_OPENCV


def opengl_from_opencv(world_from_cam_cv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`opencv_from_opengl` (the same flip: it is its own inverse)."""
    T = _check_tail(world_from_cam_cv, (4, 4), "world_from_cam_cv")
    return T @ OPENGL_FROM_OPENCV


def rigid_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``[*, 4, 4]`` from rotation ``R [*, 3, 3]`` and translation ``t [*, 3]``."""
    R, t = _check_tail(R, (3, 3), "R"), _check_tail(t, (3,), "t")
    lead = np.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    T = np.zeros((*lead, 4, 4))
    T[..., :3, :3], T[..., :3, 3], T[..., 3, 3] = R, t, 1.0
    return T


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse ``[*, 4, 4]`` of rigid ``T`` (``R^T, -R^T t``)."""
    T = _check_tail(T, (4, 4), "T")
    R_t = np.swapaxes(T[..., :3, :3], -1, -2)
    return rigid_matrix(R_t, -(R_t @ T[..., :3, 3:])[..., 0])


def world_from_cam_from_extrinsics(R_cam_from_world: np.ndarray, t_cam_from_world: np.ndarray) -> np.ndarray:
    """Camera-to-world ``[*, 4, 4]`` from world-to-camera extrinsics ``x_cam = R x_world + t``
    (``R [*, 3, 3]``, ``t [*, 3]``): camera centre ``-R^T t``."""
    return invert_rigid(rigid_matrix(R_cam_from_world, t_cam_from_world))


def rotation_from_quaternion(q: np.ndarray) -> np.ndarray:
    """``[*, 3, 3]`` rotation of unit quaternions ``q [*, 4]`` in ``(w, x, y, z)`` order (w first,
    as COLMAP writes them). ``q`` is normalised; a zero or non-finite quaternion is a ValueError."""
    q = _check_tail(q, (4,), "q")
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.isfinite(q).all() or (n < 1e-12).any():
        raise ValueError("rotation_from_quaternion: quaternions must be finite and non-zero")
    w, x, y, z = np.moveaxis(q / n, -1, 0)
    rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def quaternion_from_rotation(R: np.ndarray) -> np.ndarray:
    """``[*, 4]`` unit quaternions ``(w, x, y, z)`` with ``w >= 0`` of rotations ``R [*, 3, 3]``
    (the numerically stable branch per matrix: largest of w, x, y, z first)."""
    R = _check_tail(R, (3, 3), "R")
    flat = R.reshape(-1, 3, 3)
    out = np.empty((len(flat), 4))
    for k, m in enumerate(flat):
        tr = np.trace(m)
        cands = np.array([tr, m[0, 0], m[1, 1], m[2, 2]])
        i = int(np.argmax(cands))
        if i == 0:
            s = 2.0 * np.sqrt(max(1.0 + tr, 1e-300))
            q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
        else:
            a, b, c = (i - 1), i % 3, (i + 1) % 3  # the axis and the two others, cyclic
            s = 2.0 * np.sqrt(max(1.0 + m[a, a] - m[b, b] - m[c, c], 1e-300))
            q = np.empty(4)
            q[0] = (m[c, b] - m[b, c]) / s
            q[1 + a] = 0.25 * s
            q[1 + b] = (m[b, a] + m[a, b]) / s
            q[1 + c] = (m[c, a] + m[a, c]) / s
        q = np.asarray(q, dtype=np.float64)
        out[k] = q * (1 if q[0] >= 0 else -1) / np.linalg.norm(q)
    return out.reshape(*R.shape[:-2], 4)


def rotation_from_axis_angle(r: np.ndarray) -> np.ndarray:
    """``[*, 3, 3]`` rotation of angle-axis vectors ``r [*, 3]`` (axis * angle in radians;
    Rodrigues' formula, as OpenCV's ``cv2.Rodrigues``)."""
    r = _check_tail(r, (3,), "r")
    theta = np.linalg.norm(r, axis=-1)[..., None, None]
    k = r / np.where(theta[..., 0] > 0, theta[..., 0], 1.0)
    K = np.zeros((*r.shape[:-1], 3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K = K - np.swapaxes(K, -1, -2)
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * (K @ K)


def axis_angle_from_rotation(R: np.ndarray) -> np.ndarray:
    """``[*, 3]`` angle-axis vectors (angle in ``[0, pi]``) of rotations ``R [*, 3, 3]``."""
    q = quaternion_from_rotation(R)  # w >= 0: angle = 2 atan2(|v|, w) in [0, pi]
    v = q[..., 1:]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2 * np.arctan2(s, q[..., :1])
    return np.where(s > 1e-12, v / np.where(s > 1e-12, s, 1.0) * angle, 2 * v)


def intrinsics_from_corner_origin(K: np.ndarray) -> np.ndarray:
    """``[*, 3, 3]`` intrinsics with pixel centres at integers from intrinsics whose pixel ``u`` is
    centred at ``u + 0.5`` (COLMAP, nerfstudio): the principal point moves by -0.5 in x and y."""
    K = _check_tail(K, (3, 3), "K").copy()
    K[..., 0, 2] -= 0.5
    K[..., 1, 2] -= 0.5
    return K


def corner_origin_from_intrinsics(K: np.ndarray) -> np.ndarray:
    """Inverse of :func:`intrinsics_from_corner_origin` (principal point + 0.5)."""
    K = _check_tail(K, (3, 3), "K").copy()
    K[..., 0, 2] += 0.5
    K[..., 1, 2] += 0.5
    return K
