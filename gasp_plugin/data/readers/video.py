"""Colour from a video file, depth and poses from files::

    SCENE/VIDEO.mp4     exactly one video (.mp4/.mkv/.avi/.mov); frame i of the scene = video frame i
    SCENE/depth/*.png   16-bit depth in millimetres, one per video frame, in sorted file-name order
    SCENE/K.txt         3x3 intrinsics of the video frames
    SCENE/poses.txt     one row-major camera-to-world 4x4 per line, one per video frame

Frames are decoded with decord (the ``video`` extra: ``pip install gasp-plugin[video]``), by index
and in batches for clips. The decoder is opened lazily and not pickled, so a scene can be handed to
DataLoader workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gasp_plugin.data.readers.common import FileScene, read_intrinsics, read_pose_rows

__all__ = ["VideoScene", "VIDEO_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov")


def _import_decord():
    try:
        import decord
    except ImportError as exc:
        raise ImportError("reading colour from a video needs decord: pip install 'gasp-plugin[video]' "
                          "(or pip install decord)") from exc
    return decord


def _videos(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if path.is_dir() else []


class VideoScene(FileScene):
    expects = "one VIDEO.mp4, depth/*.png (uint16 mm, one per video frame), K.txt (3x3), poses.txt"

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        return (len(_videos(path)) == 1 and (path / "depth").is_dir() and (path / "K.txt").is_file()
                and (path / "poses.txt").is_file() and not (path / "images").exists())

    def __init__(self, path: str | Path, depth_scale: float = 1000.0):
        path = Path(path)
        videos = _videos(path)
        if len(videos) != 1:
            raise ValueError(f"{path}: expected exactly one video file ({', '.join(VIDEO_SUFFIXES)}), "
                             f"found {[v.name for v in videos]}")
        self.video_path = videos[0]
        self._reader = None
        n = len(self._decoder())
        depths = sorted((path / "depth").glob("*.png"))
        poses = read_pose_rows(path / "poses.txt")
        if not (len(depths) == len(poses) == n):
            raise ValueError(f"{path}: {self.video_path.name} has {n} frames, depth/ has {len(depths)} "
                             f"maps and poses.txt has {len(poses)} poses: the counts must match")
        K = read_intrinsics(path / "K.txt")
        self._size = tuple(int(s) for s in self._decoder()[0].shape[1::-1])  # (w, h)
        super().__init__(path.name, [self.video_path] * n, depths, K, poses, depth_scale=depth_scale)

    def _decoder(self):
        if self._reader is None:
            decord = _import_decord()
            try:
                self._reader = decord.VideoReader(str(self.video_path), ctx=decord.cpu(0))
            except Exception as exc:  # decord raises its own DECORDError
                raise ValueError(f"cannot open video {self.video_path}: {exc}") from exc
        return self._reader

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def image_size(self, i: int) -> tuple[int, int]:
        return self._size

    def image(self, i: int) -> np.ndarray:
        return self.images([i])[0]

    def images(self, ids: list[int]) -> np.ndarray:
        ids = [self.check_frame(i) for i in ids]
        try:
            return self._decoder().get_batch(ids).asnumpy()
        except Exception as exc:
            raise ValueError(f"cannot decode frames {ids} of {self.video_path}: {exc}") from exc
