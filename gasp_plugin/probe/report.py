"""The probe's result: per descriptor and layer match statistics, their summary, table and JSON.

Descriptors: ``qk`` (the layer's attention query projection for anchor tokens vs its key
projection for target tokens: the paper's probe), ``hidden`` (the layer's output hidden states),
``head`` (GASP head embeddings, when heads were given). The *peak layer* of a descriptor is the
layer with the highest PCK@2 over all pairs (ties: the earliest layer).

``probe.json`` (:meth:`ProbeReport.to_dict`); fractions in 0..1, ``null`` where undefined:

- ``summary``: descriptor -> ``{peak_layer, pck0, pck1, pck2, chance_pck2, rho,
  robustness_max_gap, max_gap, covisible_max_gap}`` at the peak layer, over all pairs;
- ``layers``: descriptor -> per layer ``{layer, queries, pck{delta}, chance{delta}, rho,
  pck2_by_gap{gap}, queries_by_gap{gap}, robustness{gap}}``;
- ``gaps``: gap -> ``{pairs, rotation_deg, translation_m, covisible}`` (means over the pairs);
- ``pairs``: every pair ``{scene, anchor, target, gap, rotation_deg, translation_m, covisible,
  visible_points}``; ``scenes``; ``skipped`` (reason -> count);
- conventions: ``similarity``, ``confidence``, ``distance``, ``deltas``, ``query_grid``,
  ``token_grids``; ``meta``: layers probed, forwards, timing, device, figures, sources.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from gasp_plugin.probe.metrics import DEFAULT_DISTANCE, MatchStats
from gasp_plugin.probe.pairs import PairSet, gap_summary

__all__ = ["DESCRIPTORS", "PairMatches", "ProbeReport", "PEAK_DELTA"]

DESCRIPTORS = ("qk", "hidden", "head")
PEAK_DELTA = 2  # the paper's PCK threshold, in token cells


def _num(x: float) -> float | None:
    """JSON-safe float: ``nan``/``inf`` become ``null``."""
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 6)


@dataclass
class PairMatches:
    """Predictions of one descriptor at one layer on one pair, kept for the match picture.

    ``query_xy`` / ``true_xy`` ``[q, 2]`` pixels of the visible tracks in the anchor / target
    frame; ``pred`` / ``true`` ``[q]`` target token indices; ``grid`` the target token grid.
    """

    pair_index: int
    query_xy: list
    true_xy: list
    pred: list
    true: list
    grid: tuple[int, int]


@dataclass
class ProbeReport:
    """Everything a probe run measured. ``stats[descriptor][layer]`` holds the per-query records."""

    model: str
    pair_set: PairSet
    stats: dict[str, dict[int, MatchStats]]
    deltas: tuple[int, ...] = (0, 1, 2)
    distance: str = DEFAULT_DISTANCE
    temperature: float = 0.07
    query_grid: int = 8
    token_grids: list[tuple[int, int]] = field(default_factory=list)
    matches: dict[tuple[str, int], list[PairMatches]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    layouts: dict = field(default_factory=dict)  # (h, w) -> FrameLayout of the frames probed

    @property
    def descriptors(self) -> list[str]:
        return [d for d in DESCRIPTORS if d in self.stats]

    def layers(self, descriptor: str) -> list[int]:
        return sorted(self.stats[descriptor])

    def peak_layer(self, descriptor: str, delta: int = PEAK_DELTA) -> int:
        """Layer with the highest PCK@delta (earliest on ties; layers without queries lose)."""
        scores = {l: self.stats[descriptor][l].pck(delta) for l in self.layers(descriptor)}
        return max(scores, key=lambda l: (-1.0 if math.isnan(scores[l]) else scores[l], -l))

    def max_gap(self) -> int:
        return self.pair_set.max_gap

    def summary(self) -> dict[str, dict]:
        """Per descriptor, at its peak layer: ``peak_layer``, ``pck0``, ``pck1``, ``pck2``,
        ``chance_pck2``, ``rho`` (confidence vs PCK@2 correctness), ``robustness_max_gap``
        (PCK@2 at the largest gap / at gap 1), ``max_gap``, ``covisible_max_gap`` (mean co-visible
        fraction of the pairs at the largest gap). Fractions in 0..1; ``None`` where undefined."""
        gaps = gap_summary(self.pair_set.pairs)
        g = self.max_gap()
        out = {}
        for d in self.descriptors:
            layer = self.peak_layer(d)
            st = self.stats[d][layer]
            rob = st.robustness(PEAK_DELTA)
            out[d] = {
                "peak_layer": layer,
                **{f"pck{k}": _num(st.pck(k)) for k in self.deltas},
                "chance_pck2": _num(st.chance_pck(PEAK_DELTA)),
                "rho": _num(st.rho(PEAK_DELTA)),
                "robustness_max_gap": _num(rob.get(g, math.nan)),
                "max_gap": g,
                "covisible_max_gap": _num(gaps[g]["covisible"]) if g in gaps else None,
            }
        return out

    def layer_records(self, descriptor: str) -> list[dict]:
        rows = []
        for layer in self.layers(descriptor):
            st = self.stats[descriptor][layer]
            rows.append(
                {
                    "layer": layer,
                    "queries": st.num_queries,
                    "pck": {str(k): _num(st.pck(k)) for k in self.deltas},
                    "chance": {str(k): _num(st.chance_pck(k)) for k in self.deltas},
                    "rho": _num(st.rho(PEAK_DELTA)),
                    "pck2_by_gap": {str(gp): _num(v) for gp, v in st.pck_by_gap(PEAK_DELTA).items()},
                    "queries_by_gap": {str(gp): n for gp, n in st.queries_by_gap().items()},
                    "robustness": {str(gp): _num(v) for gp, v in st.robustness(PEAK_DELTA).items()},
                }
            )
        return rows

    def to_dict(self) -> dict:
        pairs = self.pair_set.pairs
        return {
            "model": self.model,
            "similarity": "cosine",
            "confidence": f"max softmax(cosine / {self.temperature})",
            "distance": f"{self.distance} distance in token cells",
            "deltas": list(self.deltas),
            "query_grid": self.query_grid,
            "token_grids": [list(t) for t in self.token_grids],
            "scenes": sorted({p.scene for p in pairs}),
            "max_gap": self.max_gap(),
            "gaps": {str(k): {kk: _num(vv) if isinstance(vv, float) else vv for kk, vv in v.items()}
                     for k, v in gap_summary(pairs).items()},
            "pairs": [p.describe() for p in pairs],
            "skipped": {**dict(self.pair_set.skipped), **self.skipped},
            "layers": {d: self.layer_records(d) for d in self.descriptors},
            "summary": self.summary(),
            "meta": self.meta,
        }

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return path

    def table(self) -> str:
        """Terminal table: per layer, PCK@delta per descriptor, with a ``chance`` row (every
        descriptor and layer is scored on the same queries, so they share one chance level)."""
        descs, ks = self.descriptors, self.deltas
        group = "  ".join(f"@{k}".rjust(5) for k in ks)
        width = len(group)
        lines = [
            "layer   " + " | ".join(d.center(width) for d in descs),
            "        " + " | ".join(group for _ in descs),
        ]
        ref = self.stats[descs[0]][self.layers(descs[0])[0]]
        chance = "  ".join(f"{ref.chance_pck(k):5.3f}" for k in ks)
        lines.append("chance  " + " | ".join(chance for _ in descs))
        for layer in sorted({l for d in descs for l in self.layers(d)}):
            cells = []
            for d in descs:
                st = self.stats[d].get(layer)
                cells.append("  ".join("  -  " if st is None else f"{st.pck(k):5.3f}" for k in ks))
            lines.append(f"{layer:>5}   " + " | ".join(cells))
        summ = self.summary()
        lines.append("")
        lines.append(f"peak layers (PCK@{PEAK_DELTA}); robustness = PCK@2(gap {self.max_gap()}) / PCK@2(gap 1):")
        for d, s in summ.items():
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            lines.append(
                f"  {d:<6} layer {s['peak_layer']:>2}: pck@0 {fmt(s['pck0'])}  pck@1 {fmt(s['pck1'])}  "
                f"pck@2 {fmt(s['pck2'])} (chance {fmt(s['chance_pck2'])})  rho {fmt(s['rho'])}  "
                f"robustness {fmt(s['robustness_max_gap'])} (co-visible {fmt(s['covisible_max_gap'])})"
            )
        lines.append(f"{len(self.pair_set.pairs)} pairs, gaps 1..{self.max_gap()}, scenes: "
                     + ", ".join(sorted({p.scene for p in self.pair_set.pairs})))
        return "\n".join(lines)
