"""``gasp bench tracks``: time to compute ground-truth tracks for a clip next to the time to decode
the same clip's images and depth from disk, measured in one run (target: geometry <= 1/5 of
decoding, so geometry batches stay decode-bound). Torch runs with ``--threads`` (default 1, as in
DataLoader workers); on a machine whose cores are busy, more threads make each small torch op pay
for waking the others (milliseconds), which says more about the machine than the geometry.

Default clip: 16 frames of a 448x448 synthetic scene written as PNGs (hololens layout) to a
temporary folder, 24x24 grid; ``--scene`` times an existing scene instead. ``--covisibility``
adds the co-visible fraction of anchor grid points against frame gap for default synthetic scenes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", type=int, default=16, help="clip length")
    parser.add_argument("--size", type=int, default=448, help="synthetic image side in pixels")
    parser.add_argument("--grid", type=int, default=24, help="query grid per side")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as in DataLoader workers, where clips are loaded)")
    parser.add_argument("--scene", default=None, help="time this scene folder instead of a synthetic one")
    parser.add_argument("--covisibility", action="store_true",
                        help="also measure co-visible fraction vs frame gap on default synthetic scenes")
    parser.add_argument("--covisibility-scenes", type=int, default=6, help="scenes for --covisibility")
    parser.add_argument("--out", default=None, help="folder for bench_tracks.json (+ covisibility.png)")


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up (file cache, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_clip(scene, frame_ids: list[int], grid: int, repeats: int) -> dict:
    """Median seconds to decode ``frame_ids`` (images + depth) and to compute their tracks, with
    the functions the clip sampler runs (``load_clip``, ``tracks_for_clip``)."""
    from gasp_plugin.data import load_clip
    from gasp_plugin.geometry.tracks import tracks_for_clip

    def decode():
        return [scene.image(i) for i in frame_ids], [scene.depth(i) for i in frame_ids]

    clip = load_clip(scene, frame_ids, anchor_row=len(frame_ids) // 2)

    def geometry():
        return tracks_for_clip(clip, grid=grid, keep=0.5)

    return {"decode_s": _median_seconds(decode, repeats), "tracks_s": _median_seconds(geometry, repeats)}


def _table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def covisibility_table(count: int) -> dict[int, float]:
    import numpy as np
    from tqdm.auto import tqdm

    from gasp_plugin.data.synthetic import SyntheticSceneConfig, covisibility, make_synthetic_scene

    gaps = [1, 2, 4, 8, 12, 16, 24]
    per_scene = [covisibility(make_synthetic_scene(SyntheticSceneConfig(), seed), gaps)
                 for seed in tqdm(range(count), desc="co-visibility scenes")]
    return {g: float(np.mean([c[g] for c in per_scene])) for g in gaps}


def _plot_covisibility(cov: dict[int, float], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(list(cov), list(cov.values()), marker="o")
    ax.set_xlabel("frame gap")
    ax.set_ylabel("co-visible fraction of anchor grid points")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(args) -> int:
    import torch

    from gasp_plugin.data import open_scene
    from gasp_plugin.data.synthetic import SyntheticSceneConfig, make_synthetic_scene, write_scene

    if args.threads < 1:
        print(f"gasp bench tracks: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)  # this process is the benchmark: no library state touched
    with tempfile.TemporaryDirectory() as tmp:
        if args.scene:
            scene = open_scene(args.scene)
            source = args.scene
        else:
            cfg = SyntheticSceneConfig(height=args.size, width=args.size, num_frames=args.frames)
            print(f"rendering a {args.frames}-frame {args.size}x{args.size} synthetic scene ...")
            scene = open_scene(write_scene(make_synthetic_scene(cfg, seed=0), Path(tmp) / "scene"))
            source = f"synthetic {args.size}x{args.size} PNG (hololens layout)"
        ids = scene.valid_frames[: args.frames]
        result = time_clip(scene, ids, args.grid, args.repeats)
    h, w = scene.image(ids[0]).shape[:2] if args.scene else (args.size, args.size)
    ratio = result["tracks_s"] / result["decode_s"]
    print(f"\n{len(ids)} frames of {source}, {w}x{h}, {args.grid}x{args.grid} grid, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print(_table([("step", "ms per clip", "ratio to decode"),
                  ("decode images + depth", f"{1000 * result['decode_s']:.1f}", "1.00"),
                  ("compute tracks + keep best", f"{1000 * result['tracks_s']:.1f}", f"{ratio:.3f}")]))
    verdict = "meets" if ratio <= 0.2 else "MISSES"
    print(f"target: tracks <= 0.2 x decode -> {verdict} ({ratio:.3f})")
    record = {"frames": len(ids), "width": w, "height": h, "grid": args.grid, "source": source,
              "torch_threads": torch.get_num_threads(), **result, "ratio": ratio}
    if args.covisibility:
        cov = covisibility_table(args.covisibility_scenes)
        print(f"\nco-visible fraction of 8x8 anchor grid points vs gap "
              f"({args.covisibility_scenes} default synthetic scenes, 224x224)")
        print(_table([("gap", "co-visible", "")] + [(str(g), f"{v:.3f}", "") for g, v in cov.items()]))
        record["covisibility"] = cov
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_tracks.json").write_text(json.dumps(record, indent=2))
        if args.covisibility:
            _plot_covisibility(record["covisibility"], out / "covisibility.png")
        print(f"wrote {out / 'bench_tracks.json'}")
    return 0
