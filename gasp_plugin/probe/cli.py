"""``gasp probe``: layer-wise point matching inside a VLM, on held-out posed RGB-D scenes.

Example::

    gasp probe --model tiny:qwen2_vl --scenes gasp_plugin/assets/hololens-000 --out outputs/probe
    gasp probe --model outputs/tiny_cpu --heads outputs/tiny_cpu/gasp_heads.safetensors \\
        --scenes held_out_scenes/ --max-gap 24

Prints a per-layer table (PCK@0/1/2 per descriptor, chance beside each) and the peak-layer
summary, and writes ``probe.json`` and PNG plots into ``--out``. Imports nothing heavy at module
level (``gasp --help`` imports every command module).
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def _layers(text: str):
    if text == "all":
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--layers: 'all' or comma-separated integers, got {text!r}") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint folder, PEFT adapter folder, recipe YAML, or tiny:<model_type>")
    parser.add_argument("--scenes", required=True, nargs="+",
                        help="held-out scene folders, or folders of scene folders")
    parser.add_argument("--heads", default=None, help="GASP heads safetensors file (adds the 'head' descriptor)")
    parser.add_argument("--out", default="outputs/probe", help="folder for probe.json and the PNGs")
    parser.add_argument("--max-gap", type=int, default=24, help="largest frame gap (1..24; capped by scene length)")
    parser.add_argument("--grid", type=int, default=8, help="query points per side on the anchor frame")
    parser.add_argument("--pairs-per-gap", type=int, default=2, help="anchor frames per scene and gap")
    parser.add_argument("--layers", type=_layers, default=None, help="'all' or comma-separated LLM layer indices")
    parser.add_argument("--distance", default="euclidean",
                        help="cell metric of PCK@delta: euclidean (a disc of radius delta, the default) or chebyshev (a (2 delta + 1)^2 square)")
    parser.add_argument("--batch-size", type=int, default=8, help="frame pairs per forward (one pair per batch row)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from gasp_plugin.probe.loading import held_out, load_probe_heads, load_probe_model, open_scenes
    from gasp_plugin.probe.output import write_outputs
    from gasp_plugin.probe.pairs import select_pairs
    from gasp_plugin.probe.runner import run_probe

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pm = load_probe_model(args.model)
    model = pm.model.to(device)
    print(f"model: {pm.source}")
    heads_path = args.heads or pm.heads_path
    heads = load_probe_heads(model, heads_path) if heads_path else None
    if heads is not None:
        print(f"heads: {heads_path} (layers {heads.layers})")
    scenes = open_scenes(args.scenes)
    is_held_out = held_out(args.scenes, pm.training_scenes)
    if is_held_out is False:
        print(f"WARNING: --scenes {args.scenes} overlap the training scenes {[str(p) for p in pm.training_scenes]}: "
              "these figures are not held-out figures")
    pairs = select_pairs(scenes, max_gap=args.max_gap, pairs_per_gap=args.pairs_per_gap, grid=args.grid)
    report = run_probe(model, pm.processor, scenes, heads=heads, pairs=pairs, layers=args.layers,
                       progress=not args.no_progress, model_name=pm.name, batch_size=args.batch_size,
                       distance=args.distance)
    report.meta.update({"model_source": pm.source, "heads": str(heads_path) if heads_path else None,
                        "scene_args": list(args.scenes), "held_out": is_held_out})
    write_outputs(report, scenes, args.out)
    print(report.table())
    print(f"\nwrote {args.out}/probe.json and PNGs: " + ", ".join(sorted(report.meta.get("figures", []))))
    return 0
