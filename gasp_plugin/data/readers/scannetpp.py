"""ScanNet++ iPhone captures, as the data set ships them (``SCENE`` or ``SCENE/iphone``)::

    iphone/pose_intrinsic_imu.json   {"frame_000000": {"intrinsic": 3x3, "aligned_pose": 4x4,
                                      "pose": 4x4, "timestamp": s, "imu": ...}, ...}
    iphone/rgb/frame_000000.jpg      colour frames (1920x1440), extracted from ``rgb.mkv``, or
    iphone/rgb.mkv | rgb.mp4         the colour video itself (frame N = video frame N; needs decord)
    iphone/depth/frame_000000.png    16-bit depth in millimetres (256x192), extracted, or
    iphone/depth.bin                 the depth stream: per frame a uint32 byte count and a blob
                                     (raw-deflate float32 metres, or lz4 uint16 millimetres)

Poses are camera-to-world with OpenCV axes (ScanNet++'s own back-projection uses them with the
intrinsics as they are); ``pose_key`` chooses ``aligned_pose`` (default: registered to the laser
scan) or ``pose`` (ARKit's frame). Intrinsics are for the colour frames; depth (same 4:3 aspect) is
resampled into the colour camera. Frames are the JSON's keys in order; a key without colour, depth
or pose is skipped with the reason. A ``depth.bin`` compressed as one stream (older releases)
cannot be read frame by frame: extract it first (ScanNet++'s ``prepare_iphone_data.py``).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from gasp_plugin.data.readers.common import IMAGE_SUFFIXES, FileScene
from gasp_plugin.data.readers.nerfstudio import natural_key
from gasp_plugin.data.readers.video import VideoScene

__all__ = ["ScanNetPPScene", "depth_bin_offsets"]

POSE_FILE = "pose_intrinsic_imu.json"
VIDEO_NAMES = ("rgb.mkv", "rgb.mp4")


def depth_bin_offsets(path: Path) -> np.ndarray:
    """``int64 [n, 2]`` (offset, size) of each frame blob of a per-frame ``depth.bin``;
    ``ValueError`` naming the file when the records do not chain to its end."""
    size, out, pos = path.stat().st_size, [], 0
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(4)
            n = struct.unpack("<I", head)[0] if len(head) == 4 else size
            if pos + 4 + n > size:
                raise ValueError(f"{path}: not a per-frame depth stream (record {len(out)} at byte {pos} runs past "
                                 "the end; a single-stream or truncated file): extract the depth maps first "
                                 "(ScanNet++ iphone/prepare_iphone_data.py) into depth/")
            out.append((pos + 4, n))
            pos += 4 + n
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _decode_depth_blob(blob: bytes, size: tuple[int, int], where: str) -> np.ndarray:
    w, h = size
    try:
        raw = zlib.decompress(blob, wbits=-zlib.MAX_WBITS)
        if len(raw) != 4 * w * h:
            raise ValueError(f"{where}: the depth blob holds {len(raw) // 4} float32 values, expected {w}x{h}")
        depth = np.frombuffer(raw, "<f4").reshape(h, w).astype(np.float32)
    except zlib.error:
        try:
            import lz4.block
        except ImportError:
            raise ValueError(f"{where}: lz4-compressed depth needs the lz4 package (pip install lz4, or the "
                             "scannetpp extra: pip install \"gasp-plugin[scannetpp]\")") from None
        try:
            raw = lz4.block.decompress(blob, uncompressed_size=2 * w * h)
        except Exception as exc:  # lz4 raises its own LZ4BlockError
            raise ValueError(f"{where}: cannot decompress the depth blob: {exc}") from exc
        depth = np.frombuffer(raw, "<u2").reshape(h, w).astype(np.float32) / 1000.0
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)


def _matrix(entry: dict, key: str, shape: tuple[int, int]) -> np.ndarray:
    try:
        m = np.asarray(entry[key], dtype=np.float64).reshape(shape)
    except (KeyError, TypeError, ValueError):
        return np.full(shape, np.nan)
    return m


class ScanNetPPScene(FileScene):
    expects = f"iphone/{POSE_FILE}, rgb/frame_N.jpg (or rgb.mkv), depth/frame_N.png (uint16 mm, or depth.bin)"

    @staticmethod
    def _root(path: Path) -> Path | None:
        for cand in (Path(path), Path(path) / "iphone"):
            if (cand / POSE_FILE).is_file():
                return cand
        return None

    @classmethod
    def detect(cls, path: Path) -> bool:
        return cls._root(path) is not None

    def __init__(self, path: str | Path, pose_key: str = "aligned_pose", depth_size: tuple[int, int] = (256, 192)):
        path = Path(path)
        root = self._root(path)
        if root is None:
            raise ValueError(f"{path}: no {POSE_FILE} (ScanNet++ iPhone layout)")
        meta_path = root / POSE_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {meta_path}: {exc}") from exc
        keys = sorted((k for k in meta if isinstance(meta[k], dict)), key=natural_key) if isinstance(meta, dict) else []
        if not keys:
            raise ValueError(f"{meta_path}: expected an object of frames {{'frame_000000': {{...}}, ...}}")
        if not any(pose_key in meta[k] for k in keys):
            raise ValueError(f"{meta_path}: no frame has {pose_key!r} (keys of {keys[0]}: {sorted(meta[keys[0]])})")
        poses = np.stack([_matrix(meta[k], pose_key, (4, 4)) for k in keys])
        Ks = np.stack([_matrix(meta[k], "intrinsic", (3, 3)) for k in keys])
        self.frame_numbers = [int("".join(c for c in k if c.isdigit()) or -1) for k in keys]
        self.video_path, self._reader = None, None
        if (root / "rgb").is_dir():
            images = [self._colour_file(root / "rgb", k) for k in keys]
        else:
            videos = [root / v for v in VIDEO_NAMES if (root / v).is_file()]
            if not videos:
                raise ValueError(f"{root}: no colour: expected rgb/FRAME.jpg frames or {' or '.join(VIDEO_NAMES)}")
            self.video_path = videos[0]
            images = [self.video_path] * len(keys)
        self._depth_bin, self._depth_size = None, tuple(depth_size)
        if (root / "depth").is_dir():
            depths = [root / "depth" / f"{k}.png" for k in keys]
        elif (root / "depth.bin").is_file():
            self._depth_bin = root / "depth.bin"
            self._depth_offsets = depth_bin_offsets(self._depth_bin)
            depths = [self._depth_bin] * len(keys)
        else:
            raise ValueError(f"{root}: no depth: expected depth/FRAME.png or depth.bin")
        super().__init__(root.parent.name if root.name == "iphone" else root.name, images, depths, Ks, poses)
        for i, k in enumerate(keys):
            reason = self._extra_problem(i, k, meta[k], pose_key)
            if reason and (i not in self.skipped or self.skipped[i].startswith("pose contains NaN")):
                self.skipped[i] = reason

    @staticmethod
    def _colour_file(folder: Path, key: str) -> Path:
        for ext in IMAGE_SUFFIXES[::-1]:  # .jpeg, .jpg, .png
            if (folder / f"{key}{ext}").is_file():
                return folder / f"{key}{ext}"
        return folder / f"{key}.jpg"

    def _extra_problem(self, i: int, key: str, entry: dict, pose_key: str) -> str | None:
        n = self.frame_numbers[i]
        if pose_key not in entry:
            return f"no {pose_key!r} for {key} in {POSE_FILE}"
        if not np.isfinite(self._K[i]).all():
            return f"no valid 'intrinsic' for {key} in {POSE_FILE}"
        if self._depth_bin is not None and not 0 <= n < len(self._depth_offsets):
            return f"{key}: frame {n} is past the end of {self._depth_bin} ({len(self._depth_offsets)} frames)"
        if self.video_path is not None and not 0 <= n < len(self._decoder()):
            return f"{key}: frame {n} is past the end of {self.video_path} ({len(self._decoder())} frames)"
        return None

    # --- colour from the video ----------------------------------------------------------------

    # the video reader's lazy decord handle and its pickling (they use video_path and _reader)
    _decoder = VideoScene._decoder
    __getstate__ = VideoScene.__getstate__

    def image_size(self, i: int) -> tuple[int, int]:
        if self.video_path is None:
            return super().image_size(i)
        if i not in self._sizes:
            self._sizes[i] = tuple(int(s) for s in self._decoder()[0].shape[1::-1])
        return self._sizes[i]

    def image(self, i: int) -> np.ndarray:
        return self.images([i])[0] if self.video_path is not None else super().image(i)

    def images(self, ids: list[int]) -> np.ndarray:
        if self.video_path is None:
            return super().images(ids)
        ids = [self.check_frame(i) for i in ids]
        try:
            return self._decoder().get_batch([self.frame_numbers[i] for i in ids]).asnumpy()
        except Exception as exc:  # decord raises its own DECORDError
            raise ValueError(f"cannot decode frames {ids} of {self.video_path}: {exc}") from exc

    # --- depth from depth.bin -----------------------------------------------------------------

    def depth(self, i: int) -> np.ndarray:
        if self._depth_bin is None:
            return super().depth(i)
        i = self.check_frame(i)
        start, size = (int(v) for v in self._depth_offsets[self.frame_numbers[i]])
        where = f"{self._depth_bin} frame {self.frame_numbers[i]}"

        def read():
            with open(self._depth_bin, "rb") as f:
                f.seek(start)
                blob = f.read(size)
            d = _decode_depth_blob(blob, self._depth_size, where)
            return self._resample(d, self._K[i], self.image_size(i), None, source=where)

        return self.read_or_skip(i, read)
