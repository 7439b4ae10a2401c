"""Scenes: posed RGB-D frame sequences, read from disk through a registry of folder layouts.

Every reader returns the same :class:`Scene` interface, in one set of conventions:
images ``uint8 [h, w, 3]`` RGB; depth ``float32 [h, w]`` metres along z, ``0`` = invalid,
resampled to the image resolution; intrinsics ``float64 [3, 3]`` for the image resolution;
poses ``float64 [4, 4]`` camera-to-world, OpenCV axes (x right, y down, z forward).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Scene", "Clip"]


class Scene(ABC):
    """A posed RGB-D sequence. Frames are addressed by index ``0 .. len(scene) - 1``."""

    name: str

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
    meta: dict = field(default_factory=dict)
