"""ScanNet's exported layout (the output of ScanNet's ``SensReader``)::

    SCENE/color/N.jpg                    RGB (1296x968 in ScanNet)
    SCENE/depth/N.png                    16-bit depth in millimetres (640x480), 0 = no measurement
    SCENE/pose/N.txt                     4x4 camera-to-world (some are -inf/nan: those frames are skipped)
    SCENE/intrinsic/intrinsic_color.txt  4x4 (or 3x3) intrinsics of the colour images
    SCENE/intrinsic/intrinsic_depth.txt  4x4 (or 3x3) intrinsics of the depth maps (optional)

Frames are ordered by the integer ``N``. Depth is resampled (nearest) into the colour camera with
the two intrinsics; without ``intrinsic_depth.txt`` the colour intrinsics are scaled to the depth size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gasp_plugin.data.readers.common import FileScene, read_matrix

__all__ = ["ScanNetScene"]


def _numeric_stem(p: Path) -> tuple[int, str]:
    return (int(p.stem), p.stem) if p.stem.isdigit() else (1 << 62, p.stem)


class ScanNetScene(FileScene):
    expects = ("color/N.jpg, depth/N.png (uint16 mm), pose/N.txt (4x4 camera-to-world), "
               "intrinsic/intrinsic_color.txt [+ intrinsic_depth.txt]")

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return all((path / p).exists() for p in ("color", "depth", "pose", "intrinsic"))

    def __init__(self, path: str | Path, depth_scale: float = 1000.0):
        path = Path(path)
        colors = sorted((p for p in (path / "color").iterdir() if p.suffix.lower() in (".jpg", ".png")),
                        key=_numeric_stem)
        if not colors:
            raise ValueError(f"{path / 'color'}: no .jpg/.png colour frames found")
        K_color_file = path / "intrinsic" / "intrinsic_color.txt"
        if not K_color_file.is_file():
            raise ValueError(f"{K_color_file} is missing: the ScanNet layout needs the colour intrinsics")
        K_color = read_matrix(K_color_file, (3, 3))
        K_depth_file = path / "intrinsic" / "intrinsic_depth.txt"
        K_depth = read_matrix(K_depth_file, (3, 3)) if K_depth_file.is_file() else None
        poses, missing = [], []
        for c in colors:
            f = path / "pose" / f"{c.stem}.txt"
            if f.is_file():
                poses.append(read_matrix(f, (4, 4)))
            else:
                poses.append(np.full((4, 4), np.nan))
                missing.append(len(poses) - 1)
        depths = [path / "depth" / f"{c.stem}.png" for c in colors]
        super().__init__(path.name, colors, depths, K_color, np.stack(poses),
                         depth_scale=depth_scale, depth_intrinsics=K_depth)
        for i in missing:
            self.skipped[i] = f"missing pose file {path / 'pose' / (colors[i].stem + '.txt')}"
