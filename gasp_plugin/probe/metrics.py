"""Probe metrics: match descriptors of two frames and score the matches on the token grid.

Notation: ``q`` queries (visible tracks of one frame pair), ``n`` target-frame visual tokens,
``d`` descriptor size. A token grid ``(gh, gw)`` lists tokens in raster order: token index
``k`` sits in cell ``(row, col) = (k // gw, k % gw)``.

Conventions used by every function here:

- Similarity is cosine (descriptors are L2-normalised, then dotted).
- The predicted match of a query is the argmax of its similarities over the target tokens.
- Distances are in *token cells*, by default the Euclidean distance ``sqrt(dr^2 + dc^2)`` between
  the predicted and the true cell, so PCK@delta counts a match correct when it lies in the disc
  of radius delta cells centred on the truth. ``"chebyshev"`` (``max(|dr|, |dc|)``, the
  ``(2 delta + 1)^2`` block of cells) is registered too; other metrics can be registered with
  :func:`register_cell_distance`. Chance levels are always computed for the metric in use.
- Confidence is the maximum of ``softmax(cos / temperature)`` over the target tokens, with
  ``temperature = 0.07`` by default (the temperature of the GASP correspondence loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CELL_DISTANCES",
    "DEFAULT_TEMPERATURE",
    "register_cell_distance",
    "MatchStats",
    "cell_distance",
    "cells_within_fraction",
    "chance_pck",
    "cosine_similarity",
    "match",
    "pck",
    "pearson",
    "temporal_robustness",
]

DEFAULT_TEMPERATURE = 0.07


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
        raise ValueError(f"grid must be (gh, gw) with both >= 1, got {grid!r}")
    return int(grid[0]), int(grid[1])


def _check_delta(delta: int) -> int:
    if int(delta) != delta or delta < 0:
        raise ValueError(f"delta must be a non-negative integer number of token cells, got {delta!r}")
    return int(delta)


def cosine_similarity(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``[q, n]`` of query descriptors ``[q, d]`` and target descriptors ``[n, d]``.

    Computed in float32 whatever the input dtype; all-zero descriptors give similarity 0.
    """
    if query.ndim != 2 or target.ndim != 2 or query.shape[1] != target.shape[1]:
        raise ValueError(
            f"expected query [q, d] and target [n, d] with equal d, got {tuple(query.shape)} "
            f"and {tuple(target.shape)}"
        )
    q = F.normalize(query.float(), dim=-1)
    t = F.normalize(target.float(), dim=-1)
    return q @ t.T


def match(
    query: torch.Tensor, target: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best target token of each query and its confidence.

    Args:
        query: ``[q, d]`` descriptors of the anchor-frame tokens holding the queries.
        target: ``[n, d]`` descriptors of all target-frame visual tokens.
        temperature: softmax temperature applied to cosine similarities for the confidence.

    Returns:
        ``pred`` ``[q]`` long, argmax token index; ``confidence`` ``[q]`` float, the max of
        ``softmax(cos / temperature)`` over the ``n`` target tokens.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    sim = cosine_similarity(query, target)
    pred = sim.argmax(dim=-1)
    confidence = torch.softmax(sim / temperature, dim=-1).amax(dim=-1)
    return pred, confidence


def _chebyshev(dr: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
    return torch.maximum(dr.abs(), dc.abs()).double()


def _euclidean(dr: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((dr * dr + dc * dc).double())


# name -> distance of cell offsets (dr, dc) (long tensors) in token cells
CELL_DISTANCES = {"chebyshev": _chebyshev, "euclidean": _euclidean}
# A match is correct when the predicted token's cell lies within a *disc* of radius delta cells
# around the true cell (Euclidean). The square of (2 delta + 1)^2 cells (Chebyshev) is looser
# and has a much higher chance level on small token grids (8 x 8, delta 2: 0.32 vs 0.18).
DEFAULT_DISTANCE = "euclidean"


def register_cell_distance(name: str, fn) -> None:
    """Add a cell metric ``fn(dr, dc) -> distance`` under ``name`` (duplicates rejected)."""
    if name in CELL_DISTANCES:
        raise ValueError(f"cell distance {name!r} is already registered")
    CELL_DISTANCES[name] = fn


def _metric(name: str):
    if name not in CELL_DISTANCES:
        raise ValueError(f"unknown cell distance {name!r}; known: {sorted(CELL_DISTANCES)}")
    return CELL_DISTANCES[name]


def cell_distance(pred: torch.Tensor, true: torch.Tensor, grid: tuple[int, int],
                  metric: str = DEFAULT_DISTANCE) -> torch.Tensor:
    """Distance ``[q]`` (float64, token cells) between token indices ``pred`` and ``true``."""
    gh, gw = _check_grid(grid)
    fn = _metric(metric)
    pred, true = torch.as_tensor(pred).long(), torch.as_tensor(true).long()
    n = gh * gw
    for name, idx in (("pred", pred), ("true", true)):
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(f"{name} token indices must lie in [0, {n}) for grid {grid}")
    return fn(pred // gw - true // gw, pred % gw - true % gw)


def pck(pred: torch.Tensor, true: torch.Tensor, grid: tuple[int, int], delta: int,
        metric: str = DEFAULT_DISTANCE) -> float:
    """PCK@delta: fraction of queries whose predicted cell is within ``delta`` cells of the true
    cell. ``nan`` when there are no queries."""
    delta = _check_delta(delta)
    dist = cell_distance(pred, true, grid, metric)
    return float((dist <= delta).float().mean()) if dist.numel() else math.nan


def cells_within_fraction(true: torch.Tensor, grid: tuple[int, int], delta: int,
                          metric: str = DEFAULT_DISTANCE) -> torch.Tensor:
    """Per query ``[q]`` float64: fraction of the grid's cells within ``delta`` of the true cell.

    This is the probability that a uniformly random prediction is counted correct for that query,
    i.e. the exact chance level of PCK@delta for that query. Computed by measuring the distance
    from each true cell to every cell of the grid, so it is exact for any registered metric.
    """
    gh, gw = _check_grid(grid)
    delta = _check_delta(delta)
    true = torch.as_tensor(true).long().reshape(-1)
    cells = torch.arange(gh * gw)
    fn = _metric(metric)
    dist = fn(cells[None] // gw - true[:, None] // gw, cells[None] % gw - true[:, None] % gw)  # [q, n]
    return (dist <= delta).double().mean(dim=1)


def chance_pck(grid: tuple[int, int], delta: int, true: torch.Tensor | None = None,
               metric: str = DEFAULT_DISTANCE) -> float:
    """Exact chance level of PCK@delta on a ``(gh, gw)`` grid for uniformly random predictions.

    The mean, over true cells, of the fraction of cells within ``delta`` of that cell. With
    ``true=None`` the true cells are all cells of the grid, each once; with ``true`` ``[q]`` token
    indices, they are the given queries' true cells (the chance level of that very evaluation).
    """
    gh, gw = _check_grid(grid)
    if true is None:
        true = torch.arange(gh * gw)
    frac = cells_within_fraction(true, (gh, gw), delta, metric)
    return float(frac.mean()) if frac.numel() else math.nan


def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation of two equal-length sequences; ``nan`` when fewer than two values or
    when either is constant (the correlation is undefined then)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson expects two 1-D sequences of equal length, got {x.shape}, {y.shape}")
    if x.size < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denom) if denom > 0 else math.nan


def temporal_robustness(pck_by_gap: Mapping[int, float]) -> dict[int, float]:
    """``PCK(dt) / PCK(1)`` for every gap ``dt`` in ``pck_by_gap``; ``nan`` where ``PCK(1)`` is 0
    or missing (a ratio to nothing means nothing)."""
    base = pck_by_gap.get(1, math.nan)
    ok = base == base and base > 0
    return {int(g): (float(v) / base if ok else math.nan) for g, v in sorted(pck_by_gap.items())}


@dataclass
class MatchStats:
    """Per-query match records of one descriptor at one layer, accumulated over frame pairs.

    Each :meth:`add` appends one frame pair's queries: their cell distances, per-delta chance
    fractions, confidences and the pair's frame gap. Summaries are computed from the records, so
    PCK over several pairs is a mean over all their queries (pairs with more visible tracks weigh
    more), and the chance level is that of the very same queries.
    """

    deltas: tuple[int, ...] = (0, 1, 2)
    metric: str = DEFAULT_DISTANCE
    distance: list[torch.Tensor] = field(default_factory=list)
    chance: list[torch.Tensor] = field(default_factory=list)  # each [q, len(deltas)]
    confidence: list[torch.Tensor] = field(default_factory=list)
    gap: list[torch.Tensor] = field(default_factory=list)

    def add(
        self,
        pred: torch.Tensor,
        true: torch.Tensor,
        confidence: torch.Tensor,
        grid: tuple[int, int],
        gap: int,
    ) -> None:
        """Record one frame pair: ``pred``, ``true`` ``[q]`` token indices, ``confidence`` ``[q]``."""
        self.distance.append(cell_distance(pred, true, grid, self.metric).cpu())
        self.chance.append(
            torch.stack([cells_within_fraction(true, grid, d, self.metric) for d in self.deltas], dim=-1).cpu()
        )
        self.confidence.append(torch.as_tensor(confidence).detach().double().cpu())
        self.gap.append(torch.full((len(true),), int(gap), dtype=torch.long))

    def _cat(self, gap: int | None = None):
        if not self.distance:
            empty = torch.zeros(0, dtype=torch.float64)
            return empty, empty.reshape(0, len(self.deltas)), empty
        dist, chance = torch.cat(self.distance), torch.cat(self.chance)
        conf, gaps = torch.cat(self.confidence), torch.cat(self.gap)
        if gap is not None:
            keep = gaps == gap
            dist, chance, conf = dist[keep], chance[keep], conf[keep]
        return dist, chance, conf

    @property
    def num_queries(self) -> int:
        return int(sum(len(d) for d in self.distance))

    def gaps(self) -> list[int]:
        return sorted({int(g) for t in self.gap for g in t.unique()})

    def pck(self, delta: int, gap: int | None = None) -> float:
        """PCK@delta over all recorded queries (or those of one frame gap); ``nan`` if none."""
        dist, _, _ = self._cat(gap)
        return float((dist <= delta).double().mean()) if dist.numel() else math.nan

    def chance_pck(self, delta: int, gap: int | None = None) -> float:
        """Exact chance level of :meth:`pck` for the same queries."""
        if delta not in self.deltas:
            raise ValueError(f"delta {delta} was not recorded; recorded deltas: {list(self.deltas)}")
        _, chance, _ = self._cat(gap)
        return float(chance[:, self.deltas.index(delta)].mean()) if chance.numel() else math.nan

    def rho(self, delta: int = 2) -> float:
        """Pearson correlation of confidence and correctness at PCK@delta (0/1) over all queries."""
        dist, _, conf = self._cat()
        return pearson(conf.numpy(), (dist <= delta).double().numpy())

    def queries_by_gap(self) -> dict[int, int]:
        """Number of recorded queries per frame gap (how much each per-gap figure rests on)."""
        gaps = torch.cat(self.gap) if self.gap else torch.zeros(0, dtype=torch.long)
        return {g: int((gaps == g).sum()) for g in self.gaps()}

    def pck_by_gap(self, delta: int = 2) -> dict[int, float]:
        return {g: self.pck(delta, gap=g) for g in self.gaps()}

    def robustness(self, delta: int = 2) -> dict[int, float]:
        """``PCK@delta(dt) / PCK@delta(1)`` per recorded gap."""
        return temporal_robustness(self.pck_by_gap(delta))
