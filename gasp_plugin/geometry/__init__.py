"""Camera geometry and ground-truth point tracks.

Conventions: OpenCV camera axes (x right, y down, z forward); poses are camera-to-world 4x4
(``world_from_cam``); depth is z in metres; pixel centres at integer coordinates (pixel ``(u, v)``
covers ``[u - 0.5, u + 0.5)``). Details in :mod:`gasp_plugin.geometry.camera`.

The functions load lazily, so the ``gasp`` command line can import ``gasp_plugin.data.tracks_cli``
without importing torch. Conversions from data sets' conventions (OpenGL axes, world-to-camera
extrinsics, quaternions, angle-axis, pixel centres at +0.5) are in
:mod:`gasp_plugin.geometry.conventions`.
"""

from importlib import import_module

_CAMERA = "gasp_plugin.geometry.camera"
_LAZY = {name: _CAMERA for name in (
    "affine_inverse", "check_intrinsics", "check_pose", "check_shape", "invert_pose", "pose_problem", "project",
    "relative_pose", "transform_points", "unproject")}
_LAZY.update({name: "gasp_plugin.geometry.conventions" for name in (
    "axis_angle_from_rotation", "corner_origin_from_intrinsics", "intrinsics_from_corner_origin", "invert_rigid",
    "opencv_from_opengl", "opengl_from_opencv", "quaternion_from_rotation", "rigid_matrix",
    "rotation_from_axis_angle", "rotation_from_quaternion", "world_from_cam_from_extrinsics")})

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gasp_plugin.geometry' has no attribute {name!r}")


def __dir__():
    return __all__
