"""Camera geometry against exact analytic cases and independent references (torch.linalg)."""

import math

import pytest
import torch

from gasp_plugin.geometry import (
    affine_inverse,
    check_intrinsics,
    check_pose,
    invert_pose,
    project,
    relative_pose,
    transform_points,
    unproject,
)


def random_pose(gen, dtype=torch.float64):
    q = torch.randn(4, generator=gen, dtype=dtype)
    w, x, y, z = q / q.norm()
    R = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                      [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                      [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]], dtype=dtype)
    T = torch.eye(4, dtype=dtype)
    T[:3, :3], T[:3, 3] = R, torch.randn(3, generator=gen, dtype=dtype)
    return T


K_SKEW = torch.tensor([[300.0, 2.0, 111.5], [0.0, 280.0, 90.25], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_project_known_point():
    K = torch.tensor([[100.0, 0, 50], [0, 200, 40], [0, 0, 1]], dtype=torch.float64)
    xy, z = project(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64), K)
    assert xy.tolist() == [75.0, 140.0] and z.item() == 4.0


def test_principal_point_unprojects_to_optical_axis():
    p = unproject(K_SKEW[:2, 2], torch.tensor(3.0, dtype=torch.float64), K_SKEW)
    assert torch.allclose(p, torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64))


def test_unproject_project_round_trip_batched():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(5, 7, 2, generator=gen, dtype=torch.float64) * 200
    depth = 0.5 + 4 * torch.rand(5, 7, generator=gen, dtype=torch.float64)
    K = K_SKEW.expand(5, 1, 3, 3)  # one K per leading row, broadcast over points
    pts = unproject(xy, depth, K)
    assert pts.shape == (5, 7, 3)
    assert torch.allclose(pts[..., 2], depth)
    xy2, z = project(pts, K)
    assert torch.allclose(xy2, xy, atol=1e-9) and torch.allclose(z, depth)


def test_transform_points_matches_homogeneous_matmul():
    gen = torch.Generator().manual_seed(1)
    T = random_pose(gen)
    pts = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    homo = torch.cat([pts, torch.ones(10, 1, dtype=torch.float64)], 1) @ T.T
    assert torch.allclose(transform_points(T, pts), homo[:, :3])


def test_invert_pose_matches_linalg_inverse():
    gen = torch.Generator().manual_seed(2)
    T = torch.stack([random_pose(gen) for _ in range(4)])
    assert torch.allclose(invert_pose(T), torch.linalg.inv(T), atol=1e-12)
    assert torch.allclose(affine_inverse(T), torch.linalg.inv(T), atol=1e-12)


def test_affine_inverse_is_exact_for_near_rigid_poses():
    # a rotation rounded to 6 digits, as in pose files: R^T is off by ~1e-6, the affine inverse is not
    gen = torch.Generator().manual_seed(6)
    T = random_pose(gen)
    T[:3, :3] = torch.round(T[:3, :3] * 1e6) / 1e6
    eye = torch.eye(4, dtype=torch.float64)
    assert torch.allclose(affine_inverse(T) @ T, eye, atol=1e-14)
    assert torch.allclose(affine_inverse(T), torch.linalg.inv(T), atol=1e-12)
    assert torch.allclose(relative_pose(T, T), eye, atol=1e-14)


def test_relative_pose_moves_points_between_cameras():
    gen = torch.Generator().manual_seed(3)
    Ta, Tb = random_pose(gen), random_pose(gen)
    p_a = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    world = transform_points(Ta, p_a)
    p_b = transform_points(torch.linalg.inv(Tb), world)
    assert torch.allclose(transform_points(relative_pose(Ta, Tb), p_a), p_b, atol=1e-12)
    assert torch.allclose(relative_pose(Ta, Ta), torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_camera_translation_shifts_pixels_by_focal_times_baseline_over_depth():
    # camera b sits 0.2 m to the right (+x) of camera a: a point at depth 2 moves 100 * 0.2 / 2 px left
    K = torch.tensor([[100.0, 0, 50], [0, 100, 50], [0, 0, 1]], dtype=torch.float64)
    Ta, Tb = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    Tb[0, 3] = 0.2
    p = unproject(torch.tensor([30.0, 60.0], dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64), K)
    xy, _ = project(transform_points(relative_pose(Ta, Tb), p), K)
    assert torch.allclose(xy, torch.tensor([20.0, 60.0], dtype=torch.float64))


def test_rotation_about_y_moves_principal_point_by_f_tan_theta():
    # camera b yawed by +theta about its y axis (turning right, x right, z forward): a point on a's
    # optical axis appears at cx - f * tan(theta) in b
    theta = math.radians(10)
    K = torch.tensor([[200.0, 0, 100], [0, 200, 80], [0, 0, 1]], dtype=torch.float64)
    Tb = torch.eye(4, dtype=torch.float64)
    c, s = math.cos(theta), math.sin(theta)
    Tb[:3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    p = torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)
    xy, _ = project(transform_points(relative_pose(torch.eye(4, dtype=torch.float64), Tb), p), K)
    assert torch.allclose(xy, torch.tensor([100 - 200 * math.tan(theta), 80.0], dtype=torch.float64))


def test_gradcheck_unproject_transform_project():
    gen = torch.Generator().manual_seed(4)
    T = random_pose(gen)
    xy = (torch.rand(3, 2, generator=gen, dtype=torch.float64) * 100).requires_grad_()
    depth = (1 + torch.rand(3, generator=gen, dtype=torch.float64)).requires_grad_()
    fn = lambda a, b: project(transform_points(T, unproject(a, b, K_SKEW)), K_SKEW)[0]
    assert torch.autograd.gradcheck(fn, (xy, depth))


@pytest.mark.parametrize("make, message", [
    (lambda T: T.fill_(float("nan")), "NaN or inf"),
    (lambda T: T.__setitem__((0, 0), float("inf")), "NaN or inf"),
    (lambda T: T[:3, :3].mul_(2.0), "not orthonormal"),
    (lambda T: T[:3, 0].neg_(), "determinant -1"),
    (lambda T: T.__setitem__((3, 0), 0.5), "last row"),
])
def test_check_pose_rejects_non_rigid(make, message):
    T = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    make(T[1])
    with pytest.raises(ValueError, match=message) as err:
        check_pose(T, "poses")
    assert "poses[1]" in str(err.value)


def test_check_pose_accepts_rigid_and_rejects_bad_shape():
    gen = torch.Generator().manual_seed(5)
    check_pose(torch.stack([random_pose(gen) for _ in range(3)]))
    with pytest.raises(ValueError, match=r"expected shape \[\*, 4, 4\], got \[3, 4\]"):
        check_pose(torch.eye(4)[:3])


def test_check_intrinsics_and_shapes():
    with pytest.raises(ValueError, match="focal"):
        check_intrinsics(torch.tensor([[-1.0, 0, 1], [0, 1, 1], [0, 0, 1]]))
    with pytest.raises(ValueError, match="last row"):
        check_intrinsics(torch.tensor([[1.0, 0, 1], [0, 1, 1], [0, 1, 1]]))
    with pytest.raises(ValueError, match=r"xy: expected shape \[\*, 2\]"):
        unproject(torch.zeros(4, 3), torch.ones(4), K_SKEW)
