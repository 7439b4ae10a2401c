"""Probe figures (matplotlib, Agg backend): PCK per layer, robustness per gap, one match picture.

Notation: ``q`` matched queries; pixel coordinates ``(x, y)`` in each frame's own resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_pck_per_layer", "plot_robustness", "plot_matches", "plot_conditions", "DESCRIPTOR_COLORS"]

DESCRIPTOR_COLORS = {"qk": "tab:blue", "hidden": "tab:orange", "head": "tab:green"}
_DELTA_STYLES = {0: ":", 1: "--", 2: "-"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_pck_per_layer(report, path: str | Path) -> Path:
    """One line per descriptor and delta (PCK over all pairs vs layer); chance levels dashed grey."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for d in report.descriptors:
        layers = report.layers(d)
        for k in report.deltas:
            ys = [report.stats[d][l].pck(k) for l in layers]
            ax.plot(layers, ys, _DELTA_STYLES.get(k, "-"), marker="o", ms=3,
                    color=DESCRIPTOR_COLORS.get(d), label=f"{d} PCK@{k}")
    # chance of the qk (or first) descriptor's queries: every descriptor sees the same queries
    ref = report.descriptors[0]
    layers = report.layers(ref)
    for k in report.deltas:
        c = report.stats[ref][layers[0]].chance_pck(k)
        ax.axhline(c, color="grey", ls=(0, (4, 3)), lw=0.8)
        ax.text(layers[-1], c, f" chance@{k}", va="bottom", ha="right", fontsize=7, color="grey")
    ax.set_xlabel("LLM layer")
    ax.set_ylabel("PCK")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(layers)
    ax.set_title(f"{report.model}: PCK per layer ({len(report.pair_set.pairs)} pairs)", fontsize=9)
    ax.legend(fontsize=7, ncol=len(report.descriptors), loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_robustness(report, path: str | Path) -> Path:
    """PCK@2(dt) / PCK@2(1) per frame gap at each descriptor's peak layer, with the pairs'
    co-visible fraction and rotation on a second axis."""
    from gasp_plugin.probe.pairs import gap_summary

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for d in report.descriptors:
        layer = report.peak_layer(d)
        rob = report.stats[d][layer].robustness(2)
        ax.plot(list(rob), list(rob.values()), marker="o", ms=3, color=DESCRIPTOR_COLORS.get(d),
                label=f"{d} (layer {layer})")
    ax.axhline(1.0, color="grey", lw=0.6)
    top = max([1.0] + [v for l in ax.get_lines() for v in l.get_ydata() if np.isfinite(v)])
    ax.set_ylim(0, top * 1.05)
    ax.set_xlabel("frame gap dt")
    ax.set_ylabel("PCK@2(dt) / PCK@2(1)")
    ax.grid(alpha=0.3)
    gaps = gap_summary(report.pair_set.pairs)
    ax2 = ax.twinx()
    ax2.plot(list(gaps), [g["covisible"] for g in gaps.values()], color="grey", ls="--", lw=1,
             label="co-visible fraction")
    ax2.set_ylabel("co-visible fraction of anchor points", color="grey")
    ax2.set_ylim(0, 1.02)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="lower left")
    ax.set_title(f"{report.model}: temporal robustness", fontsize=9)
    return _save(fig, path)


def plot_matches(
    anchor_image: np.ndarray,
    target_image: np.ndarray,
    query_xy: np.ndarray,
    true_xy: np.ndarray,
    pred_xy: np.ndarray,
    correct: np.ndarray,
    path: str | Path,
    title: str = "",
    grid_lines: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Anchor and target side by side. Each query has its own colour: a dot in the anchor, an open
    circle at its true position in the target, a cross at the predicted token's centre, and a
    line from truth to prediction (green when counted correct, red otherwise).

    Args:
        anchor_image, target_image: ``uint8 [h, w, 3]``.
        query_xy: ``[q, 2]`` query pixels in the anchor; ``true_xy``/``pred_xy`` ``[q, 2]`` true
            and predicted pixels in the target (predicted = centre of the predicted token's cell).
        correct: ``[q]`` bool.
        grid_lines: ``(xs, ys)`` token-cell boundaries of the target in its pixels, drawn faintly.
    """
    plt = _pyplot()
    ha, wa = anchor_image.shape[:2]
    ht, wt = target_image.shape[:2]
    canvas = np.full((max(ha, ht), wa + wt + 8, 3), 255, dtype=np.uint8)
    canvas[:ha, :wa] = anchor_image
    off = wa + 8
    canvas[:ht, off:] = target_image
    fig, ax = plt.subplots(figsize=(10, 10 * canvas.shape[0] / canvas.shape[1] + 0.6))
    ax.imshow(canvas)
    q, t, p = np.asarray(query_xy), np.asarray(true_xy), np.asarray(pred_xy)
    ok = np.asarray(correct, dtype=bool)
    colours = plt.get_cmap("hsv")(np.linspace(0, 1, max(len(q), 1), endpoint=False))
    if grid_lines is not None:
        for x in grid_lines[0]:
            ax.plot([off + x, off + x], [0, ht - 1], color="white", lw=0.4, alpha=0.5)
        for y in grid_lines[1]:
            ax.plot([off, off + wt - 1], [y, y], color="white", lw=0.4, alpha=0.5)
    for i in range(len(q)):
        ax.plot([t[i, 0] + off, p[i, 0] + off], [t[i, 1], p[i, 1]], color="lime" if ok[i] else "red", lw=1.0)
    ax.scatter(q[:, 0], q[:, 1], s=18, c=colours[: len(q)], edgecolors="black", linewidths=0.4)
    ax.scatter(t[:, 0] + off, t[:, 1], s=30, facecolors="none", edgecolors=colours[: len(q)], linewidths=1.2)
    ax.scatter(p[:, 0] + off, p[:, 1], s=22, c=colours[: len(q)], marker="x", linewidths=1.2)
    ax.set_axis_off()
    ax.set_title(title or f"{ok.sum()}/{len(ok)} correct", fontsize=9)
    return _save(fig, path)


def plot_conditions(reports: dict, path: str | Path, delta: int = 2) -> Path:
    """Before/after view: one panel per descriptor, PCK@delta per layer with one line per
    condition (e.g. ``{"untrained": r0, "trained": r1}``), each condition's chance dashed."""
    plt = _pyplot()
    descs = [d for d in ("qk", "hidden", "head") if any(d in r.stats for r in reports.values())]
    fig, axes = plt.subplots(1, len(descs), figsize=(4 * len(descs), 3.6), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, d in zip(axes[0], descs):
        for ci, (label, rep) in enumerate(reports.items()):
            if d not in rep.stats:
                continue
            layers = rep.layers(d)
            ax.plot(layers, [rep.stats[d][l].pck(delta) for l in layers], marker="o", ms=3,
                    color=cmap(ci), label=label)
            ax.axhline(rep.stats[d][layers[0]].chance_pck(delta), color=cmap(ci), ls=":", lw=0.8)
            ax.set_xticks(layers)
        ax.set_title(f"{d}: PCK@{delta} (dotted: chance)", fontsize=9)
        ax.set_xlabel("LLM layer")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"PCK@{delta}")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
