"""Procedural posed RGB-D scenes: a solid-textured room with box occluders, seen along a smooth
camera path, with exact depth (analytic ray casting, :mod:`gasp_plugin.data.render`).

The default data of tests and of the demo. Everything is a function of ``(config, seed)``.
Texture is a function of the 3D surface point (consistent across views) and locally distinctive
(multi-scale coloured noise and spots, different per surface and per box). The camera orbits
inside the room on an ellipse, looking across it at a wandering target, with a small roll: pose
changes in rotation and translation. ``speed_deg`` (orbit degrees per frame) sets how fast the view
changes; :func:`covisibility` measures the co-visible fraction of anchor grid points against frame
gap (defaults: about 0.9 at gap 1 and 0.55 at gap 8; see ``gasp bench tracks --covisibility``).

    scene = make_synthetic_scene(SyntheticSceneConfig(), seed=0)    # in memory, exact float depth
    write_scene(scene, "scenes/s0")                                   # hololens layout on disk
    paths = generate_scenes("scenes", count=8, seed=0)

Shape notation: ``f`` frames, ``h, w`` image size.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from gasp_plugin.data.render import Box, Room, look_at, pixel_rays, raycast, shade
from gasp_plugin.data.scene import Scene

__all__ = ["SyntheticSceneConfig", "SyntheticScene", "make_synthetic_scene", "write_scene",
           "generate_scenes", "covisibility"]

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """How synthetic scenes look and move. Ranges ``(lo, hi)`` are sampled per scene from the seed.

    Attributes:
        height, width: image size in pixels.
        num_frames: frames per scene.
        fov_deg: horizontal field of view (square pixels, principal point at the image centre).
        room_size: nominal room ``(x, y, z)`` in metres, each scaled by ``1 +- room_jitter``.
        num_boxes: range of the number of box occluders.
        box_side, box_height: ranges of box footprint sides and heights, metres.
        speed_deg: orbit angle per frame in degrees (scaled by 0.85-1.15 per scene): the knob for
            how much consecutive frames overlap.
        orbit: orbit ellipse semi-axes as a fraction of the room's half sizes.
        camera_height: range of the camera's height above the floor, metres.
        roll_deg: amplitude of the camera roll.
        supersample: colour samples per pixel side (anti-aliasing); depth is at pixel centres.
    """

    height: int = 224
    width: int = 224
    num_frames: int = 32
    fov_deg: float = 60.0
    room_size: tuple[float, float, float] = (6.0, 5.0, 3.0)
    room_jitter: float = 0.15
    num_boxes: tuple[int, int] = (4, 7)
    box_side: tuple[float, float] = (0.35, 1.1)
    box_height: tuple[float, float] = (0.3, 1.7)
    speed_deg: float = 3.5
    orbit: float = 0.55
    camera_height: tuple[float, float] = (1.2, 1.8)
    roll_deg: float = 4.0
    supersample: int = 1

    def __post_init__(self):
        def bad(name, allowed):
            err = ValueError(f"SyntheticSceneConfig.{name}: expected {allowed}, got {getattr(self, name)!r}")
            err.field = name  # a recipe names the key path, see gasp_plugin.recipe.schema
            raise err

        for name in ("height", "width"):
            if not _is_int(getattr(self, name)) or not 16 <= getattr(self, name) <= 4096:
                bad(name, "an integer in [16, 4096]")
        if not _is_int(self.num_frames) or self.num_frames < 2:
            bad("num_frames", "an integer >= 2")
        for name in ("fov_deg", "room_jitter", "speed_deg", "orbit", "roll_deg"):
            if not _is_number(getattr(self, name)):
                bad(name, "a number")
        if not 10 <= self.fov_deg <= 150:
            bad("fov_deg", "degrees in [10, 150]")
        if not _is_numbers(self.room_size, 3) or min(self.room_size) < 2.0:
            bad("room_size", "three sizes of at least 2 m")
        if not 0 <= self.room_jitter < 0.5:
            bad("room_jitter", "a fraction in [0, 0.5)")
        for name, lo_min in (("num_boxes", 0), ("box_side", 0.05), ("box_height", 0.05),
                             ("camera_height", 0.3)):
            value = getattr(self, name)
            ints = name == "num_boxes"
            if not _is_numbers(value, 2, ints) or not lo_min <= value[0] <= value[1]:
                bad(name, f"a range ({'ints ' if ints else ''}lo, hi) with {lo_min} <= lo <= hi")
        if self.camera_height[1] > self.room_size[2] * (1 - self.room_jitter) - 0.3:
            bad("camera_height", "heights at least 0.3 m below the lowest possible ceiling")
        if not 0 <= self.speed_deg <= 45:
            bad("speed_deg", "degrees per frame in [0, 45]")
        if not 0.1 <= self.orbit <= 0.85:
            bad("orbit", "a fraction of the half room size in [0.1, 0.85]")
        if not 0 <= self.roll_deg <= 45:
            bad("roll_deg", "degrees in [0, 45]")
        if not _is_int(self.supersample) or not 1 <= self.supersample <= 4:
            bad("supersample", "an integer in [1, 4]")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_numbers(value, length: int, ints: bool = False) -> bool:
    """``value`` is a tuple or list of ``length`` numbers (ints when ``ints``)."""
    check = _is_int if ints else _is_number
    return isinstance(value, (tuple, list)) and len(value) == length and all(check(v) for v in value)


class SyntheticScene(Scene):
    """An in-memory scene rendered on demand (and cached) from a :class:`Room` and camera poses.

    Args:
        room: geometry and texture. poses: ``[f, 4, 4]`` camera-to-world. K: ``[3, 3]``.
        height, width: image size. supersample: colour samples per pixel side.
    """

    def __init__(self, room: Room, poses: np.ndarray, K: np.ndarray, height: int, width: int,
                 supersample: int = 1, name: str = "synthetic"):
        self.room, self.name = room, name
        self._poses = np.asarray(poses, dtype=np.float64)
        self._K = np.asarray(K, dtype=np.float64)
        self.height, self.width, self.supersample = int(height), int(width), int(supersample)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._poses)

    def render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(uint8 [h, w, 3], float32 [h, w])`` of frame ``i`` (cached)."""
        i = self.check_frame(i)
        if i not in self._cache:
            self._cache[i] = render_frame(self.room, self._K, self._poses[i], self.height,
                                          self.width, self.supersample)
        return self._cache[i]

    def image(self, i: int) -> np.ndarray:
        return self.render(i)[0]

    def depth(self, i: int) -> np.ndarray:
        return self.render(i)[1]

    def intrinsics(self, i: int) -> np.ndarray:
        self.check_frame(i)
        return self._K.copy()

    def pose(self, i: int) -> np.ndarray:
        return self._poses[self.check_frame(i)].copy()

    def raycast(self, origin, dirs):
        """Exact first hits of world rays, numpy ``(t, surface, normal)`` (see
        :func:`gasp_plugin.data.render.raycast`)."""
        return raycast(self.room, origin, dirs)


def render_frame(room: Room, K: np.ndarray, pose: np.ndarray, height: int, width: int,
                 supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: ``(uint8 [h, w, 3], float32 [h, w])`` exact depth at pixel centres."""
    origin, dirs = pixel_rays(K, pose, height, width)
    t, surface, normal = raycast(room, origin, dirs)
    depth = t.reshape(height, width).astype(np.float32)
    rgb = np.zeros((height * width, 3))
    offsets = [(k + 0.5) / supersample - 0.5 for k in range(supersample)]
    for dy in offsets:
        for dx in offsets:
            if supersample == 1:
                ts, ss, ns, ds = t, surface, normal, dirs
            else:
                Ks = np.array(K, dtype=np.float64, copy=True)
                Ks[0, 2] -= dx
                Ks[1, 2] -= dy  # rays through (u + dx, v + dy)
                _, ds = pixel_rays(Ks, pose, height, width)
                ts, ss, ns = raycast(room, origin, ds)
            rgb += shade(room, origin + ts[:, None] * ds, ss, ns)
    rgb /= supersample ** 2
    image = np.clip(rgb.reshape(height, width, 3) * 255 + 0.5, 0, 255).astype(np.uint8)
    return image, depth


def _hsv_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.3, 0.75), rng.uniform(0.45, 0.9))


def _camera_path(cfg: SyntheticSceneConfig, size, rng: np.random.Generator) -> np.ndarray:
    """``[f, 4, 4]`` poses on an elliptic orbit looking across the room at a wandering target."""
    lx, ly, lz = size
    cx, cy = lx / 2, ly / 2
    phase = rng.uniform(0, 2 * np.pi, size=5)
    step = math.radians(cfg.speed_deg) * rng.uniform(0.85, 1.15) * rng.choice([-1.0, 1.0])
    h_lo, h_hi = cfg.camera_height
    poses = []
    for k in range(cfg.num_frames):
        s = phase[0] + step * k
        eye = (cx + cfg.orbit * cx * math.cos(s), cy + cfg.orbit * cy * math.sin(s),
               (h_lo + h_hi) / 2 + (h_hi - h_lo) / 2 * math.sin(1.7 * s + phase[1]))
        target = (cx + 0.3 * cx * math.cos(phase[2] - 1.3 * s), cy + 0.3 * cy * math.sin(phase[3] - 0.9 * s),
                  0.35 * lz + 0.15 * lz * math.sin(0.8 * s + phase[4]))
        roll = math.radians(cfg.roll_deg) * math.sin(2.1 * s + phase[4])
        poses.append(look_at(eye, target, roll))
    return np.stack(poses)


def _place_boxes(cfg: SyntheticSceneConfig, size, rng, poses: np.ndarray) -> list[Box]:
    """Boxes on the floor, anywhere at least 0.5 m (footprint radius included) from the camera
    path, not overlapping each other."""
    lx, ly, _ = size
    orbit = np.linspace(0, 2 * np.pi, 180)
    path = np.stack([lx / 2 + cfg.orbit * lx / 2 * np.cos(orbit), ly / 2 + cfg.orbit * ly / 2 * np.sin(orbit)], 1)
    path = np.concatenate([path, poses[:, :2, 3]])
    want = int(rng.integers(cfg.num_boxes[0], cfg.num_boxes[1] + 1))
    boxes: list[Box] = []
    for _ in range(200):
        if len(boxes) == want:
            break
        half = np.array([rng.uniform(*cfg.box_side) / 2, rng.uniform(*cfg.box_side) / 2,
                         rng.uniform(*cfg.box_height) / 2])
        radius = float(np.hypot(half[0], half[1]))
        centre = np.array([rng.uniform(radius + 0.1, lx - radius - 0.1) if lx > 2 * radius + 0.2 else lx / 2,
                           rng.uniform(radius + 0.1, ly - radius - 0.1) if ly > 2 * radius + 0.2 else ly / 2,
                           half[2]])
        if np.min(np.linalg.norm(path - centre[:2], axis=1)) < radius + 0.5:
            continue
        if any(np.hypot(*(centre[:2] - np.array(b.centre[:2]))) < radius + np.hypot(*b.half[:2]) for b in boxes):
            continue
        boxes.append(Box(tuple(centre), tuple(half), float(rng.uniform(0, np.pi / 2))))
    return boxes


def make_synthetic_scene(config: SyntheticSceneConfig | None = None, seed: int = 0,
                         name: str | None = None) -> SyntheticScene:
    """A new scene from ``(config, seed)``; frames are rendered when first read."""
    cfg = config or SyntheticSceneConfig()
    rng = np.random.default_rng(seed)
    size = tuple(float(s * rng.uniform(1 - cfg.room_jitter, 1 + cfg.room_jitter)) for s in cfg.room_size)
    poses = _camera_path(cfg, size, rng)
    boxes = _place_boxes(cfg, size, rng, poses)
    colours = tuple(_hsv_colour(rng) for _ in range(6 + len(boxes)))
    room = Room(size=size, boxes=tuple(boxes), colours=colours, texture_seed=int(rng.integers(1 << 20)))
    f = cfg.width / 2 / math.tan(math.radians(cfg.fov_deg) / 2)
    K = np.array([[f, 0, (cfg.width - 1) / 2], [0, f, (cfg.height - 1) / 2], [0, 0, 1]])
    return SyntheticScene(room, poses, K, cfg.height, cfg.width, cfg.supersample,
                          name=name or f"synthetic-{seed}")


def write_scene(scene: Scene, folder: str | Path, extra: dict | None = None) -> Path:
    """Write any scene in the hololens layout (images/*.png, depth/*.png uint16 mm, K.txt,
    poses.txt) so that :func:`gasp_plugin.data.open_scene` reads it back; depth beyond 65.535 m
    is written as 0 (invalid). The first frame's intrinsics are written: they must be shared."""
    from PIL import Image

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "depth").mkdir(exist_ok=True)
    K0 = scene.intrinsics(0)
    poses = []
    for i in range(len(scene)):
        if not np.allclose(scene.intrinsics(i), K0):
            raise ValueError(f"write_scene: frame {i} has other intrinsics than frame 0; the hololens "
                             "layout has one K.txt")
        # zlib level 1: 10x faster to write than the default 6, files about 15% larger, read as fast
        Image.fromarray(scene.image(i)).save(folder / "images" / f"{i:05d}.png", compress_level=1)
        mm = np.round(scene.depth(i).astype(np.float64) * 1000)
        mm[~np.isfinite(mm) | (mm > 65535) | (mm < 0)] = 0
        Image.fromarray(mm.astype(np.uint16)).save(folder / "depth" / f"{i:05d}.png", compress_level=1)
        poses.append(scene.pose(i).reshape(-1))
    np.savetxt(folder / "K.txt", K0)
    np.savetxt(folder / "poses.txt", np.stack(poses))
    if extra is not None:
        (folder / "scene.json").write_text(json.dumps(extra, indent=2))
    return folder


def generate_scenes(out_dir: str | Path, count: int, seed: int = 0,
                    config: SyntheticSceneConfig | None = None, progress: bool = True,
                    only: Iterable[int] | None = None) -> list[Path]:
    """Write ``count`` scenes ``out_dir/synthetic-{seed}-{k:03d}`` (scene seeds derived from
    ``(seed, k)``). A folder whose ``scene.json`` records the same config, seed and generator
    version is reused, so repeated calls are cheap. ``only``: make and return just the scenes of
    these indices ``k`` (e.g. ``range(0, count, 2)`` and ``range(1, count, 2)`` in two processes)."""
    from tqdm.auto import tqdm

    cfg = config or SyntheticSceneConfig()
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"generate_scenes: count must be a positive integer, got {count!r}")
    indices = range(count) if only is None else sorted(set(only))
    bad = [k for k in indices if not 0 <= k < count]
    if bad:
        raise ValueError(f"generate_scenes: indices {bad} are outside range({count})")
    out = []
    for k in tqdm(indices, desc="synthetic scenes", disable=not progress):
        scene_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        record = {"generator_version": GENERATOR_VERSION, "seed": scene_seed, "config": asdict(cfg)}
        folder = Path(out_dir) / f"synthetic-{seed}-{k:03d}"
        meta = folder / "scene.json"
        if meta.is_file() and json.loads(meta.read_text()) == json.loads(json.dumps(record)):
            out.append(folder)
            continue
        scene = make_synthetic_scene(cfg, scene_seed, name=folder.name)
        out.append(write_scene(scene, folder, extra=record))
    return out


def covisibility(scene: Scene, gaps, grid: int = 8, max_anchors: int = 8) -> dict[int, float]:
    """Mean fraction of an anchor's grid points (with valid depth) visible ``gap`` frames later,
    over up to ``max_anchors`` evenly spaced anchors, for each gap."""
    import torch

    from gasp_plugin.geometry.tracks import compute_tracks

    out = {}
    for gap in gaps:
        anchors = np.arange(0, len(scene) - gap)
        if len(anchors) == 0:
            continue
        anchors = anchors[np.linspace(0, len(anchors) - 1, min(max_anchors, len(anchors))).round().astype(int)]
        fr = []
        for a in anchors:
            ids = [int(a), int(a) + gap]
            t = compute_tracks(torch.from_numpy(np.stack([scene.depth(i) for i in ids])),
                               torch.from_numpy(np.stack([scene.intrinsics(i) for i in ids])),
                               torch.from_numpy(np.stack([scene.pose(i) for i in ids])), 0, grid=grid)
            fr.append(float(t.visible[1].float().mean()) if t.num_points else 0.0)
        out[int(gap)] = float(np.mean(fr))
    return out
