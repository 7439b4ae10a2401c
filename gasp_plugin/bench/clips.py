"""``gasp bench clips``: what a geometry clip holds under each shipped recipe, with one query grid
and with the paper's two (coarse 8 and fine 24), on the bundled real RGB-D scene.

Per recipe and grid setting, over ``--clips`` clips drawn by the training sampler with the
recipe's clip settings, pixel budget and token budget: frames per clip (drawn and kept after the
token budget), tokens per clip (the exact sequence length), anchor points kept (one per token) and
supervised (point, target frame) pairs per clip. The processor is the recipe's model family's,
built from a config (no download) at the recipe's pixel budget: for Qwen-VL its patch 14 and
merge 2 are the released models' own, so token counts are the 7B model's; a LLaVA recipe is
measured at its released tower's input size (336 px CLIP for LLaVA-NeXT-Video, 384 px SigLIP for
LLaVA-OneVision). Tables side by side; ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

__all__ = ["add_arguments", "run", "measure"]

DEFAULT_RECIPES = ("qwen2vl_gasp", "qwen3vl_gasp", "llava_video_gasp", "llava_onevision_gasp", "tiny_cpu")
# shipped recipe -> (model type, image size) of a tiny model whose processor has the released
# checkpoint's geometry (patch, merge or pooling, crop); the recipe's pixel budget is applied on top
_FAMILY = {"qwen2vl_gasp": ("qwen2_5_vl", 224), "qwen3vl_gasp": ("qwen3_vl", 224),
           "llava_video_gasp": ("llava_next_video", 336), "llava_onevision_gasp": ("llava_onevision", 384)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES), help="recipe names or files")
    parser.add_argument("--grids", nargs="+", default=["8", "8,24"], help='grid settings ("8", "8,24")')
    parser.add_argument("--clips", type=int, default=12, help="clips per recipe and setting")
    parser.add_argument("--scene", default=None, help="scene folder (default: the bundled HoloLens scene)")
    parser.add_argument("--json", default=None, help="write the figures to this file")


def _model_for(recipe):
    from gasp_plugin.models.tiny import build_tiny_model

    if recipe.model.tiny_type:
        return build_tiny_model(recipe.model.tiny_type, **recipe.model.tiny.sizes())
    stem = Path(recipe.source).stem
    if stem not in _FAMILY:
        raise ValueError(f"gasp bench clips: no processor geometry known for recipe {stem!r}; known: {sorted(_FAMILY)}")
    model_type, size = _FAMILY[stem]
    return build_tiny_model(model_type, image_size=size)


def measure(recipe, grid: tuple[int, ...], scene, clips: int) -> dict:
    """Figures of ``clips`` geometry examples of ``recipe`` with query ``grid`` on ``scene``."""
    import dataclasses

    from gasp_plugin.core.batch import TARGETS_KEY
    from gasp_plugin.data import ClipSampler
    from gasp_plugin.models.registry import get_adapter
    from gasp_plugin.train.assemble import geometry_examples, geometry_token_budget
    from gasp_plugin.train.interleave import NOTES_KEY

    model, processor = _model_for(recipe)
    adapter = get_adapter(model)
    adapter.apply_pixel_budget(processor, recipe.model.min_pixels, recipe.model.max_pixels)
    sampling = dataclasses.replace(recipe.data.geometry.sampling, grid=grid)
    budget = geometry_token_budget(recipe, model.config)
    source = geometry_examples(ClipSampler([scene], sampling, seed=0), processor, adapter, budget)
    rows = []
    for index in range(clips):
        example = source(index)
        notes = example[NOTES_KEY]
        rows.append({**notes, "anchors": int((example[TARGETS_KEY].anchor_tokens >= 0).sum())})
    mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    return {"grid": list(grid), "max_tokens": budget, "frames_drawn": mean("drawn_frames"), "frames": mean("frames"),
            "tokens": mean("tokens"), "tokens_max": max(r["tokens"] for r in rows), "anchors": mean("anchors"),
            "pairs": mean("pairs"), "cut": sum(r["frames"] < r["drawn_frames"] for r in rows), "clips": len(rows)}


def run(args) -> int:
    from tqdm.auto import tqdm

    from gasp_plugin.assets import HOLOLENS_SAMPLE, asset_path
    from gasp_plugin.data import open_scene
    from gasp_plugin.recipe import load_recipe

    scene = open_scene(args.scene or asset_path(HOLOLENS_SAMPLE))
    grids = [tuple(int(g) for g in text.split(",")) for text in args.grids]
    results = {}
    jobs = [(name, grid) for name in args.recipes for grid in grids]
    for name, grid in tqdm(jobs, desc="bench clips", unit="setting"):
        recipe = load_recipe(name)
        results.setdefault(Path(recipe.source).stem, {})[",".join(map(str, grid))] = measure(recipe, grid, scene, args.clips)
    h, w = scene.image(scene.valid_frames[0]).shape[:2]
    print(f"geometry clips on {scene.name} ({w}x{h}), {args.clips} clips per row (means; tokens max beside)")
    head = f"{'recipe':20s} {'grid':>6s} {'frames':>7s} {'kept':>5s} {'tokens':>7s} {'max':>6s} {'budget':>7s} " \
           f"{'anchors':>8s} {'pairs':>7s} {'cut':>4s}"
    print(head + "\n" + "-" * len(head))
    for name, per_grid in results.items():
        base = None
        for key, r in per_grid.items():
            print(f"{name:20s} {key:>6s} {r['frames_drawn']:7.1f} {r['frames']:5.1f} {r['tokens']:7.0f} "
                  f"{r['tokens_max']:6d} {r['max_tokens']:7d} {r['anchors']:8.1f} {r['pairs']:7.0f} {r['cut']:4d}"
                  + (f"   pairs x{r['pairs'] / base:.2f}" if base else ""))
            base = base or r["pairs"]
    if args.json:
        Path(args.json).write_text(json.dumps({"scene": scene.name, "size": [w, h], "recipes": results}, indent=2))
        print(f"wrote {args.json}")
    return 0
