"""Camera geometry and ground-truth point tracks.

Conventions: OpenCV camera axes (x right, y down, z forward); poses are camera-to-world 4x4
(``world_from_cam``); depth is z in metres; pixel centres at integer coordinates (pixel ``(u, v)``
covers ``[u - 0.5, u + 0.5)``). Details in :mod:`gasp_plugin.geometry.camera`.
"""

from gasp_plugin.geometry.camera import (
    check_intrinsics,
    check_pose,
    check_shape,
    invert_pose,
    pose_problem,
    project,
    relative_pose,
    transform_points,
    unproject,
)

__all__ = [
    "check_intrinsics",
    "check_pose",
    "check_shape",
    "invert_pose",
    "pose_problem",
    "project",
    "relative_pose",
    "transform_points",
    "unproject",
]
