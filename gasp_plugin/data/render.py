"""Analytic ray casting and solid texturing of a box room with box occluders (float64 numpy:
single-threaded and predictable on a shared machine, and as fast as torch for these sizes).

World frame: z up, metres; the room is the box ``[0, Lx] x [0, Ly] x [0, Lz]`` seen from inside.
Cameras follow :mod:`gasp_plugin.geometry.camera` (OpenCV axes, camera-to-world poses, pixel
centres at integers). Rays are cast with directions whose camera-frame z is 1, so the hit
distance ``t`` along a ray *is* the depth. Texture is a function of the 3D surface point (and the
surface it lies on), so a point has the same colour in every view.

Shape notation: ``n`` rays, ``b`` boxes, ``h, w`` image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Box", "Room", "look_at", "pixel_rays", "raycast", "shade"]

_BIG = 1e12


@dataclass(frozen=True)
class Box:
    """A solid box: ``centre`` (x, y, z), ``half`` extents, ``yaw`` about the world z axis (radians)."""

    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float = 0.0


@dataclass(frozen=True)
class Room:
    """The room's size ``(Lx, Ly, Lz)``, its boxes, and per-surface base colours (RGB in [0, 1];
    surfaces 0-5 are the walls/floor/ceiling ``-x, +x, -y, +y, floor, ceiling``, then one per box)."""

    size: tuple[float, float, float]
    boxes: tuple[Box, ...]
    colours: tuple[tuple[float, float, float], ...]
    texture_seed: int = 0
    light: tuple[float, float, float] | None = None  # a point light; default: below the ceiling centre


def look_at(eye, target, roll: float = 0.0) -> np.ndarray:
    """``float64 [4, 4]`` camera-to-world pose at ``eye`` looking at ``target`` (world z up),
    rotated by ``roll`` radians about the viewing direction."""
    eye, target = np.asarray(eye, np.float64), np.asarray(target, np.float64)
    f = target - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0.0, 0.0, 1.0])
    if np.linalg.norm(r) < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to the world up axis")
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    c, s = np.cos(roll), np.sin(roll)
    r, d = c * r + s * d, -s * r + c * d
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = r, d, f, eye
    return T


def pixel_rays(K: np.ndarray, pose: np.ndarray, height: int, width: int):
    """Rays through pixel centres: ``(origin [3], dirs [h*w, 3])`` in world coordinates, each
    direction with camera-frame z = 1 (raster order)."""
    v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    y = (v.reshape(-1) - K[1, 2]) / K[1, 1]
    x = (u.reshape(-1) - K[0, 2] - K[0, 1] * y) / K[0, 0]
    cam = np.stack([x, y, np.ones_like(x)], -1)
    return pose[:3, 3].copy(), cam @ pose[:3, :3].T


def _safe(d: np.ndarray) -> np.ndarray:
    return np.where(np.abs(d) < 1e-12, 1e-12, d)


def _yaw(box: Box) -> np.ndarray:
    c, s = np.cos(box.yaw), np.sin(box.yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def raycast(room: Room, origin, dirs):
    """First hit of each ray ``origin + t * dirs`` (``origin [3]`` or ``[n, 3]``, ``dirs [n, 3]``).

    Returns ``(t [n], surface [n] int64, normal [n, 3])``: hit parameter, surface index (see
    :class:`Room`), and the surface normal facing the ray.
    """
    dirs = np.asarray(dirs, dtype=np.float64)
    n = dirs.shape[0]
    o = np.broadcast_to(np.asarray(origin, dtype=np.float64), (n, 3))
    size = np.asarray(room.size, dtype=np.float64)
    d = _safe(dirs)
    rows = np.arange(n)
    # room, from inside: leave through the nearest wall
    t_axis = (np.where(d > 0, size, 0.0) - o) / d  # [n, 3]
    axis = t_axis.argmin(-1)
    t = t_axis[rows, axis]
    surface = 2 * axis + (d[rows, axis] > 0)
    normal = np.zeros((n, 3))
    normal[rows, axis] = -np.sign(d[rows, axis])
    for j, box in enumerate(room.boxes):
        R = _yaw(box)
        half = np.asarray(box.half)
        o_l = (o - np.asarray(box.centre)) @ R  # world -> box frame
        d_l = _safe(dirs @ R)
        t1, t2 = (-half - o_l) / d_l, (half - o_l) / d_l
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        face = near.argmax(-1)
        t_in = near[rows, face]
        hit = (t_in <= far.min(-1)) & (t_in > 1e-9) & (t_in < t)
        if hit.any():
            n_l = np.zeros((n, 3))
            n_l[rows, face] = -np.sign(d_l[rows, face])
            t = np.where(hit, t_in, t)
            surface = np.where(hit, 6 + j, surface)
            normal = np.where(hit[:, None], n_l @ R.T, normal)
    return t, surface.astype(np.int64), normal


def _hash(ix, iy, iz, seed, channels: int) -> np.ndarray:
    """Deterministic integer hash of lattice coordinates: ``[n, channels]`` floats in [0, 1).

    32-bit arithmetic (numpy's uint32 products wrap mod 2**32), bit for bit the same values as
    the 64-bit products masked to 32 bits that generator version 1 computed, in about 2/3 of the
    time."""
    u = np.uint32
    h = (ix.astype(u) * u(73856093)) ^ (iy.astype(u) * u(19349663)) ^ (iz.astype(u) * u(83492791))
    h = h ^ (seed.astype(u) * u(668265261))
    h = h[:, None] ^ (np.arange(channels, dtype=u) * u(0x5BD1E995))
    for _ in range(2):
        h = (h ^ (h >> u(16))) * u(0x45D9F3B)
    h = h ^ (h >> u(16))
    return h.astype(np.float64) * (1.0 / float(1 << 32))


def value_noise(p: np.ndarray, freq: float, seed: np.ndarray, channels: int) -> np.ndarray:
    """Smooth (C1) value noise of points ``p [n, 3]`` at ``freq`` cells per metre: ``[n, channels]``
    in [0, 1]; ``seed [n]`` int selects an independent field per point (per surface)."""
    q = p * freq
    base = np.floor(q)
    fr = q - base
    wgt = fr * fr * (3 - 2 * fr)
    ib = base.astype(np.int64)
    out = np.zeros((p.shape[0], channels))
    for corner in range(8):
        cx, cy, cz = corner & 1, (corner >> 1) & 1, (corner >> 2) & 1
        w = ((wgt[:, 0] if cx else 1 - wgt[:, 0]) * (wgt[:, 1] if cy else 1 - wgt[:, 1])
             * (wgt[:, 2] if cz else 1 - wgt[:, 2]))
        out += w[:, None] * _hash(ib[:, 0] + cx, ib[:, 1] + cy, ib[:, 2] + cz, seed, channels)
    return out


def _local_point(room: Room, x: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """Texture coordinates: world coordinates on the room, box-frame coordinates on boxes (so a
    box's pattern belongs to the box)."""
    local = x.copy()
    for j, box in enumerate(room.boxes):
        m = surface == 6 + j
        if m.any():
            local[m] = (x[m] - np.asarray(box.centre)) @ _yaw(box)
    return local


def shade(room: Room, x: np.ndarray, surface: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] ``[n, 3]`` of surface points ``x [n, 3]``: a per-surface base colour, multi-scale
    coloured value noise, saturated spots, and view-independent Lambertian light."""
    p = _local_point(room, x, surface)
    seed = (surface * 7919 + room.texture_seed * 104729) & 0x7FFFFFF
    base = np.asarray(room.colours, dtype=np.float64)[surface]
    low = value_noise(p, 0.8, seed, 3)
    mid = value_noise(p, 2.5, seed + 1, 3)
    fine = value_noise(p, 7.0, seed + 2, 1)
    rgb = (0.45 * base + 0.3 * low + 0.25 * mid) * (0.6 + 0.8 * fine)
    spots = value_noise(p, 3.5, seed + 3, 1)
    spot_colour = value_noise(p, 0.6, seed + 4, 3)
    spot_colour = (spot_colour - spot_colour.mean(1, keepdims=True)) * 2.5 + 0.5
    a = np.clip((spots - 0.62) / 0.06, 0, 1)
    rgb = (1 - a) * rgb + a * spot_colour
    light = np.asarray(room.light if room.light else (room.size[0] / 2, room.size[1] / 2, room.size[2] * 0.9))
    to_light = light - x
    lam = (normal * to_light).sum(-1, keepdims=True) / np.maximum(np.linalg.norm(to_light, axis=-1, keepdims=True), 1e-9)
    return np.clip(rgb * (0.55 + 0.45 * np.clip(lam, 0, 1)), 0, 1)
