"""The Microsoft 7-Scenes layout (one sequence folder)::

    SEQ/frame-NNNNNN.color.png   RGB 640x480
    SEQ/frame-NNNNNN.depth.png   16-bit depth in millimetres; 0 and 65535 = no measurement
    SEQ/frame-NNNNNN.pose.txt    4x4 camera-to-world

7-Scenes ships no intrinsics file: a ``K.txt`` (3x3) in the folder or the ``intrinsics`` argument
is used when given, else the dataset's published values (fx = fy = 585, cx = 320, cy = 240 for
640x480). The dataset's depth is not registered to colour; like common practice, it is used as if
it were (the Kinect's colour and depth cameras are a few centimetres apart).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gasp_plugin.data.readers.common import FileScene, read_intrinsics, read_pose_files

__all__ = ["SevenScenesScene", "SEVEN_SCENES_INTRINSICS"]

# Published with the dataset (https://www.microsoft.com/en-us/research/project/rgb-d-dataset-7-scenes/).
SEVEN_SCENES_INTRINSICS = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])


class SevenScenesScene(FileScene):
    expects = "frame-NNNNNN.color.png, frame-NNNNNN.depth.png (uint16 mm, 65535 = invalid), frame-NNNNNN.pose.txt"

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return path.is_dir() and next(path.glob("frame-*.color.png"), None) is not None

    def __init__(self, path: str | Path, intrinsics=None, depth_scale: float = 1000.0):
        path = Path(path)
        colors = sorted(path.glob("frame-*.color.png"))
        if not colors:
            raise ValueError(f"{path}: no frame-NNNNNN.color.png files found")
        if intrinsics is None:
            intrinsics = read_intrinsics(path / "K.txt", optional=True)
        if intrinsics is None:
            intrinsics = SEVEN_SCENES_INTRINSICS
        stems = [c.name[: -len(".color.png")] for c in colors]
        poses, missing = read_pose_files([path / f"{s}.pose.txt" for s in stems])
        depths = [path / f"{s}.depth.png" for s in stems]
        super().__init__(path.name, colors, depths, intrinsics, poses,
                         depth_scale=depth_scale, depth_invalid=(0, 65535))
        self.skipped.update(missing)
