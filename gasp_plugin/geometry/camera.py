"""Pinhole camera geometry: pure, batched torch functions.

Conventions (used everywhere in :mod:`gasp_plugin`):

- Camera axes are OpenCV's: x right, y down, z forward.
- Poses are ``world_from_cam`` 4x4 rigid transforms (camera-to-world): ``X_world = T @ X_cam``.
  A transform named ``b_from_a`` maps coordinates in frame ``a`` to frame ``b``.
- Depth is the z coordinate in the camera frame, in metres (not the distance along the ray).
- Pixel centres sit at integer coordinates: pixel ``(u, v)`` (column ``u``, row ``v``) covers
  ``[u - 0.5, u + 0.5) x [v - 0.5, v + 0.5)``, and the image spans ``[-0.5, w - 0.5)`` in x.
  ``xy`` tensors hold ``(x, y) = (column, row)``.
- Intrinsics ``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` map camera points to these pixels.

Shapes: ``*`` is any number of leading (batch) dimensions; leading dimensions of different
arguments broadcast against each other the usual torch way.
"""

from __future__ import annotations

import torch

__all__ = [
    "check_shape",
    "check_intrinsics",
    "check_pose",
    "pose_problem",
    "unproject",
    "transform_points",
    "project",
    "invert_pose",
    "affine_inverse",
    "relative_pose",
]


def check_shape(x: torch.Tensor, tail: tuple[int, ...], name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor whose last dims equal ``tail``.

    ``-1`` in ``tail`` matches any size.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    shape = tuple(x.shape)
    ok = len(shape) >= len(tail) and all(
        t == -1 or s == t for s, t in zip(shape[len(shape) - len(tail):], tail)
    )
    if not ok:
        want = "[*, " + ", ".join("?" if t == -1 else str(t) for t in tail) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {list(shape)}")


def check_intrinsics(K: torch.Tensor, name: str = "K") -> None:
    """Raise ``ValueError`` unless ``K [*, 3, 3]`` is finite, with positive focal lengths and
    last row ``[0, 0, 1]``."""
    check_shape(K, (3, 3), name)
    if not torch.isfinite(K).all():
        raise ValueError(f"{name}: intrinsics contain NaN or inf")
    if (K[..., 0, 0] <= 0).any() or (K[..., 1, 1] <= 0).any():
        raise ValueError(f"{name}: focal lengths fx, fy must be positive")
    last = K.new_tensor([0.0, 0.0, 1.0])
    if not torch.allclose(K[..., 2, :], last.expand_as(K[..., 2, :]), atol=1e-6):
        raise ValueError(f"{name}: last row of the intrinsics must be [0, 0, 1]")


def check_pose(T: torch.Tensor, name: str = "pose", atol: float = 1e-3) -> None:
    """Raise ``ValueError`` unless ``T [*, 4, 4]`` is a finite rigid transform.

    Rigid: last row ``[0, 0, 0, 1]``, rotation block orthonormal (``R^T R = I`` within ``atol``)
    with determinant +1. The message names the first offending index.
    """
    check_shape(T, (4, 4), name)
    bad = bad_pose_mask(T, atol)
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0]) if bad.dim() else ()
        where = f"{name}{list(idx)}" if idx else name
        raise ValueError(
            f"{where}: not a finite rigid transform ({pose_problem(T[idx] if idx else T, atol)}); "
            "poses must be camera-to-world 4x4 matrices with an orthonormal rotation"
        )


def pose_problem(T: torch.Tensor, atol: float = 1e-3) -> str | None:
    """Describe what is wrong with one ``[4, 4]`` pose, or ``None`` when it is rigid."""
    if not torch.isfinite(T).all():
        return "contains NaN or inf"
    T = T.double()
    if not torch.allclose(T[3], T.new_tensor([0.0, 0.0, 0.0, 1.0]), atol=atol):
        return f"last row is {T[3].tolist()}, expected [0, 0, 0, 1]"
    R = T[:3, :3]
    err = (R.T @ R - torch.eye(3, dtype=T.dtype)).abs().max().item()
    if err > atol:
        return f"rotation is not orthonormal (max |R^T R - I| = {err:.3g})"
    if _det3(R).item() < 0:
        return "rotation has determinant -1 (a reflection)"
    return None


def bad_pose_mask(T: torch.Tensor, atol: float = 1e-3) -> torch.Tensor:
    """``[*]`` bool: which poses of ``T [*, 4, 4]`` are not finite rigid transforms."""
    finite = torch.isfinite(T).all(dim=(-1, -2))
    Td = torch.where(torch.isfinite(T), T, torch.zeros_like(T)).double()
    last = (Td[..., 3, :] - Td.new_tensor([0.0, 0.0, 0.0, 1.0])).abs().amax(-1) <= atol
    R = Td[..., :3, :3]
    ortho = (R.transpose(-1, -2) @ R - torch.eye(3, dtype=Td.dtype)).abs().amax((-1, -2)) <= atol
    proper = _det3(R) > 0
    return ~(finite & last & ortho & proper)


def unproject(xy: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Lift pixels with depth to camera-frame points.

    Args:
        xy: ``[*, 2]`` pixel coordinates.
        depth: ``[*]`` z depth in metres.
        K: ``[*, 3, 3]`` intrinsics (broadcasts against ``xy``'s leading dims).
    Returns:
        ``[*, 3]`` points in the camera frame, ``z == depth``.
    """
    check_shape(xy, (2,), "xy")
    check_shape(K, (3, 3), "K")
    fx, fy, cx, cy, s = K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 0, 1]
    y_n = (xy[..., 1] - cy) / fy
    x_n = (xy[..., 0] - cx - s * y_n) / fx
    return torch.stack([x_n * depth, y_n * depth, depth.expand_as(x_n)], dim=-1)


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply ``T [*, 4, 4]`` (``b_from_a``) to ``points [*, 3]`` in frame ``a``; returns ``[*, 3]``
    in frame ``b``."""
    check_shape(T, (4, 4), "T")
    check_shape(points, (3,), "points")
    R, t = T[..., :3, :3], T[..., :3, 3]
    return (R @ points.unsqueeze(-1)).squeeze(-1) + t


def project(points: torch.Tensor, K: torch.Tensor, eps: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera-frame points to pixels.

    Args:
        points: ``[*, 3]`` in the camera frame.
        K: ``[*, 3, 3]`` intrinsics.
        eps: points with ``|z| < eps`` are divided by ``eps`` instead (their pixels are meaningless;
            check ``z > 0`` before trusting any projection).
    Returns:
        ``(xy [*, 2], z [*])``.
    """
    check_shape(points, (3,), "points")
    check_shape(K, (3, 3), "K")
    z = points[..., 2]
    safe = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    x_n, y_n = points[..., 0] / safe, points[..., 1] / safe
    x = K[..., 0, 0] * x_n + K[..., 0, 1] * y_n + K[..., 0, 2]
    y = K[..., 1, 1] * y_n + K[..., 1, 2]
    return torch.stack([x, y], dim=-1), z


def invert_pose(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid ``T [*, 4, 4]`` (``R^T, -R^T t``), exact for rigid transforms."""
    check_shape(T, (4, 4), "T")
    R_t = T[..., :3, :3].transpose(-1, -2)
    t = T[..., :3, 3:]
    out = torch.zeros_like(T)
    out[..., :3, :3] = R_t
    out[..., :3, 3:] = -R_t @ t
    out[..., 3, 3] = 1
    return out


def _det3(A: torch.Tensor) -> torch.Tensor:
    """Determinant of ``[*, 3, 3]`` by the triple product (elementwise: no LAPACK call, which is
    slow for many tiny matrices)."""
    return (torch.linalg.cross(A[..., 0, :], A[..., 1, :]) * A[..., 2, :]).sum(-1)


def affine_inverse(T: torch.Tensor) -> torch.Tensor:
    """Inverse of ``T [*, 4, 4]`` with last row ``[0, 0, 0, 1]``, using the exact 3x3 inverse
    (adjugate / determinant) of the linear block, so near-rigid poses read from files with few
    digits still give ``affine_inverse(T) @ T == I`` to machine precision."""
    check_shape(T, (4, 4), "T")
    A = T[..., :3, :3]
    c0, c1, c2 = A[..., :, 0], A[..., :, 1], A[..., :, 2]
    adj_rows = torch.stack([torch.linalg.cross(c1, c2), torch.linalg.cross(c2, c0),
                            torch.linalg.cross(c0, c1)], dim=-2)  # rows of the adjugate
    A_inv = adj_rows / _det3(A)[..., None, None]
    out = torch.zeros_like(T)
    out[..., :3, :3] = A_inv
    out[..., :3, 3:] = -A_inv @ T[..., :3, 3:]
    out[..., 3, 3] = 1
    return out


def relative_pose(world_from_cam_a: torch.Tensor, world_from_cam_b: torch.Tensor) -> torch.Tensor:
    """``cam_b_from_cam_a = inv(world_from_cam_b) @ world_from_cam_a``; inputs ``[*, 4, 4]``
    (broadcast), output ``[*, 4, 4]``.

    Uses :func:`affine_inverse` rather than the rigid ``R^T`` inverse, so that ``a == b`` gives
    exactly the identity even for poses whose rotations are orthonormal only to ~1e-6.
    """
    check_shape(world_from_cam_a, (4, 4), "world_from_cam_a")
    check_shape(world_from_cam_b, (4, 4), "world_from_cam_b")
    return affine_inverse(world_from_cam_b) @ world_from_cam_a
