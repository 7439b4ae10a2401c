"""The hololens layout (also what :func:`gasp_plugin.data.synthetic.write_scene` writes)::

    SCENE/images/NAME.png|jpg   RGB
    SCENE/depth/NAME.png        16-bit depth in millimetres, 0 = no measurement
    SCENE/K.txt                 3x3 intrinsics, shared by colour and depth
    SCENE/poses.txt             one row-major camera-to-world 4x4 per line, in sorted NAME order

Depth maps of another size than the images are resampled (nearest) to the image size.
"""

from __future__ import annotations

from pathlib import Path

from gasp_plugin.data.readers.common import IMAGE_SUFFIXES, FileScene, read_intrinsics, read_pose_rows

__all__ = ["HololensScene"]


class HololensScene(FileScene):
    expects = "images/*.png|jpg, depth/*.png (uint16 mm), K.txt (3x3), poses.txt (16 numbers per line)"

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return all((path / p).exists() for p in ("images", "depth", "K.txt", "poses.txt"))

    def __init__(self, path: str | Path, depth_scale: float = 1000.0):
        path = Path(path)
        images = sorted(p for p in (path / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{path / 'images'}: no .png/.jpg images found")
        poses = read_pose_rows(path / "poses.txt")
        if len(poses) != len(images):
            raise ValueError(f"{path / 'poses.txt'} has {len(poses)} poses but {path / 'images'} has "
                             f"{len(images)} images: one pose line per image, in sorted file-name order")
        depths = [path / "depth" / f"{p.stem}.png" for p in images]
        super().__init__(path.name, images, depths, read_intrinsics(path / "K.txt"), poses,
                         depth_scale=depth_scale)
