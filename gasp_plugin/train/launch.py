"""``gasp train --recipe FILE [key=value ...]``: the single entry point of every recipe.

Also callable in-process::

    from gasp_plugin.train.launch import train
    result = train("recipes/tiny_cpu.yaml", ["training.max_steps=20"])
    result.output_dir, result.final_step, result.loss_history

:func:`train` leaves the process as it found it (environment, logging). The command line
(:func:`run`, :func:`main`) first calls :func:`setup_process`: nothing reaches the Hugging Face hub
(``HF_HUB_OFFLINE=1`` unless set otherwise), logging goes to stderr, and a single process with a
DeepSpeed config gets ``RANK=0 WORLD_SIZE=1`` and a free local port. Under a distributed launcher
(``deepspeed``, ``torchrun``) every rank runs this. A model path that is not a local folder is an
error saying what to do. This module imports torch/transformers only inside functions, so
``gasp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gasp_plugin.constants import RECIPE_FILE
from gasp_plugin.errors import add_debug_flag, run_command

__all__ = ["TrainResult", "train", "setup_process", "add_arguments", "run", "main"]

logger = logging.getLogger("gasp_plugin.train")
DEFAULT_RECIPE = "tiny_cpu"


@dataclass
class TrainResult:
    """What a run produced: where, how far, and the logged losses (one dict per logging step)."""

    output_dir: Path
    final_step: int
    loss_history: list[dict] = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    attn_implementation: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default=os.environ.get("GASP_RECIPE", DEFAULT_RECIPE),
                        help="recipe YAML path or shipped name (default: $GASP_RECIPE or tiny_cpu)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher; read from LOCAL_RANK otherwise")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="recipe overrides, e.g. training.max_steps=100 model.path=/ckpt")


def run(args: argparse.Namespace) -> int:
    from gasp_plugin.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    setup_process(deepspeed=bool(recipe.training.deepspeed), local_rank=args.local_rank)
    result = train(recipe)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: step {result.final_step}, saved to {result.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry for launchers that run a file with python on every rank (e.g. ``recipes/qwen2vl_gasp.sh``):
    the same arguments, plus ``--debug``, and the same error reports as ``gasp train``
    (:func:`gasp_plugin.errors.run_command`; a rank's line names the rank)."""
    parser = argparse.ArgumentParser(prog="gasp train")
    add_arguments(parser)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_command("gasp train", lambda: run(args), debug=args.debug)


# ---- process setup (command line only) --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_process(*, deepspeed: bool = False, local_rank: int | None = None, log_level: int = logging.INFO) -> None:
    """Process-wide setup of a training process; ``gasp train`` calls it, :func:`train` never does.

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` (unless already set), ``LOCAL_RANK``
    from ``local_rank`` (the deepspeed launcher's ``--local_rank``) unless set, and with
    ``deepspeed`` outside a launcher (no ``WORLD_SIZE``) the torch.distributed variables of one
    process (``RANK=0 LOCAL_RANK=0 WORLD_SIZE=1``, ``MASTER_ADDR`` and a free ``MASTER_PORT``),
    without which DeepSpeed tries MPI. Configures the root logger (``logging.basicConfig``).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if deepspeed and "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _resolve_deepspeed(recipe) -> str | None:
    value = recipe.training.deepspeed
    if not value:
        return None
    for candidate in (Path(value), Path(recipe.source).parent / value, Path(recipe.source).parent / Path(value).name):
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"training.deepspeed={value!r} in {recipe.source}: no such file")


def _check_distributed_env(recipe) -> None:
    """DeepSpeed needs the torch.distributed variables; in-process callers set them (or not) themselves."""
    if "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            f"training.deepspeed={recipe.training.deepspeed!r} in {recipe.source} needs the torch.distributed "
            "variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and WORLD_SIZE is not set: run it with "
            "`gasp train` or a launcher (deepspeed, torchrun), or call "
            "gasp_plugin.train.launch.setup_process(deepspeed=True) before train()"
        )


# ---- the run -----------------------------------------------------------------------------------


def train(recipe, overrides: list[str] | None = None, *, progress: bool = True) -> TrainResult:
    """Run a recipe (a path, a shipped name or a loaded :class:`Recipe`) and return the result.

    Sets no environment variable and no logging handler: a DeepSpeed recipe outside a launcher
    needs :func:`setup_process` (``deepspeed=True``) first, else a RuntimeError says so.
    """
    from gasp_plugin.recipe import Recipe, load_recipe, recipe_to_dict
    from gasp_plugin.train.assemble import build_run

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        raise ValueError("overrides apply to a recipe path; pass a loaded Recipe already overridden")
    deepspeed_json = _resolve_deepspeed(recipe)
    if deepspeed_json:
        _check_distributed_env(recipe)
    run_ = build_run(recipe, deepspeed_json=deepspeed_json, progress=progress)
    trainer = run_.trainer
    resume = recipe.training.resume_from_checkpoint
    if resume == "last":
        resume = True
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(recipe.training.output_dir)
    if trainer.args.should_save:
        import yaml

        Path(recipe.training.output_dir, RECIPE_FILE).write_text(yaml.safe_dump(recipe_to_dict(recipe)))
    if recipe.training.trace_data:
        run_.write_reference_outputs()
    history = [h for h in trainer.state.log_history if "loss" in h or "lm" in h or "corr" in h]
    return TrainResult(
        output_dir=Path(recipe.training.output_dir),
        final_step=int(trainer.state.global_step),
        loss_history=history,
        counters=dict(trainer.gasp_counters),
        attn_implementation=run_.attn_implementation,
    )


if __name__ == "__main__":
    sys.exit(main())
