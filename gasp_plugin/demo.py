"""``gasp demo``: the whole method on the embedded default, in minutes on a CPU.

One command, nothing downloaded:

1. build the tiny Qwen2-VL of ``recipes/tiny_cpu.yaml`` (random weights, from a config);
2. generate synthetic training scenes and *held-out* scenes (distinct seeds, same camera motion);
3. probe the untrained model on the held-out synthetic scenes and on the bundled real scene;
4. train it with GASP through ``gasp train`` and the same recipe;
5. probe again, and (``--corr-only``) train and probe the paper's "L_corr only" ablation;
6. print a before/after table and write ``demo.json``, ``conditions_<set>.png`` and one probe
   folder (``probe.json`` + PNGs) per condition and held-out set.

``demo.json["summary"][condition][set][descriptor]`` holds the peak-layer figures of
:meth:`gasp_plugin.probe.report.ProbeReport.summary` (fractions in 0..1, PCK over all held-out
pairs with gaps ``1..max_gap`` at the best layer).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

__all__ = ["DemoConfig", "run_demo", "add_arguments", "run", "DEMO_RECIPE", "format_summary"]

DEMO_RECIPE = "tiny_cpu"
HELDOUT_SEED_OFFSET = 1000  # held-out scenes: training seed + this (never the training seeds)


@dataclass
class DemoConfig:
    """What ``gasp demo`` runs.

    Attributes:
        out: output folder (training runs, scenes, probes, ``demo.json``).
        recipe: recipe trained (a path or a shipped name).
        steps: training steps (``training.max_steps``); ``None`` keeps the recipe's.
        heldout_scenes: number of held-out synthetic scenes.
        heldout_frames: frames per held-out scene (the probe's gaps go up to ``max_gap``).
        max_gap: the largest frame gap probed.
        pairs_per_gap: anchor frames per scene and gap.
        real: also probe the bundled real RGB-D scene.
        corr_only: also train and probe the ablation without the depth term.
        overrides: extra recipe overrides (``key.path=value``), applied to every run.
        overwrite: run even if ``out`` already holds a finished demo (its results are replaced;
            generated scenes whose config matches are reused).
        threads: torch intra-op threads of the demo's probes (``None``: torch's default, one per
            core). 1 by default: the training scenes render meanwhile in one more process per
            core, and two threads waiting on each other beside a busy process ran 30x slower
            (0.3 vs 9.1 steps/s measured). Training chooses its own with the recipe's
            ``training.cpu_threads`` (tiny_cpu: ``auto``), beside a DataLoader worker that
            prepares clips (``training.dataloader_num_workers``).
    """

    out: str = "outputs/demo"
    recipe: str = DEMO_RECIPE
    steps: int | None = None
    heldout_scenes: int = 3
    heldout_frames: int = 24
    max_gap: int = 8
    pairs_per_gap: int = 2
    real: bool = True
    corr_only: bool = False
    overrides: list[str] = field(default_factory=list)
    overwrite: bool = False
    threads: int | None = 1

    def __post_init__(self):
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"DemoConfig.steps: expected a positive int or None, got {self.steps!r}")
        for name in ("heldout_scenes", "pairs_per_gap", "max_gap"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name}: expected a positive int, got {getattr(self, name)!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"DemoConfig.threads: expected a positive int or None, got {self.threads!r}")
        if self.heldout_frames <= self.max_gap:
            raise ValueError(
                f"DemoConfig.heldout_frames ({self.heldout_frames}) must exceed max_gap ({self.max_gap})"
            )


# ---- pieces --------------------------------------------------------------------------------------


def _recipe(cfg: DemoConfig, name: str, extra: list[str]):
    from gasp_plugin.recipe import load_recipe

    # every run (the ablation too) trains on the same generated scenes: made once
    overrides = [f"training.output_dir={Path(cfg.out) / name}",
                 f"data.geometry.synthetic.dir={Path(cfg.out) / 'train' / 'data' / 'scenes'}"]
    if cfg.steps is not None:
        overrides.append(f"training.max_steps={cfg.steps}")
    return load_recipe(cfg.recipe, overrides + list(cfg.overrides) + extra)


def _heldout_scenes(cfg: DemoConfig, recipe) -> Path:
    """Synthetic scenes from seeds the training run never uses, moving as the training ones do."""
    from gasp_plugin.data.synthetic import generate_scenes

    synth = recipe.data.geometry.synthetic
    if synth is None:
        raise ValueError(f"{recipe.source}: the demo needs data.geometry.synthetic to make held-out scenes")
    scene_cfg = replace(synth.config, num_frames=cfg.heldout_frames)
    seed = synth.seed + HELDOUT_SEED_OFFSET
    train_seeds = range(synth.seed, synth.seed + synth.count)
    if any(s in train_seeds for s in range(seed, seed + cfg.heldout_scenes)):
        raise ValueError(f"held-out seeds {seed}.. overlap the training seeds {list(train_seeds)}")
    folder = Path(cfg.out) / "data" / "heldout"
    generate_scenes(folder, cfg.heldout_scenes, seed, scene_cfg)
    return folder


def _start_training_scenes(recipe) -> list:
    """Render the training scenes in one process per core (``[]`` when there is nothing to make):
    while the main process probes the untrained model (one torch thread) they share the cores with
    it, then have them to themselves. The training run then finds the scenes (``generate_scenes``
    reuses scenes whose config matches)."""
    import multiprocessing

    from gasp_plugin.data.synthetic import generate_scenes
    from gasp_plugin.train.threads import available_cores

    synth = recipe.data.geometry.synthetic
    if synth is None or synth.dir is None:
        return []
    workers = max(1, min(available_cores(), synth.count))
    print(f"rendering {synth.count} training scenes in {workers} more process(es) ...")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=generate_scenes, args=(synth.dir, synth.count, synth.seed, synth.config),
                                 kwargs={"progress": False, "only": range(i, synth.count, workers)}, daemon=True)
                 for i in range(workers)]
    for process in processes:
        process.start()
    return processes


def _join(processes: list) -> float:
    """Wait for the scene processes; seconds waited."""
    t0 = time.perf_counter()
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"rendering the training scenes failed (exit code {process.exitcode}); "
                               "run `gasp train --recipe tiny_cpu` to see the error")
    return time.perf_counter() - t0


def _probe(model_spec, sets: dict[str, tuple[list, object]], cfg: DemoConfig, condition: str) -> dict:
    """Probe one model on every held-out set ``{name: (scenes, PairSet)}``; ``{set: ProbeReport}``."""
    from gasp_plugin.probe.loading import load_probe_heads, load_probe_model
    from gasp_plugin.probe.runner import run_probe

    pm = load_probe_model(model_spec)
    heads = load_probe_heads(pm.model, pm.heads_path) if pm.heads_path else None
    reports = {}
    for set_name, (scenes, pairs) in sets.items():
        print(f"probe [{condition} / {set_name}]: {len(pairs.pairs)} pairs, gaps 1..{pairs.max_gap}")
        reports[set_name] = run_probe(
            pm.model, pm.processor, scenes, heads=heads, pairs=pairs,
            out_dir=Path(cfg.out) / "probe" / condition / set_name, model_name=f"{condition}: {pm.source}",
        )
    return reports


def _train(recipe) -> dict:
    from gasp_plugin.train.launch import train

    start = time.perf_counter()
    result = train(recipe)
    return {
        "output_dir": str(result.output_dir),
        "steps": result.final_step,
        "seconds": round(time.perf_counter() - start, 1),
        "counters": result.counters,
        "loss_history": result.loss_history,
    }


_COLUMNS = (  # (summary key, column title)
    ("peak_layer", "layer"), ("pck0", "PCK@0"), ("pck1", "PCK@1"), ("pck2", "PCK@2"),
    ("chance_pck2", "chance@2"), ("rho", "rho"), ("robustness_max_gap", "robust"),
    ("covisible_max_gap", "co-vis"),
)


def _cell(key: str, value) -> str:
    if value is None:
        return "n/a"
    return str(value) if key == "peak_layer" else f"{value:.3f}"


def format_summary(summary: dict) -> str:
    """The before/after table: one row per (held-out set, descriptor, condition)."""
    from gasp_plugin.probe.report import DESCRIPTORS

    head = f"{'set':<10} {'desc':<7} {'condition':<10}" + "".join(f"{t:>9}" for _, t in _COLUMNS)
    lines = [head, "-" * len(head)]
    sets = sorted({s for cond in summary.values() for s in cond}, key=lambda s: (s != "synthetic", s))
    for s in sets:
        for d in DESCRIPTORS:
            for cond, by_set in summary.items():
                row = by_set.get(s, {}).get(d)
                if row is not None:
                    cells = "".join(f"{_cell(k, row[k]):>9}" for k, _ in _COLUMNS)
                    lines.append(f"{s:<10} {d:<7} {cond:<10}{cells}")
    return "\n".join(lines)


# ---- the demo ------------------------------------------------------------------------------------


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo (see the module docstring) with ``cfg.threads`` torch threads (restored
    after); returns what ``demo.json`` holds."""
    import torch

    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_demo(cfg)
    finally:
        torch.set_num_threads(threads)


def _run_demo(cfg: DemoConfig) -> dict:
    import torch

    from gasp_plugin.assets import HOLOLENS_SAMPLE, asset_path
    from gasp_plugin.data.scene import open_scene
    from gasp_plugin.probe.loading import open_scenes
    from gasp_plugin.probe.pairs import select_pairs
    from gasp_plugin.probe.plots import plot_conditions
    from gasp_plugin.train.assemble import resolve_model_path

    t0 = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; the demo writes into a folder: choose another --out")
    if (out / "demo.json").exists() and not cfg.overwrite:
        raise FileExistsError(
            f"{out} already holds a finished demo ({out / 'demo.json'}); choose another --out, "
            "or pass --overwrite to replace its results"
        )
    out.mkdir(parents=True, exist_ok=True)
    recipe = _recipe(cfg, "train", [])
    phases = {}
    scene_processes = _start_training_scenes(recipe)
    heldout = _heldout_scenes(cfg, recipe)
    scene_sets = {"synthetic": open_scenes([heldout])}
    if cfg.real:
        scene_sets["real"] = [open_scene(asset_path(HOLOLENS_SAMPLE))]
    # the same pairs for every condition: selected (and tracked) once
    sets = {name: (scenes, select_pairs(scenes, max_gap=cfg.max_gap, pairs_per_gap=cfg.pairs_per_gap))
            for name, scenes in scene_sets.items()}

    base = resolve_model_path(recipe, Path(recipe.training.output_dir), True)
    reports = {"untrained": _probe(base, sets, cfg, "untrained")}
    phases["before_training_s"] = round(time.perf_counter() - t0, 1)
    phases["waited_for_scenes_s"] = round(_join(scene_processes), 1)
    runs = {"trained": _train(recipe)}
    reports["trained"] = _probe(runs["trained"]["output_dir"], sets, cfg, "trained")
    if cfg.corr_only:
        ablation = _recipe(cfg, "train_corr_only", ["gasp.depth_weight=0"])
        runs["corr_only"] = _train(ablation)
        reports["corr_only"] = _probe(runs["corr_only"]["output_dir"], sets, cfg, "corr_only")

    summary = {cond: {s: r.summary() for s, r in by_set.items()} for cond, by_set in reports.items()}
    figures = [
        str(plot_conditions({c: reports[c][s] for c in reports}, out / f"conditions_{s}.png")) for s in sets
    ]
    result = {
        "summary": summary,
        "config": asdict(cfg),
        "recipe": recipe.source,
        "heldout": {s: sorted({p.scene for p in pairs.pairs}) for s, (_, pairs) in sets.items()},
        "training": {c: {k: v for k, v in r.items() if k != "loss_history"} for c, r in runs.items()},
        "loss_history": {c: r["loss_history"] for c, r in runs.items()},
        "figures": figures,
        "probe_dirs": {c: {s: str(out / "probe" / c / s) for s in sets} for c in reports},
        "phases": phases,
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2, allow_nan=False, default=str))
    return result


# ---- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    parser.add_argument("--recipe", default=d.recipe, help=f"recipe to train (default: {d.recipe})")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--heldout-scenes", type=int, default=d.heldout_scenes, help="held-out synthetic scenes")
    parser.add_argument("--max-gap", type=int, default=d.max_gap, help="largest frame gap probed")
    parser.add_argument("--pairs-per-gap", type=int, default=d.pairs_per_gap, help="anchors per scene and gap")
    parser.add_argument("--no-real", action="store_true", help="skip the bundled real scene")
    parser.add_argument("--corr-only", action="store_true",
                        help="also train and probe without the depth term (the paper's L_corr-only row)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of a demo already in --out")
    parser.add_argument("--model-type", default=None, metavar="FAMILY",
                        help="train and probe a tiny model of this family instead of the recipe's "
                             "(model.path=tiny:FAMILY; e.g. llava_next_video, llava_onevision, qwen3_vl)")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help=f"torch threads while the demo runs (default {d.threads}; 0: torch's default)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides for every run")


#: instruction tokens per sample with --model-type: a tiled image (LLaVA-NeXT-Video, OneVision)
#: costs a few hundred tokens even at the tiny model's 224 px, over the tiny recipe's 256
MODEL_TYPE_INSTRUCT_LENGTH = 2048


def _model_type_overrides(model_type: str | None) -> list[str]:
    """``--model-type FAMILY`` as recipe overrides: ``model.path=tiny:FAMILY`` and room for its
    instruction samples (:data:`MODEL_TYPE_INSTRUCT_LENGTH`); none without it."""
    if model_type is None:
        return []
    from gasp_plugin.models.tiny import TINY_MODEL_TYPES

    if model_type not in TINY_MODEL_TYPES:
        raise ValueError(f"--model-type {model_type!r}: expected one of {', '.join(TINY_MODEL_TYPES)}")
    return [f"model.path=tiny:{model_type}", f"data.instruct.max_length={MODEL_TYPE_INSTRUCT_LENGTH}"]


def run(args: argparse.Namespace) -> int:
    from gasp_plugin.train.launch import setup_process

    setup_process()  # offline hub and log lines, as `gasp train` has them
    cfg = DemoConfig(
        out=args.out, recipe=args.recipe, steps=args.steps, heldout_scenes=args.heldout_scenes,
        max_gap=args.max_gap, pairs_per_gap=args.pairs_per_gap, real=not args.no_real,
        corr_only=args.corr_only, overrides=_model_type_overrides(args.model_type) + list(args.overrides),
        overwrite=args.overwrite, threads=args.threads or None,
    )
    result = run_demo(cfg)
    print("\nGASP demo: held-out point matching inside the LLM, before and after training")
    print("(PCK@delta: argmax match within delta token cells; chance for the grid beside it;")
    print(" robustness = PCK@2 at the largest gap / at gap 1, co-visible = anchor points seen there)\n")
    print(format_summary(result["summary"]))
    print(f"\nwrote {Path(cfg.out) / 'demo.json'}; plots: {', '.join(result['figures'])}")
    print(f"per-probe tables and PNGs under {Path(cfg.out) / 'probe'}; total {result['seconds']:.0f} s")
    return 0
