"""Convention conversions (gasp_plugin.geometry.conventions) against exact cases, independent
constructions (look_at, Rodrigues by hand) and round trips."""

import math

import numpy as np
import pytest

from gasp_plugin.data.render import look_at
from gasp_plugin.geometry import (
    axis_angle_from_rotation,
    corner_origin_from_intrinsics,
    intrinsics_from_corner_origin,
    invert_rigid,
    opencv_from_opengl,
    opengl_from_opencv,
    quaternion_from_rotation,
    rigid_matrix,
    rotation_from_axis_angle,
    rotation_from_quaternion,
    world_from_cam_from_extrinsics,
)


def random_rotations(n, seed=0):
    q = np.random.default_rng(seed).normal(size=(n, 4))
    return rotation_from_quaternion(q)


def rot_z(theta):
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_opengl_camera_looks_along_its_minus_z_and_converts_to_look_at():
    eye, target = np.array([1.0, 2.0, 1.5]), np.array([4.0, 3.0, 1.0])
    T_cv = look_at(eye, target)  # OpenCV axes: z forward, y down
    T_gl = opengl_from_opencv(T_cv)
    forward = (target - eye) / np.linalg.norm(target - eye)
    assert np.allclose(-T_gl[:3, 2], forward)  # OpenGL cameras look along -z
    assert T_gl[2, 1] > 0  # and their y axis points up (world z up, no roll)
    assert np.array_equal(T_gl[:3, 3], eye)
    assert np.allclose(opencv_from_opengl(T_gl), T_cv)
    batch = np.stack([T_gl, T_gl @ rigid_matrix(rot_z(0.3), [0.1, 0, 0])])
    assert np.allclose(opengl_from_opencv(opencv_from_opengl(batch)), batch)  # its own inverse, batched
    # a world point in front of the camera: z > 0 in OpenCV camera coordinates, z < 0 in OpenGL ones
    X = np.append(target, 1.0)
    assert (invert_rigid(T_cv) @ X)[2] > 0 and (invert_rigid(T_gl) @ X)[2] < 0


def test_quaternion_w_first_known_rotation_and_round_trip():
    theta = 0.7
    R = rotation_from_quaternion(np.array([math.cos(theta / 2), 0, 0, math.sin(theta / 2)]))
    assert np.allclose(R, rot_z(theta))
    # x-first order read as w-first would be a different rotation: the order matters
    assert not np.allclose(rotation_from_quaternion(np.array([0, 0, math.sin(theta / 2), math.cos(theta / 2)])), R)
    Rs = np.concatenate([random_rotations(50), np.stack([np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]),
                                                         np.diag([-1.0, -1, 1]), np.eye(3)])])
    q = quaternion_from_rotation(Rs)
    assert q.shape == (54, 4) and (q[:, 0] >= 0).all() and np.allclose(np.linalg.norm(q, axis=1), 1)
    assert np.allclose(rotation_from_quaternion(q), Rs, atol=1e-12)
    assert np.allclose(rotation_from_quaternion(-q), Rs, atol=1e-12)  # q and -q: the same rotation
    assert np.allclose(rotation_from_quaternion(3 * q), Rs, atol=1e-12)  # normalised
    with pytest.raises(ValueError, match="finite and non-zero"):
        rotation_from_quaternion(np.zeros(4))
    with pytest.raises(ValueError, match=r"q: expected shape \[\*, 4\], got \[3\]"):
        rotation_from_quaternion(np.zeros(3))


def test_axis_angle_matches_rodrigues_by_hand_and_round_trips():
    assert np.allclose(rotation_from_axis_angle(np.array([0, 0, 0.4])), rot_z(0.4))
    assert np.allclose(rotation_from_axis_angle(np.zeros(3)), np.eye(3))
    axis = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    angle = 2.1
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    by_hand = np.eye(3) * math.cos(angle) + math.sin(angle) * K + (1 - math.cos(angle)) * np.outer(axis, axis)
    assert np.allclose(rotation_from_axis_angle(axis * angle), by_hand)
    # agrees with the quaternion of the same axis and angle
    q = np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis])
    assert np.allclose(rotation_from_quaternion(q), by_hand)
    Rs = np.concatenate([random_rotations(40, seed=1), rotation_from_axis_angle(np.array([[1e-9, 0, 0],
                                                                                          [0, math.pi - 1e-6, 0]]))])
    r = axis_angle_from_rotation(Rs)
    assert r.shape == (42, 3) and np.allclose(rotation_from_axis_angle(r), Rs, atol=1e-9)


def test_world_from_cam_from_extrinsics_inverts_world_to_camera():
    rng = np.random.default_rng(2)
    R, t = random_rotations(5, seed=3), rng.normal(size=(5, 3))
    T = world_from_cam_from_extrinsics(R, t)
    X_world = rng.normal(size=3)
    x_cam = R @ X_world + t  # [5, 3]
    back = (T[:, :3, :3] @ x_cam[..., None])[..., 0] + T[:, :3, 3]
    assert np.allclose(back, X_world)
    assert np.allclose(T[:, :3, 3], -(np.swapaxes(R, 1, 2) @ t[..., None])[..., 0])  # camera centres
    assert np.allclose(invert_rigid(T) @ T, np.eye(4))
    assert np.allclose(T[:, 3], [0, 0, 0, 1])


def test_corner_origin_intrinsics_shift_the_principal_point_by_half_a_pixel():
    # a camera whose image spans [0, w] (pixel u centred at u + 0.5): the ray through the centre of
    # pixel (0, 0) hits corner-origin coordinates (0.5, 0.5), and integer-centre coordinates (0, 0)
    K_corner = np.array([[50.0, 0, 32.0], [0, 50, 24.0], [0, 0, 1]])
    ray = np.linalg.inv(K_corner) @ np.array([0.5, 0.5, 1.0])
    K = intrinsics_from_corner_origin(K_corner)
    assert np.allclose(K @ ray, [0, 0, 1])
    assert np.allclose(K[:2, 2], [31.5, 23.5]) and np.allclose(corner_origin_from_intrinsics(K), K_corner)
    assert np.array_equal(K_corner[:2, 2], [32.0, 24.0])  # the input is not modified
