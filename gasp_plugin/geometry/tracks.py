"""Ground-truth point tracks from posed RGB-D clips.

Shape notation: ``f`` frames of the clip, ``p`` query points, ``h, w`` image size.
Pixel and pose conventions: see :mod:`gasp_plugin.geometry.camera` (pixel centres at integer
coordinates, OpenCV axes, camera-to-world poses, depth = z in metres).

A query pixel of the anchor frame is unprojected with the anchor's depth, moved to frame ``t``
with ``cam_t_from_cam_a = inv(T_t) @ T_a`` and projected with ``K_t``. It is *visible* in ``t``
when the projection lies inside the image with a border ``margin`` (``margin <= x <= w - 1 -
margin``, same for y), in front of the camera, and passes the depth test
``|z_proj - D_t| < depth_tolerance * min(z_proj, D_t)`` with ``D_t`` read at the nearest pixel
(an invalid ``D_t == 0`` fails the test).

Saved layout (``Tracks.save`` / ``Tracks.load``, a safetensors file): tensors ``xy`` float32
``[f, p, 2]``, ``visible`` bool ``[f, p]``, ``depth`` float32 ``[f, p]``, ``query_xy`` float32
``[p, 2]``; string metadata ``format = "gasp-tracks/1"`` and ``anchor`` (the anchor's row, or
``"none"`` when the anchor frame is not one of the rows), plus any extra keys given to ``save``.
Tracks from elsewhere (e.g. a point tracker) load from the same layout: ``visible`` may also be
an integer or float 0/1 tensor, ``query_xy`` may be omitted (then ``xy[anchor]``), a missing
``anchor`` means row 0, and ``xy`` / ``depth`` may be NaN where a point is not visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gasp_plugin.geometry.camera import (
    check_intrinsics,
    check_pose,
    check_shape,
    project,
    relative_pose,
    unproject,
)

__all__ = [
    "Tracks",
    "grid_queries",
    "track_points",
    "compute_tracks",
    "tracks_for_clip",
    "grid_tracks",
    "keep_per_grid",
    "load_tracks_metadata",
]

FORMAT = "gasp-tracks/1"


@dataclass(frozen=True)
class Tracks:
    """Where each query point of an anchor frame lands in every frame of a clip.

    Attributes:
        xy: ``[f, p, 2]`` float pixel coordinates ``(x, y)`` in each frame's own image resolution.
        visible: ``[f, p]`` bool, in image (with margin) and not occluded.
        depth: ``[f, p]`` float, the point's depth (z, metres) in each frame's camera.
        query_xy: ``[p, 2]`` float pixel coordinates of the queries in the anchor frame.
        anchor: row of the anchor frame in ``xy`` / ``visible`` / ``depth``; ``None`` when the
            anchor frame is not among the rows (``query_xy`` still says where the queries are).
    """

    xy: torch.Tensor
    visible: torch.Tensor
    depth: torch.Tensor
    query_xy: torch.Tensor
    anchor: int | None = 0

    def __post_init__(self):
        check_shape(self.xy, (-1, -1, 2), "Tracks.xy")
        f, p = self.xy.shape[:2]
        for name, want in (("visible", (f, p)), ("depth", (f, p)), ("query_xy", (p, 2))):
            got = tuple(getattr(self, name).shape)
            if got != want:
                raise ValueError(f"Tracks.{name}: expected shape {list(want)} to match xy "
                                 f"{list(self.xy.shape)}, got {list(got)}")
        if self.visible.dtype != torch.bool:
            raise ValueError(f"Tracks.visible: expected dtype torch.bool, got {self.visible.dtype}")
        if self.anchor is not None and not (0 <= int(self.anchor) < f):
            raise ValueError(f"Tracks.anchor: expected a row in [0, {f}) or None, got {self.anchor}")

    @property
    def num_frames(self) -> int:
        return int(self.xy.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.xy.shape[1])

    def to(self, *args, **kwargs) -> "Tracks":
        """Move every tensor (``Tensor.to`` arguments; a dtype applies to float tensors only)."""
        def move(t):
            if t.dtype == torch.bool:
                kw = {k: v for k, v in kwargs.items() if k != "dtype"}
                a = tuple(x for x in args if not isinstance(x, torch.dtype))
                return t.to(*a, **kw)
            return t.to(*args, **kwargs)
        return replace(self, xy=move(self.xy), visible=move(self.visible),
                       depth=move(self.depth), query_xy=move(self.query_xy))

    def select_points(self, index: torch.Tensor) -> "Tracks":
        """Keep the points ``index`` (``[k]`` long or ``[p]`` bool)."""
        return replace(self, xy=self.xy[:, index], visible=self.visible[:, index],
                       depth=self.depth[:, index], query_xy=self.query_xy[index])

    @staticmethod
    def cat(parts: list["Tracks"]) -> "Tracks":
        """The points of ``parts`` (same frames and anchor) side by side, in order."""
        if not parts:
            raise ValueError("Tracks.cat: nothing to concatenate")
        if len({(t.num_frames, t.anchor) for t in parts}) != 1:
            raise ValueError(f"Tracks.cat: parts differ in frames or anchor: "
                             f"{[(t.num_frames, t.anchor) for t in parts]}")
        return replace(parts[0], xy=torch.cat([t.xy for t in parts], 1),
                       visible=torch.cat([t.visible for t in parts], 1),
                       depth=torch.cat([t.depth for t in parts], 1),
                       query_xy=torch.cat([t.query_xy for t in parts], 0))

    def select_frames(self, rows: list[int]) -> "Tracks":
        """Keep the frame ``rows`` in the given order; ``anchor`` follows its row (or ``None``)."""
        anchor = rows.index(self.anchor) if self.anchor in rows else None
        idx = torch.as_tensor(rows, dtype=torch.long)
        return replace(self, xy=self.xy[idx], visible=self.visible[idx], depth=self.depth[idx],
                       anchor=anchor)

    def keep_best(self, fraction: float) -> "Tracks":
        """Keep the ``ceil(fraction * p)`` points visible in the most frames (paper: 0.5).

        Ties go to the earlier point; kept points stay in their original (raster) order.
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"keep_best: fraction must be in (0, 1], got {fraction}")
        p = self.num_points
        k = min(p, math.ceil(fraction * p))
        if k == p:
            return self
        counts = self.visible.sum(0)
        order = torch.sort(-counts, stable=True).indices[:k]
        return self.select_points(torch.sort(order).values)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """Write the safetensors layout of the module docstring; returns the path."""
        from safetensors.torch import save_file

        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta.update(format=FORMAT, anchor="none" if self.anchor is None else str(int(self.anchor)))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "xy": self.xy.detach().float().cpu().contiguous(),
            "visible": self.visible.detach().cpu().contiguous(),
            "depth": self.depth.detach().float().cpu().contiguous(),
            "query_xy": self.query_xy.detach().float().cpu().contiguous(),
        }
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Tracks":
        """Read tracks written by :meth:`save` or by any tool following the documented layout."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tracks file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
                meta = fh.metadata() or {}
        except Exception as exc:  # safetensors raises several error types for a bad header
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
        return _tracks_from_tensors(tensors, meta, str(path))


def load_tracks_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a saved tracks file (``anchor``, ``format`` and extras)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def _tracks_from_tensors(tensors: dict, meta: dict, source: str) -> Tracks:
    missing = [k for k in ("xy", "visible", "depth") if k not in tensors]
    if missing:
        raise ValueError(f"{source}: missing tensor(s) {missing}; found {sorted(tensors)}; a tracks "
                         "file needs xy [f,p,2], visible [f,p], depth [f,p] (query_xy [p,2] optional)")
    anchor_text = meta.get("anchor", "0")
    try:
        anchor = None if anchor_text == "none" else int(anchor_text)
    except ValueError:
        raise ValueError(f"{source}: metadata anchor={anchor_text!r} is not an integer or 'none'")
    vis = tensors["visible"]
    visible = vis if vis.dtype == torch.bool else vis.float() > 0.5
    xy, depth = tensors["xy"].float(), tensors["depth"].float()
    if "query_xy" in tensors:
        query_xy = tensors["query_xy"].float()
    elif anchor is not None and xy.dim() == 3 and 0 <= anchor < xy.shape[0]:
        query_xy = xy[anchor].clone()
    else:
        raise ValueError(f"{source}: no query_xy tensor and no valid anchor row to take it from")
    try:
        tracks = Tracks(xy=xy, visible=visible, depth=depth, query_xy=query_xy, anchor=anchor)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc
    bad = visible & ~(torch.isfinite(xy).all(-1) & torch.isfinite(depth))
    if bad.any():
        f, p = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{source}: {int(bad.sum())} visible entries have non-finite xy or depth "
                         f"(first: frame row {f}, point {p}); mark them not visible")
    return tracks


def grid_queries(height: int, width: int, grid: int) -> torch.Tensor:
    """``[grid * grid, 2]`` integer pixel positions (as float32), raster order (row-major):
    the pixel nearest the centre of each cell of a ``grid x grid`` partition of the image."""
    if not isinstance(grid, int) or grid < 1 or grid > min(height, width):
        raise ValueError(f"grid must be an integer in [1, {min(height, width)}] for a "
                         f"{width}x{height} image, got {grid!r}")
    def centres(n_px):
        c = (torch.arange(grid, dtype=torch.float64) + 0.5) * n_px / grid - 0.5
        return torch.floor(c + 0.5).clamp(0, n_px - 1)
    ys, xs = torch.meshgrid(centres(height), centres(width), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1).float()


def _lookup_nearest(depth: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """``depth [f, h, w]``, ``xy [f, p, 2]`` -> ``[f, p]`` depth at the nearest pixel (0 outside the
    image or where the depth is not finite)."""
    f, h, w = depth.shape
    u = torch.floor(xy[..., 0] + 0.5)
    v = torch.floor(xy[..., 1] + 0.5)
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1) & torch.isfinite(u) & torch.isfinite(v)
    u = torch.where(inside, u, torch.zeros_like(u)).long()
    v = torch.where(inside, v, torch.zeros_like(v)).long()
    flat = depth.reshape(f, h * w)
    d = torch.gather(flat, 1, v * w + u).to(xy.dtype)
    return torch.where(inside & torch.isfinite(d), d, torch.zeros_like(d))


def _as_tensor(x, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.to(dtype)
    return t


def _check_clip(depth, intrinsics, poses) -> None:
    check_shape(depth, (-1, -1, -1), "depth")
    if depth.dim() != 3:
        raise ValueError(f"depth: expected shape [f, h, w], got {list(depth.shape)}")
    f = depth.shape[0]
    for name, x, tail in (("intrinsics", intrinsics, (3, 3)), ("poses", poses, (4, 4))):
        if tuple(x.shape) != (f, *tail):
            raise ValueError(f"{name}: expected shape {[f, *tail]} for {f} depth maps, got {list(x.shape)}")
    check_intrinsics(intrinsics, "intrinsics")
    check_pose(poses, "poses")


def track_points(query_xy, depth, intrinsics, poses, anchor: int, margin: float = 4.0,
                 depth_tolerance: float = 0.05) -> tuple[Tracks, torch.Tensor]:
    """Track arbitrary anchor pixels through a clip.

    Args:
        query_xy: ``[p, 2]`` pixels of the anchor frame; depth is read at the nearest pixel.
        depth: ``[f, h, w]`` metres, ``0`` (or non-finite) = invalid.
        intrinsics: ``[f, 3, 3]``; poses: ``[f, 4, 4]`` camera-to-world.
        anchor: row of the anchor frame.
    Returns:
        ``(tracks, kept)``: tracks of the queries with valid anchor depth, and ``kept [p]`` bool
        saying which queries those are.
    """
    depth = _as_tensor(depth, torch.float32)
    intrinsics = _as_tensor(intrinsics, torch.float64).double()
    poses = _as_tensor(poses, torch.float64).double()
    query_xy = _as_tensor(query_xy, torch.float64)
    check_shape(query_xy, (-1, 2), "query_xy")
    _check_clip(depth, intrinsics, poses)
    f, h, w = depth.shape
    if not isinstance(anchor, int) or not 0 <= anchor < f:
        raise ValueError(f"anchor: expected a row in [0, {f}), got {anchor!r}")
    if margin < 0 or depth_tolerance <= 0:
        raise ValueError(f"margin must be >= 0 and depth_tolerance > 0, got {margin}, {depth_tolerance}")

    q = query_xy.double()
    d_a = _lookup_nearest(depth[anchor:anchor + 1], q[None])[0]  # [p]
    kept = d_a > 0
    q, d_a = q[kept], d_a[kept]
    points_a = unproject(q, d_a, intrinsics[anchor])  # [p, 3]
    cam_t_from_a = relative_pose(poses[anchor], poses)  # [f, 4, 4]
    # [p, 3] @ [f, 3, 3] -> [f, p, 3]: one small matmul per frame, not one 3x3 product per point
    points_t = points_a @ cam_t_from_a[:, :3, :3].transpose(1, 2) + cam_t_from_a[:, None, :3, 3]
    xy, z = project(points_t, intrinsics[:, None])  # [f, p, 2], [f, p]

    inside = ((xy[..., 0] >= margin) & (xy[..., 0] <= w - 1 - margin)
              & (xy[..., 1] >= margin) & (xy[..., 1] <= h - 1 - margin) & (z > 0))
    d_t = _lookup_nearest(depth, xy)
    agree = (z - d_t).abs() < depth_tolerance * torch.minimum(z, d_t)
    visible = inside & (d_t > 0) & agree
    tracks = Tracks(xy=xy.float(), visible=visible, depth=z.float(), query_xy=q.float(), anchor=anchor)
    return tracks, kept


def compute_tracks(depth, intrinsics, poses, anchor: int, grid: int = 8, margin: float = 4.0,
                   depth_tolerance: float = 0.05) -> Tracks:
    """Ground-truth tracks of a ``grid x grid`` set of anchor pixels (see :func:`grid_queries`).

    Args:
        depth: ``[f, h, w]`` metres, 0 = invalid. intrinsics: ``[f, 3, 3]``. poses: ``[f, 4, 4]``
            camera-to-world. anchor: row of the anchor frame.
        grid: queries per side (paper: 8 coarse, 24 fine).
        margin: border in pixels a visible projection must keep (paper: 4).
        depth_tolerance: relative depth agreement for visibility (paper: 0.05).
    Returns:
        :class:`Tracks` over all ``f`` rows; queries without valid anchor depth are dropped.
    """
    h, w = depth.shape[-2:]
    tracks, _ = track_points(grid_queries(int(h), int(w), grid), depth, intrinsics, poses, anchor,
                             margin=margin, depth_tolerance=depth_tolerance)
    return tracks


def _grids(grid) -> tuple[int, ...]:
    grids = (grid,) if isinstance(grid, int) and not isinstance(grid, bool) else tuple(grid)
    if not grids:
        raise ValueError("grid: give one query grid size or a non-empty list (paper: [8, 24])")
    return grids


def grid_tracks(clip, grid: int | tuple[int, ...] = 8, margin: float = 4.0,
                depth_tolerance: float = 0.05) -> list[Tracks]:
    """All tracks of each query grid (``grid``: one size or several, e.g. the paper's coarse 8
    and fine 24) for a :class:`~gasp_plugin.data.scene.Clip` from its anchor row.

    The queries of all grids are tracked in one pass (one unprojection, one projection into every
    frame, one depth lookup) and split per grid afterwards: the same tracks as
    :func:`compute_tracks` per grid, for the cost of one."""
    grids = _grids(grid)
    depth = torch.from_numpy(clip.depth)
    h, w = (int(v) for v in depth.shape[-2:])
    queries = [grid_queries(h, w, g) for g in grids]
    tracks, kept = track_points(torch.cat(queries), depth, torch.from_numpy(clip.intrinsics),
                                torch.from_numpy(clip.poses), clip.anchor, margin=margin,
                                depth_tolerance=depth_tolerance)
    counts = torch.stack([k.sum() for k in torch.split(kept, [len(q) for q in queries])]).tolist()
    ends = torch.cumsum(torch.tensor([0, *counts]), 0).tolist()
    return [tracks.select_points(torch.arange(a, b)) for a, b in zip(ends[:-1], ends[1:])]


def keep_per_grid(parts: list[Tracks], keep: float) -> Tracks:
    """The best-tracked ``keep`` fraction of each grid's points (:meth:`Tracks.keep_best` per
    grid, so the fine grid does not crowd out the coarse one), concatenated coarse to fine."""
    return Tracks.cat([t.keep_best(keep) if t.num_points else t for t in parts])


def tracks_for_clip(clip, grid: int | tuple[int, ...] = 8, keep: float = 0.5, margin: float = 4.0,
                    depth_tolerance: float = 0.05) -> Tracks:
    """Tracks for a :class:`~gasp_plugin.data.scene.Clip` from its anchor row over one or several
    query grids, keeping the best-tracked ``keep`` fraction of each grid's points (paper: 0.5;
    1.0 keeps all)."""
    return keep_per_grid(grid_tracks(clip, grid, margin, depth_tolerance), keep)
