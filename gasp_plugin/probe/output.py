"""Write a probe report to a folder: ``probe.json`` and the PNG figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gasp_plugin.probe.metrics import cell_distance
from gasp_plugin.probe.plots import plot_matches, plot_pck_per_layer, plot_robustness
from gasp_plugin.probe.report import PEAK_DELTA, ProbeReport

__all__ = ["write_outputs", "figure_pair"]


def figure_pair(report: ProbeReport) -> tuple[str, int, int]:
    """``(descriptor, layer, index into matches)`` for the match picture: the descriptor with the
    best peak PCK@2 at its peak layer, on the first probed pair whose gap is closest to half the
    largest gap (a real change of view, but not the hardest one)."""
    best = max(report.descriptors, key=lambda d: report.stats[d][report.peak_layer(d)].pck(PEAK_DELTA))
    layer = report.peak_layer(best)
    recs = report.matches[(best, layer)]
    want = max(1, report.max_gap() // 2)
    gaps = [report.pair_set.pairs[r.pair_index].gap for r in recs]
    return best, layer, int(np.argmin([abs(g - want) for g in gaps]))


def write_outputs(report: ProbeReport, scenes, out_dir: str | Path) -> list[Path]:
    """Write ``pck_per_layer.png``, ``robustness.png``, ``matches.png`` and ``probe.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_pck_per_layer(report, out / "pck_per_layer.png"), plot_robustness(report, out / "robustness.png")]
    desc, layer, k = figure_pair(report)
    rec = report.matches[(desc, layer)][k]
    pair = report.pair_set.pairs[rec.pair_index]
    scene = scenes[pair.scene_index]
    anchor, target = np.asarray(scene.image(pair.anchor)), np.asarray(scene.image(pair.target))
    layout = report.layouts[tuple(target.shape[:2])]
    centres = layout.token_centres()
    pred_xy = centres[np.asarray(rec.pred)].numpy()
    dist = cell_distance(rec.pred, rec.true, rec.grid, report.distance).numpy()
    title = (f"{desc} layer {layer}: {pair.scene} frames {pair.anchor} -> {pair.target} (gap {pair.gap}); "
             f"{int((dist <= PEAK_DELTA).sum())}/{len(dist)} within {PEAK_DELTA} cells ({report.distance})")
    paths.append(plot_matches(anchor, target, np.asarray(rec.query_xy), np.asarray(rec.true_xy), pred_xy,
                              dist <= PEAK_DELTA, out / "matches.png", title=title,
                              grid_lines=layout.cell_boundaries()))
    report.meta["figures"] = [p.name for p in paths]
    report.meta["match_figure"] = {"descriptor": desc, "layer": layer, **pair.describe()}
    paths.append(report.save_json(out / "probe.json"))
    return paths
