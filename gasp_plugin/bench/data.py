"""``gasp bench data``: what preparing one geometry clip costs, stage by stage, next to what an
ordinary video SFT step pays for the same frames, and how many clips a real ``DataLoader`` serves.

Per clip of ``--frames`` frames (default 24) of each scene: synthetic scenes written as PNGs at
each ``--sizes`` entry (default 640x480, 960x540, 1296x968; rendered once into ``--scenes-dir``
and reused) and the bundled real HoloLens scene. Stages, median ms of ``--repeats``, torch at
``--threads`` (default 1: one core, as in a DataLoader worker):

- ``read_colour``, ``read_depth``: read and decode the frames' PNGs (``Scene.images`` /
  ``Scene.depth``);
- ``tracks``: ground-truth tracks over the recipe's query grids, best-tracked fraction kept
  (``grid_tracks`` + ``keep_per_grid``, as the clip sampler runs them);
- ``token_depths``: per-token median depth of every target frame (``token_depths``);
- ``processor``: resize and patches of every frame (the adapter's ``build_frame_inputs``);
- ``targets``: the rest of ``build_geometry_example`` (layouts, pixels to tokens, one point per
  token, the targets): the example built with its processor outputs prepared beforehand, minus a
  token-depth pass timed right after it (median over rounds).

``gasp_ms`` = tracks + token_depths + targets (what GASP adds), ``base_ms`` = read + processor
(what any video SFT step pays), ``total_ms`` = all stages, ``ratio`` = gasp / base (target
<= 0.2), and a 24-frame 960x540 clip ready in <= 1 s on one core (``total_ms``).

Loader: clips/s through a ``torch.utils.data.DataLoader`` (batch 1, the geometry collator) over
``gasp train``'s own example source (:func:`gasp_plugin.train.assemble.geometry_examples` on a
``ClipSampler`` with the recipe's grids and ``--frames``-frame clips) for each ``--workers``
count, on the ``--loader-size`` scene; the time includes starting the workers.

The processor is the recipe's family's (Qwen2.5-VL: patch 14, merge 2, the released model's),
built from a config at the recipe's pixel budget (default recipe ``qwen2vl_gasp``: 448x448).
``--json FILE`` writes ``{"sizes": {"960x540": {"stages_ms": {...}, "gasp_ms", "base_ms",
"total_ms", "ratio"}, ...}, "loader": {"workers": {"1": {"clips_per_s", "seconds"}, ...}}}``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gasp_plugin.bench.report import load_average, write_json

__all__ = ["add_arguments", "run", "time_stages", "loader_rate", "GASP_STAGES", "BASE_STAGES"]

GASP_STAGES = ("tracks", "token_depths", "targets")
BASE_STAGES = ("read_colour", "read_depth", "processor")
DEFAULT_SIZES = ("640x480", "960x540", "1296x968")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="*", default=list(DEFAULT_SIZES), help="synthetic scene sizes WxH")
    parser.add_argument("--no-real", action="store_true", help="skip the bundled real scene")
    parser.add_argument("--frames", type=int, default=24, help="frames per clip")
    parser.add_argument("--recipe", default="qwen2vl_gasp", help="recipe whose pixel budget, grids and keep apply")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per stage (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process (default 1: one core)")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4], help="DataLoader worker counts")
    parser.add_argument("--loader-clips", type=int, default=12, help="clips loaded per worker count")
    parser.add_argument("--loader-size", default="960x540", help="scene size the loader reads (one of --sizes)")
    parser.add_argument("--scenes-dir", default=None, help="folder for the synthetic scenes (reused; default: temporary)")
    parser.add_argument("--json", default=None, help="write the figures to this file")


def parse_size(text: str) -> tuple[int, int]:
    """``"960x540"`` -> ``(960, 540)`` (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT (e.g. 960x540)") from None
    return w, h


def _median_ms(fn, repeats: int):
    result, times = None, []
    for _ in range(repeats + 1):  # the first call warms up (file cache, allocator)
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times[1:]), result


def _family(recipe):
    """``(processor, adapter)`` of the recipe's family at its pixel budget (no download)."""
    from gasp_plugin.models.registry import get_adapter
    from gasp_plugin.models.tiny import build_tiny_model

    model_type = recipe.model.tiny_type or ("llava" if "llava" in recipe.model.path.lower() else "qwen2_5_vl")
    model, processor = build_tiny_model(model_type, image_size=336 if model_type == "llava" else 224)
    adapter = get_adapter(model)
    adapter.apply_pixel_budget(processor, recipe.model.min_pixels, recipe.model.max_pixels)
    return processor, adapter


def time_stages(scene, frames: int, processor, adapter, grid, keep: float, repeats: int) -> dict:
    """Median ms per stage (see the module docstring) for the first ``frames`` valid frames of
    ``scene``, anchored on the middle one."""
    import numpy as np

    from gasp_plugin.core.batch import token_depths
    from gasp_plugin.data.scene import Clip
    from gasp_plugin.geometry.tracks import grid_tracks, keep_per_grid

    ids = scene.valid_frames[:frames]
    if len(ids) < frames:
        raise ValueError(f"scene {scene.name!r} has {len(ids)} valid frames, fewer than --frames {frames}")
    ms = {}
    ms["read_colour"], images = _median_ms(lambda: scene.images(ids), repeats)
    ms["read_depth"], depth = _median_ms(lambda: np.stack([scene.depth(i) for i in ids]).astype(np.float32), repeats)
    clip = Clip(images=images, depth=depth, intrinsics=np.stack([scene.intrinsics(i) for i in ids]),
                poses=np.stack([scene.pose(i) for i in ids]), frame_ids=list(ids), anchor=frames // 2, scene=scene.name)
    ms["tracks"], tracks = _median_ms(lambda: keep_per_grid(grid_tracks(clip, grid), keep), repeats)
    layout = adapter.frame_layout(processor, images.shape[1:3])
    targets = [r for r in range(frames) if r != clip.anchor]
    ms["token_depths"], _ = _median_ms(lambda: [token_depths(depth[r], layout) for r in targets], repeats)
    frame_list = list(images)
    ms["processor"], _ = _median_ms(lambda: adapter.build_frame_inputs(processor, frame_list), repeats)
    _, ms["targets"] = _targets_ms(clip, tracks, processor, adapter, frame_list, repeats)
    gasp = sum(ms[k] for k in GASP_STAGES)
    base = sum(ms[k] for k in BASE_STAGES)
    return {"stages_ms": ms, "gasp_ms": gasp, "base_ms": base, "total_ms": gasp + base, "ratio": gasp / base,
            "width": int(images.shape[2]), "height": int(images.shape[1]), "frames": frames,
            "tokens_per_frame": layout.num_tokens}


class _PreparedInputs:
    """An adapter whose ``build_frame_inputs`` returns inputs prepared beforehand (everything else
    is the adapter's own): ``build_geometry_example`` through it runs everything but the processor."""

    def __init__(self, adapter, inputs: dict):
        self._adapter, self._inputs = adapter, inputs

    def build_frame_inputs(self, processor, frames, **kwargs) -> dict:
        return dict(self._inputs)

    def __getattr__(self, name):
        return getattr(self._adapter, name)


def _targets_ms(clip, tracks, processor, adapter, frames, repeats: int) -> tuple[float, float]:
    """``(example without processor, targets)`` median ms: ``build_geometry_example`` with the
    frames' processor outputs prepared beforehand, and that minus its token depths (timed in
    the same round, so that a change of the machine's load cancels out)."""
    from gasp_plugin.core.batch import build_geometry_example, token_depths

    prepared = _PreparedInputs(adapter, adapter.build_frame_inputs(processor, frames))
    layout = adapter.frame_layout(processor, clip.depth.shape[1:3])
    rows = [r for r in range(len(frames)) if r != clip.anchor]
    example, rest = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        build_geometry_example(clip, tracks, processor, prepared)
        t1 = time.perf_counter()
        [token_depths(clip.depth[r], layout) for r in rows]
        t2 = time.perf_counter()
        if i:
            example.append(1000 * (t1 - t0))
            rest.append(1000 * ((t1 - t0) - (t2 - t1)))
    return statistics.median(example), max(0.0, statistics.median(rest))


class _Examples:
    """Map-style dataset over an example source ``index -> example``."""

    def __init__(self, source, length: int):
        self.source, self.length = source, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.source(index)


def loader_rate(scene, frames: int, processor, adapter, sampling, workers: int, clips: int) -> dict:
    """Clips/s of ``clips`` geometry batches (batch 1) through a DataLoader with ``workers``
    workers over ``gasp train``'s example source; the time includes starting the workers."""
    import dataclasses

    from torch.utils.data import DataLoader

    from gasp_plugin.core.batch import GeometryCollator
    from gasp_plugin.data import ClipSampler
    from gasp_plugin.train.assemble import geometry_examples

    sampling = dataclasses.replace(sampling, min_frames=frames, max_frames=frames)
    source = geometry_examples(ClipSampler([scene], sampling, seed=0), processor, adapter)
    loader = DataLoader(_Examples(source, clips), batch_size=1, num_workers=workers,
                        collate_fn=GeometryCollator(processor))
    t0 = time.perf_counter()
    count = sum(1 for _ in loader)
    seconds = time.perf_counter() - t0
    return {"clips_per_s": count / seconds, "seconds": seconds, "clips": count}


def _scenes(args, tmp: Path) -> dict:
    """``{label: scene}``: synthetic scenes at each size (written once) and the real one."""
    from dataclasses import replace

    from gasp_plugin.assets import HOLOLENS_SAMPLE, asset_path
    from gasp_plugin.data import open_scene
    from gasp_plugin.data.synthetic import SyntheticSceneConfig, generate_scenes

    root = Path(args.scenes_dir) if args.scenes_dir else tmp
    scenes = {}
    for text in args.sizes:
        w, h = parse_size(text)
        cfg = replace(SyntheticSceneConfig(), width=w, height=h, num_frames=args.frames)
        print(f"synthetic scene {w}x{h}, {args.frames} frames (rendered once into {root / text}) ...")
        scenes[f"{w}x{h}"] = open_scene(generate_scenes(root / text, 1, 0, cfg)[0])
    if not args.no_real:
        real = open_scene(asset_path(HOLOLENS_SAMPLE))
        h, w = real.image(real.valid_frames[0]).shape[:2]
        scenes[f"real {w}x{h}"] = real
    return scenes


def _print_stages(results: dict) -> None:
    stages = (*BASE_STAGES, *GASP_STAGES)
    head = f"{'ms per clip':20s}" + "".join(f"{label:>13s}" for label in results)
    print(head + "\n" + "-" * len(head))
    for stage in stages:
        name = f"{stage} ({'gasp' if stage in GASP_STAGES else 'base'})"
        print(f"{name:20s}" + "".join(f"{r['stages_ms'][stage]:13.1f}" for r in results.values()))
    for key in ("base_ms", "gasp_ms", "total_ms"):
        print(f"{key:20s}" + "".join(f"{r[key]:13.1f}" for r in results.values()))
    print(f"{'ratio gasp/base':20s}" + "".join(f"{r['ratio']:13.3f}" for r in results.values()))
    print(f"{'tokens per frame':20s}" + "".join(f"{r['tokens_per_frame']:13d}" for r in results.values()))


def run(args) -> int:
    import os

    import torch

    from gasp_plugin.recipe import load_recipe

    if args.threads < 1 or args.frames < 2 or args.repeats < 1:
        raise ValueError("--threads and --repeats must be >= 1 and --frames >= 2")
    torch.set_num_threads(args.threads)  # this process is the benchmark: no library state touched
    recipe = load_recipe(args.recipe)
    sampling = recipe.data.geometry.sampling
    processor, adapter = _family(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        scenes = _scenes(args, Path(tmp))
        results = {}
        for label, scene in scenes.items():
            print(f"timing {label} ...")
            results[label] = time_stages(scene, args.frames, processor, adapter, sampling.grid, sampling.keep,
                                         args.repeats)
        loader = {}
        if args.workers:
            key = "x".join(str(v) for v in parse_size(args.loader_size))
            if key not in scenes:
                raise ValueError(f"--loader-size {args.loader_size} is not among --sizes {args.sizes}")
            for workers in args.workers:
                print(f"loader: {workers} worker(s), {args.loader_clips} clips of {key} ...")
                loader[str(workers)] = loader_rate(scenes[key], args.frames, processor, adapter, sampling, workers,
                                                   args.loader_clips)
    load = load_average()
    print(f"\n{args.frames}-frame clips, recipe {Path(recipe.source).stem} (grid {list(sampling.grid)}, keep "
          f"{sampling.keep}, max_pixels {recipe.model.max_pixels}), torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}; load average {load} on {os.cpu_count()} cores")
    _print_stages(results)
    target = [(label, r) for label, r in results.items() if label == "960x540"]
    misses = [label for label, r in results.items() if r["ratio"] > 0.2]
    print(f"target ratio <= 0.2 at every size: {'MISSES at ' + ', '.join(misses) if misses else 'meets'}")
    for label, r in target:
        print(f"target {label} clip ready in <= 1000 ms on one core: "
              f"{'meets' if r['total_ms'] <= 1000 else 'MISSES'} ({r['total_ms']:.0f} ms)")
    if loader:
        single = 1000 / results[key]["total_ms"]
        print(f"\nDataLoader over gasp train's example source, {key}, {args.loader_clips} clips "
              f"(including worker start-up); in-process stages: {single:.2f} clips/s")
        print(f"{'workers':>8s}{'clips/s':>10s}{'seconds':>10s}{'x 1 worker':>12s}")
        first = next(iter(loader.values()))["clips_per_s"]
        for workers, r in loader.items():
            print(f"{workers:>8s}{r['clips_per_s']:10.2f}{r['seconds']:10.1f}{r['clips_per_s'] / first:12.2f}")
    write_json(args.json, {"sizes": results, "loader": {"size": args.loader_size, "clips": args.loader_clips,
                                                        "workers": loader},
                           "frames": args.frames, "recipe": Path(recipe.source).stem,
                           "threads": torch.get_num_threads(), "load_average": load, "cpu_count": os.cpu_count()})
    return 0
