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

from gasp_plugin.data.readers.common import FileScene, read_intrinsics, read_pose_files

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
        K_color = read_intrinsics(path / "intrinsic" / "intrinsic_color.txt")
        K_depth = read_intrinsics(path / "intrinsic" / "intrinsic_depth.txt", optional=True)
        poses, missing = read_pose_files([path / "pose" / f"{c.stem}.txt" for c in colors])
        depths = [path / "depth" / f"{c.stem}.png" for c in colors]
        super().__init__(path.name, colors, depths, K_color, poses,
                         depth_scale=depth_scale, depth_intrinsics=K_depth)
        self.skipped.update(missing)
