"""ScanNet's raw SensorData stream, read in place (no export)::

    SCENE/SCENE.sens     (or the path of the .sens file itself)

The ``.sens`` file (little endian, version 4) is a header: ``uint32`` version, ``uint64`` length and
the sensor name, four ``float32 [4, 4]`` (colour intrinsics, colour extrinsics, depth intrinsics,
depth extrinsics), ``int32`` colour and depth compression (colour 0 raw / 1 png / 2 jpeg; depth
0 raw uint16 / 1 zlib uint16), ``uint32`` colour width, height, depth width, height, ``float32``
depth shift (units per metre, 1000) and ``uint64`` frame count; then per frame a ``float32 [4, 4]``
camera-to-world pose (``-inf`` where tracking was lost: those frames are skipped), ``uint64``
colour and depth timestamps, ``uint64`` colour and depth byte counts and the two compressed blobs.

Frames are read by seeking: the byte offset of every frame is found once (a pass over the
96-byte frame headers) and cached in ``SCENE.sens.gasp-index.npz`` next to the file, or, when that
cannot be written (read-only data), in ``cache_dir`` (default ``$GASP_CACHE_DIR/sens-index`` or
``~/.cache/gasp_plugin/sens-index``). The cache records the file's size and modification time and
is rebuilt when they change. A truncated file (an interrupted download) keeps its complete frames;
the rest are skipped with the reason.

Colour (1296x968 in ScanNet) and depth (640x480) differ in size: depth is resampled (nearest) into
the colour camera with the two intrinsics, as the exported-layout reader
(:mod:`gasp_plugin.data.readers.scannet`) does; without valid depth intrinsics the colour ones are
scaled to the depth size. A folder that also holds the exported layout (``color/``, ``depth/``,
``pose/``, ``intrinsic/``) is read as the export.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from gasp_plugin.data.readers.common import DepthResampler, pose_reasons
from gasp_plugin.data.scene import Scene

__all__ = ["ScanNetSensScene", "read_sens_header", "build_sens_index", "SENS_VERSION"]

SENS_VERSION = 4
COLOR_CODECS = {0: "raw", 1: "png", 2: "jpeg"}
DEPTH_CODECS = {0: "raw_ushort", 1: "zlib_ushort"}  # 2 (occi_ushort) is not used by ScanNet
FRAME_HEADER = struct.Struct("<16f4Q")  # pose, colour / depth timestamps, colour / depth byte counts
INDEX_VERSION = 1
EXPORT_DIRS = ("color", "depth", "pose", "intrinsic")


def read_sens_header(f, path: Path) -> dict:
    """Parse the header from the open binary file ``f`` (positioned at 0); ``ValueError`` naming
    ``path`` when it is cut short or not a version-4 SensorData file."""
    def take(n: int) -> bytes:
        b = f.read(n)
        if len(b) != n:
            raise ValueError(f"{path}: truncated .sens header (file ends at byte {f.tell()})")
        return b

    (version,) = struct.unpack("<I", take(4))
    if version != SENS_VERSION:
        raise ValueError(f"{path}: not a ScanNet SensorData file of version {SENS_VERSION} "
                         f"(first 4 bytes read as version {version})")
    (name_len,) = struct.unpack("<Q", take(8))
    if name_len > 4096:
        raise ValueError(f"{path}: implausible sensor-name length {name_len}; not a .sens file?")
    sensor = take(name_len).decode("utf-8", "replace")
    mats = np.frombuffer(take(4 * 16 * 4), dtype="<f4").reshape(4, 4, 4).astype(np.float64)
    color_codec, depth_codec, cw, ch, dw, dh, shift, n = struct.unpack("<2i4IfQ", take(4 * 2 + 4 * 4 + 4 + 8))
    if color_codec not in COLOR_CODECS or depth_codec not in DEPTH_CODECS:
        raise ValueError(f"{path}: unsupported compression (colour {color_codec}, depth {depth_codec}); "
                         f"supported: colour {COLOR_CODECS}, depth {DEPTH_CODECS}")
    return {"sensor": sensor, "intrinsic_color": mats[0], "intrinsic_depth": mats[2],
            "color_codec": COLOR_CODECS[color_codec], "depth_codec": DEPTH_CODECS[depth_codec],
            "color_size": (cw, ch), "depth_size": (dw, dh), "depth_shift": float(shift),
            "num_frames": int(n), "frames_start": f.tell()}


def build_sens_index(path: Path) -> dict:
    """One pass over the frame headers of ``path``: ``{"header": dict, "offsets": int64 [f]
    (byte offset of each frame's colour blob), "sizes": int64 [f, 2] (colour, depth bytes),
    "poses": float32 [f, 4, 4], "timestamps": uint64 [f, 2], "complete": int}``; frames at or
    after ``complete`` lie (partly) past the end of a truncated file."""
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        header = read_sens_header(f, path)
        n = header["num_frames"]
        offsets, sizes = np.zeros(n, np.int64), np.zeros((n, 2), np.int64)
        poses, stamps = np.full((n, 4, 4), np.nan, np.float32), np.zeros((n, 2), np.uint64)
        pos, complete = header["frames_start"], 0
        for i in range(n):
            f.seek(pos)
            raw = f.read(FRAME_HEADER.size)
            if len(raw) != FRAME_HEADER.size:
                break
            vals = FRAME_HEADER.unpack(raw)
            c_bytes, d_bytes = vals[18], vals[19]
            data = pos + FRAME_HEADER.size
            if data + c_bytes + d_bytes > file_size:
                break
            poses[i] = np.asarray(vals[:16], np.float32).reshape(4, 4)
            stamps[i] = vals[16:18]
            offsets[i], sizes[i] = data, (c_bytes, d_bytes)
            pos, complete = data + c_bytes + d_bytes, i + 1
    return {"header": header, "offsets": offsets, "sizes": sizes, "poses": poses, "timestamps": stamps,
            "complete": complete}


def _default_cache_dir() -> Path:
    root = os.environ.get("GASP_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "gasp_plugin") / "sens-index"


def _cache_paths(path: Path, cache_dir: Path | None) -> list[Path]:
    """Where the index may live, in order of preference."""
    tag = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    in_cache = (cache_dir or _default_cache_dir()) / f"{path.stem}-{tag}.npz"
    if cache_dir is not None:
        return [in_cache]
    return [path.with_name(path.name + ".gasp-index.npz"), in_cache]


def _save_index(target: Path, arrays: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, target)  # atomic: a concurrent reader never sees half a file


def _load_index(target: Path, stamp: np.ndarray) -> dict | None:
    try:
        with np.load(target, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_VERSION or not np.array_equal(z["stamp"], stamp):
                return None
            index = {k: z[k] for k in ("offsets", "sizes", "poses", "timestamps")}
            index["complete"] = int(z["complete"])
            header = json.loads(str(z["header"]))
    except (OSError, ValueError, KeyError):
        return None
    for key in ("intrinsic_color", "intrinsic_depth"):
        header[key] = np.asarray(header[key], np.float64)
    index["header"] = header
    return index


def load_sens_index(path: Path, cache_dir: Path | None = None) -> tuple[dict, Path | None]:
    """The frame index of ``path``, from its cache when that is current, else built and cached.
    Returns ``(index, where it is cached or None when no cache location was writable)``."""
    st = path.stat()
    stamp = np.array([st.st_size, st.st_mtime_ns], dtype=np.int64)
    targets = _cache_paths(path, cache_dir)
    for target in targets:
        if target.is_file():
            index = _load_index(target, stamp)
            if index is not None:
                return index, target
    index = build_sens_index(path)
    header = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in index["header"].items()}
    arrays = {"version": INDEX_VERSION, "stamp": stamp, "header": json.dumps(header),
              "complete": index["complete"], **{k: index[k] for k in ("offsets", "sizes", "poses", "timestamps")}}
    for target in targets:
        try:
            _save_index(target, arrays)
            return index, target
        except OSError:
            continue
    return index, None


def _valid_intrinsics(K: np.ndarray) -> bool:
    return bool(np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0 and np.allclose(K[2], [0, 0, 1]))


class ScanNetSensScene(Scene):
    expects = "one SCENE.sens (ScanNet SensorData v4: JPEG colour, zlib uint16 depth, per-frame camera-to-world)"

    @classmethod
    def detect(cls, path: Path) -> bool:
        path = Path(path)
        if path.is_file():
            return path.suffix.lower() == ".sens"
        if not path.is_dir() or all((path / d).is_dir() for d in EXPORT_DIRS):
            return False
        return len(list(path.glob("*.sens"))) == 1

    def __init__(self, path: str | Path, cache_dir: str | Path | None = None):
        path = Path(path)
        if path.is_dir():
            found = sorted(path.glob("*.sens"))
            if len(found) != 1:
                raise ValueError(f"{path}: expected exactly one .sens file, found {[p.name for p in found]}")
            path = found[0]
        self.path = path
        self.name = path.parent.name if path.stem == path.parent.name else path.stem
        index, self.index_path = load_sens_index(path, None if cache_dir is None else Path(cache_dir))
        h = index["header"]
        self._offsets, self._sizes, self._stamps = index["offsets"], index["sizes"], index["timestamps"]
        self._poses = index["poses"].astype(np.float64)
        self.color_size, self.depth_size = tuple(h["color_size"]), tuple(h["depth_size"])
        self._codecs, self._shift = (h["color_codec"], h["depth_codec"]), h["depth_shift"]
        self._K = np.asarray(h["intrinsic_color"], np.float64)[:3, :3].copy()
        K_depth = np.asarray(h["intrinsic_depth"], np.float64)[:3, :3].copy()
        if not _valid_intrinsics(self._K):
            raise ValueError(f"{path}: the colour intrinsics in the header are not a camera matrix: {self._K.tolist()}")
        self._K_depth = K_depth if _valid_intrinsics(K_depth) else None
        self._resample = DepthResampler()
        self._file = None
        n, complete = h["num_frames"], index["complete"]
        self._n = n
        for i in range(complete, n):
            self.skipped[i] = (f"truncated file: frame {i} lies past the end of {path} "
                               f"({path.stat().st_size} bytes; {complete} of {n} frames complete)")
        for i, reason in pose_reasons(self._poses[:complete]).items():
            self.skipped[i] = reason

    def __len__(self) -> int:
        return self._n

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None  # each process (DataLoader worker) opens its own handle
        return state

    def timestamps(self, i: int) -> tuple[int, int]:
        """``(colour, depth)`` timestamps of frame ``i`` as stored (ScanNet: microseconds)."""
        return tuple(int(t) for t in self._stamps[self.check_frame(i)])

    def _blob(self, i: int, which: int) -> bytes:
        if self._file is None:
            self._file = open(self.path, "rb")
        start = int(self._offsets[i]) + (int(self._sizes[i, 0]) if which else 0)
        size = int(self._sizes[i, which])
        self._file.seek(start)
        data = self._file.read(size)
        if len(data) != size:
            raise ValueError(f"{self.path}: frame {i}: file ends inside the frame's data (was it truncated "
                             "after the index was built?)")
        return data

    def _decode_image(self, i: int) -> np.ndarray:
        data, (w, h) = self._blob(i, 0), self.color_size
        try:
            if self._codecs[0] == "raw":
                img = np.frombuffer(data, np.uint8).reshape(h, w, 3)
            else:
                from PIL import Image

                with Image.open(io.BytesIO(data)) as im:
                    img = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: frame {i}: cannot decode the {self._codecs[0]} colour image: {exc}") from exc
        if img.shape[:2] != (h, w):
            raise ValueError(f"{self.path}: frame {i}: colour image is {img.shape[1]}x{img.shape[0]}, the header "
                             f"says {w}x{h}")
        return img

    def _decode_depth(self, i: int) -> np.ndarray:
        data, (w, h) = self._blob(i, 1), self.depth_size
        try:
            raw = zlib.decompress(data) if self._codecs[1] == "zlib_ushort" else data
        except zlib.error as exc:
            raise ValueError(f"{self.path}: frame {i}: cannot decompress the zlib depth map: {exc}") from exc
        if len(raw) != 2 * w * h:
            raise ValueError(f"{self.path}: frame {i}: depth map has {len(raw) // 2} values, the header says "
                             f"{w}x{h} = {w * h}")
        depth = np.frombuffer(raw, "<u2").reshape(h, w).astype(np.float32) / np.float32(self._shift)
        return self._resample(depth, self._K, self.color_size, self._K_depth, source=f"{self.path} frame {i}")

    def image(self, i: int) -> np.ndarray:
        i = self.check_frame(i)
        return self.read_or_skip(i, lambda: self._decode_image(i))

    def depth(self, i: int) -> np.ndarray:
        i = self.check_frame(i)
        return self.read_or_skip(i, lambda: self._decode_depth(i))

    def image_size(self, i: int) -> tuple[int, int]:
        return self.color_size

    def intrinsics(self, i: int) -> np.ndarray:
        self.check_frame(i)
        return self._K.copy()

    def pose(self, i: int) -> np.ndarray:
        return self._poses[self.check_frame(i)].copy()
