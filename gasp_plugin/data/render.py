"""Analytic ray casting and solid texturing of a box room with box occluders (float64 torch).

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
import torch

__all__ = ["Box", "Room", "look_at", "pixel_rays", "raycast", "shade"]

_BIG = 1e12
_M32 = 0xFFFFFFFF


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


def pixel_rays(K: torch.Tensor, pose: torch.Tensor, height: int, width: int):
    """Rays through pixel centres: ``(origin [3], dirs [h*w, 3])`` in world coordinates, each
    direction with camera-frame z = 1 (raster order)."""
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                          torch.arange(width, dtype=torch.float64), indexing="ij")
    y = (v.reshape(-1) - K[1, 2]) / K[1, 1]
    x = (u.reshape(-1) - K[0, 2] - K[0, 1] * y) / K[0, 0]
    cam = torch.stack([x, y, torch.ones_like(x)], -1)
    return pose[:3, 3], cam @ pose[:3, :3].T


def _safe(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)


def raycast(room: Room, origin: torch.Tensor, dirs: torch.Tensor):
    """First hit of each ray ``origin + t * dirs`` (``origin [3]`` or ``[n, 3]``, ``dirs [n, 3]``).

    Returns ``(t [n], surface [n] long, normal [n, 3])``: hit parameter (``_BIG``-ish where nothing
    is hit, which cannot happen from inside the room), surface index, and outward surface normal.
    """
    n = dirs.shape[0]
    o = origin.expand(n, 3)
    size = torch.tensor(room.size, dtype=torch.float64)
    d = _safe(dirs)
    # room, from inside: leave through the nearest wall
    bound = torch.where(d > 0, size, torch.zeros_like(size))
    t_axis = (bound - o) / d  # [n, 3]
    t, axis = t_axis.min(-1)
    surface = 2 * axis + (d.gather(1, axis[:, None])[:, 0] > 0).long()
    normal = torch.zeros(n, 3, dtype=torch.float64)
    normal.scatter_(1, axis[:, None], -torch.sign(d.gather(1, axis[:, None])))
    for j, box in enumerate(room.boxes):
        c, s = np.cos(box.yaw), np.sin(box.yaw)
        R = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        half = torch.tensor(box.half, dtype=torch.float64)
        o_l = (o - torch.tensor(box.centre, dtype=torch.float64)) @ R  # world -> box frame
        d_l = _safe(dirs @ R)
        t1, t2 = (-half - o_l) / d_l, (half - o_l) / d_l
        near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
        t_in, face = near.max(-1)
        hit = (t_in <= far.min(-1).values) & (t_in > 1e-9) & (t_in < t)
        if hit.any():
            n_l = torch.zeros(n, 3, dtype=torch.float64)
            n_l.scatter_(1, face[:, None], -torch.sign(d_l.gather(1, face[:, None])))
            t = torch.where(hit, t_in, t)
            surface = torch.where(hit, torch.full_like(surface, 6 + j), surface)
            normal = torch.where(hit[:, None], n_l @ R.T, normal)
    return t, surface, normal


def _hash(ix, iy, iz, seed, channels: int):
    """Deterministic 32-bit integer hash of lattice coordinates: ``[n, channels]`` floats in [0, 1)."""
    seed = (seed & 0x7FFFFFF) * 668265261  # masked first: every product stays inside int64
    h = (ix * 73856093 ^ iy * 19349663 ^ iz * 83492791 ^ seed) & _M32
    h = h[:, None] ^ (torch.arange(channels) * 0x5BD1E995 & _M32)
    for _ in range(2):
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & _M32
    h = h ^ (h >> 16)
    return h.float() * (1.0 / float(1 << 32))


def value_noise(p: torch.Tensor, freq: float, seed: torch.Tensor, channels: int) -> torch.Tensor:
    """Smooth (C1) value noise of points ``p [n, 3]`` at ``freq`` cells per metre: ``[n, channels]``
    in [0, 1]; ``seed [n]`` long selects an independent field per point (per surface)."""
    q = p * freq
    base = torch.floor(q)
    fr = (q - base).float()
    wgt = fr * fr * (3 - 2 * fr)
    ib = base.long()
    out = torch.zeros(p.shape[0], channels)
    for corner in range(8):
        cx, cy, cz = corner & 1, (corner >> 1) & 1, (corner >> 2) & 1
        w = ((wgt[:, 0] if cx else 1 - wgt[:, 0]) * (wgt[:, 1] if cy else 1 - wgt[:, 1])
             * (wgt[:, 2] if cz else 1 - wgt[:, 2]))
        out += w[:, None] * _hash(ib[:, 0] + cx, ib[:, 1] + cy, ib[:, 2] + cz, seed, channels)
    return out.double()


def _local_point(room: Room, x: torch.Tensor, surface: torch.Tensor) -> torch.Tensor:
    """Texture coordinates: world coordinates on the room, box-frame coordinates on boxes (so a
    box's pattern belongs to the box)."""
    local = x.clone()
    for j, box in enumerate(room.boxes):
        m = surface == 6 + j
        if m.any():
            c, s = np.cos(box.yaw), np.sin(box.yaw)
            R = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
            local[m] = (x[m] - torch.tensor(box.centre, dtype=torch.float64)) @ R
    return local


def shade(room: Room, x: torch.Tensor, surface: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] ``[n, 3]`` of surface points ``x [n, 3]``: a per-surface base colour, multi-scale
    coloured value noise, saturated spots, and view-independent Lambertian light."""
    p = _local_point(room, x, surface)
    seed = surface * 7919 + room.texture_seed * 104729
    base = torch.tensor(room.colours, dtype=torch.float64)[surface]
    low = value_noise(p, 0.8, seed, 3)
    mid = value_noise(p, 2.5, seed + 1, 3)
    fine = value_noise(p, 7.0, seed + 2, 1)
    rgb = 0.45 * base + 0.3 * low + 0.25 * mid
    rgb = rgb * (0.6 + 0.8 * fine)
    spots = value_noise(p, 3.5, seed + 3, 1)
    spot_colour = value_noise(p, 0.6, seed + 4, 3)
    spot_colour = (spot_colour - spot_colour.mean(1, keepdim=True)) * 2.5 + 0.5
    a = ((spots - 0.62) / 0.06).clamp(0, 1)
    rgb = (1 - a) * rgb + a * spot_colour
    light = torch.tensor(room.light if room.light else (room.size[0] / 2, room.size[1] / 2,
                                                        room.size[2] * 0.9), dtype=torch.float64)
    to_light = light - x
    lam = (normal * to_light).sum(-1, keepdim=True) / to_light.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    return (rgb * (0.55 + 0.45 * lam.clamp(0, 1))).clamp(0, 1)
