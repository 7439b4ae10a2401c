"""Scenes: posed RGB-D frame sequences, read from disk through a registry of folder layouts.

Every reader returns the same :class:`Scene` interface, in one set of conventions:
images ``uint8 [h, w, 3]`` RGB; depth ``float32 [h, w]`` metres along z, ``0`` = invalid,
resampled to the image resolution; intrinsics ``float64 [3, 3]`` for the image resolution;
poses ``float64 [4, 4]`` camera-to-world, OpenCV axes (x right, y down, z forward).

Frames are indexed ``0 .. len(scene) - 1`` in the order the layout defines. Frames a reader
cannot use (non-finite or non-rigid pose, missing or unreadable file) stay indexed but are listed
in ``scene.skipped`` (frame -> reason) and left out of ``scene.valid_frames``; reading one raises
``ValueError`` with the reason. Shape notation: ``f`` frames, ``h, w`` image size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import numpy as np

__all__ = ["Scene", "Clip", "open_scene", "open_scenes", "detect_layouts", "register_reader", "known_layouts",
           "READERS"]


class Scene(ABC):
    """A posed RGB-D sequence. Frames are addressed by index ``0 .. len(scene) - 1``."""

    name: str = ""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def image(self, i: int) -> np.ndarray:
        """``uint8 [h, w, 3]`` RGB of frame ``i``."""

    @abstractmethod
    def depth(self, i: int) -> np.ndarray:
        """``float32 [h, w]`` depth in metres at the image resolution; 0 where invalid."""

    @abstractmethod
    def intrinsics(self, i: int) -> np.ndarray:
        """``float64 [3, 3]`` pinhole intrinsics for the image resolution."""

    @abstractmethod
    def pose(self, i: int) -> np.ndarray:
        """``float64 [4, 4]`` camera-to-world pose of frame ``i``."""

    @property
    def skipped(self) -> dict[int, str]:
        """Frames the reader will not serve, with the reason (filled by readers)."""
        if "_skipped" not in self.__dict__:
            self._skipped: dict[int, str] = {}
        return self._skipped

    @property
    def valid_frames(self) -> list[int]:
        """Indices of the frames that can be read."""
        bad = self.skipped
        return [i for i in range(len(self)) if i not in bad]

    def check_frame(self, i: int) -> int:
        """Return ``i`` if it names a usable frame, else raise ``IndexError`` / ``ValueError``."""
        n = len(self)
        if not isinstance(i, (int, np.integer)) or not 0 <= int(i) < n:
            raise IndexError(f"scene {self.name!r}: frame {i!r} out of range [0, {n})")
        if int(i) in self.skipped:
            raise ValueError(f"scene {self.name!r}: frame {int(i)} is skipped: {self.skipped[int(i)]}")
        return int(i)

    def read_or_skip(self, i: int, fn):
        """``fn()``; when it raises ``ValueError`` (an unreadable file), frame ``i`` is marked skipped
        with the message (never served again; the sampler counts it) and the error re-raised."""
        try:
            return fn()
        except ValueError as exc:
            self.skipped[int(i)] = str(exc)
            raise

    def images(self, ids: list[int]) -> np.ndarray:
        """``uint8 [f, h, w, 3]`` for frames ``ids`` (readers may decode them in one batch)."""
        return np.stack([self.image(i) for i in ids])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, frames={len(self)}, "
                f"skipped={len(self.skipped)})")


@dataclass
class Clip:
    """A few frames of one scene, loaded: the unit a geometry batch is built from.

    Attributes:
        images: ``uint8 [f, h, w, 3]``.
        depth: ``float32 [f, h, w]`` metres, 0 = invalid.
        intrinsics: ``float64 [f, 3, 3]``.
        poses: ``float64 [f, 4, 4]`` camera-to-world.
        frame_ids: the scene frame index of each row.
        anchor: the row of the anchor frame.
        scene: the scene's name.
    """

    images: np.ndarray
    depth: np.ndarray
    intrinsics: np.ndarray
    poses: np.ndarray
    frame_ids: list[int]
    anchor: int = 0
    scene: str = ""


# layout name -> "module:Class". A reader class provides ``detect(path) -> bool`` (a classmethod
# that only looks at file names), ``expects`` (one line describing the layout) and a constructor
# taking the folder. Modules are imported only when a layout is detected or opened.
READERS: dict[str, str] = {
    "hololens": "gasp_plugin.data.readers.hololens:HololensScene",
    "scannet": "gasp_plugin.data.readers.scannet:ScanNetScene",
    "7scenes": "gasp_plugin.data.readers.sevenscenes:SevenScenesScene",
    "video": "gasp_plugin.data.readers.video:VideoScene",
    "scannet-sens": "gasp_plugin.data.readers.scannet_sens:ScanNetSensScene",
    "nerfstudio": "gasp_plugin.data.readers.nerfstudio:NerfstudioScene",
    "arkitscenes": "gasp_plugin.data.readers.arkitscenes:ARKitScenesScene",
    "colmap": "gasp_plugin.data.readers.colmap:ColmapScene",
    "scannetpp-iphone": "gasp_plugin.data.readers.scannetpp:ScanNetPPScene",
}


# scene-index files (``gasp data index``): ``is_scene_index(path)`` and ``scenes_from_index(path)``
INDEX_MODULE = "gasp_plugin.data.index"


def register_reader(name: str, target: str, readers: dict[str, str] = READERS) -> None:
    """Register a reader ``"module:Class"`` under layout ``name``; duplicates are rejected."""
    if name in readers:
        raise ValueError(f"reader layout {name!r} is already registered ({readers[name]})")
    if ":" not in target:
        raise ValueError(f"reader target must look like 'package.module:Class', got {target!r}")
    readers[name] = target


def _reader_class(name: str, readers: dict[str, str] = READERS):
    if name not in readers:
        raise ValueError(f"unknown scene layout {name!r}; known layouts: {sorted(readers)}")
    module, cls = readers[name].split(":")
    return getattr(import_module(module), cls)


def known_layouts(readers: dict[str, str] = READERS) -> dict[str, str]:
    """Layout name -> what that layout expects on disk."""
    return {name: _reader_class(name, readers).expects for name in readers}


def detect_layouts(path: str | Path) -> list[str]:
    """The registered layouts whose reader recognises ``path`` (by file names only)."""
    return [name for name in READERS if _reader_class(name).detect(Path(path))]


def open_scene(path: str | Path, layout: str | None = None, **kwargs) -> Scene:
    """Open the scene in folder ``path``, detecting its layout (or using ``layout``).

    Extra keyword arguments go to the reader. Raises ``FileNotFoundError`` for a missing path and
    ``ValueError`` naming the known layouts when none (or several) match.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene path does not exist: {path}")
    if layout is not None:
        return _reader_class(layout)(path, **kwargs)
    matches = detect_layouts(path)
    if not matches:
        lines = "\n".join(f"  {n}: {e}" for n, e in known_layouts().items())
        raise ValueError(f"{path}: unknown scene layout; known layouts and what each expects:\n{lines}")
    if len(matches) > 1:
        raise ValueError(f"{path}: matches several layouts {matches}; pass layout=... to choose")
    return _reader_class(matches[0])(path, **kwargs)


def _try_open(path: Path) -> tuple[Scene | None, Exception | None]:
    try:
        return open_scene(path), None
    except (ValueError, FileNotFoundError) as err:
        return None, err


def open_scenes(paths, what: str = "scenes") -> list[Scene]:
    """Scenes from folders or scene indexes: a folder a reader recognises is one scene; otherwise
    each of its immediate sub-folders that a reader recognises is (sorted by name; unreadable ones
    are skipped with a warning). A scene-index file (``gasp data index``, see
    :mod:`gasp_plugin.data.index`) gives its scenes, sorted by path, opened lazily. ``what`` names
    the option in error messages (e.g. ``"--scenes"``)."""
    import logging

    index = import_module(INDEX_MODULE)  # by name, like the readers: the index module builds on this one
    scenes = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{what}: {p} does not exist")
        if index.is_scene_index(p):
            indexed = index.scenes_from_index(p)
            if not indexed:
                raise ValueError(f"{what}: the scene index {p} lists no readable scene")
            scenes.extend(indexed)
            continue
        scene, err = _try_open(p)
        if scene is not None:
            scenes.append(scene)
            continue
        subs = sorted(q for q in p.iterdir() if q.is_dir()) if p.is_dir() else []
        opened = [(q, *_try_open(q)) for q in subs]
        inner = [sc for _, sc, _ in opened if sc is not None]
        if not inner:
            raise ValueError(f"{what}: {p} is neither a scene nor a folder of scenes ({err})")
        for q, sc, sub_err in opened:
            if sc is None:
                logging.getLogger(__name__).warning(
                    "%s: skipping %s, not a readable scene (%s)", what, q, str(sub_err).splitlines()[0])
        scenes.extend(inner)
    return scenes
