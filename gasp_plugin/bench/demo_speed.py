"""``gasp bench demo``: ``gasp demo`` as a user runs it (wall time, held-out PCK@2), then the
training step rate of its recipe alone and beside one competing CPU-bound process, in one run.

1. ``gasp demo --out DIR/demo`` in a subprocess (the real command, default settings unless
   ``overrides`` are given): wall time (target <= 300 s on 2 cores) and the trained model's
   PCK@2 of ``qk``, ``hidden`` and ``head`` on the held-out synthetic scenes (target >= 0.85).
2. The demo recipe's training (its model, scenes and instructions, reused from step 1) for
   ``--rate-steps`` steps, timed after ``--warmup`` steps: alone, then with a busy-looping Python
   process started beside it (and ended after), with the recipe's ``training.cpu_threads``
   (``auto``: the thread governor; what it chose is printed) or else ``--threads``. Target: the
   step rate falls by at most 3x.

Prints both side by side with the machine's load average; ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gasp_plugin.bench.report import load_average, write_json

__all__ = ["add_arguments", "run", "TARGETS"]

TARGETS = {"demo_s": 300.0, "pck2": 0.85, "slowdown": 3.0}
DESCRIPTORS = ("qk", "hidden", "head")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="work folder (default: temporary)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the demo and the rate runs")
    parser.add_argument("--rate-steps", type=int, default=300, help="training steps per rate measurement")
    parser.add_argument("--warmup", type=int, default=30, help="steps before the rate clock starts")
    parser.add_argument("--skip-demo", action="store_true", help="only the step rates (needs a demo in --out)")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides (demo and rates)")


def run_demo_command(out: Path, threads: int, overrides: list[str]) -> dict:
    """``gasp demo`` in a subprocess: ``{"seconds", "pck2": {descriptor: value}, "demo_json"}``."""
    cmd = [sys.executable, "-m", "gasp_plugin.cli", "demo", "--out", str(out), "--overwrite",
           "--threads", str(threads), *overrides]
    print("running: gasp demo --out", out, *overrides)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"gasp demo failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    record = json.loads((out / "demo.json").read_text())
    trained = record["summary"]["trained"]["synthetic"]
    return {"seconds": seconds, "demo_reported_s": record["seconds"], "phases": record.get("phases", {}),
            "training_s": record["training"]["trained"]["seconds"],
            "pck2": {d: trained[d]["pck2"] for d in DESCRIPTORS if d in trained}}


class _Clock:
    """A trainer callback noting the time at step ``warmup`` and at the last step."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == clock.warmup:
                    clock.start = time.perf_counter()
                clock.end, clock.last = time.perf_counter(), state.global_step

        self.warmup, self.start, self.end, self.last = warmup, None, None, 0
        self.callback = Callback()

    @property
    def rate(self) -> float:
        return (self.last - self.warmup) / (self.end - self.start)


def step_rate(demo_out: Path, out: Path, steps: int, warmup: int, overrides: list[str]) -> tuple[float, dict | None]:
    """Steps/s of the demo recipe's training after ``warmup`` steps, reusing the demo's files, and
    what its thread governor did (``training.cpu_threads: auto``; else ``None``)."""
    from gasp_plugin.recipe import load_recipe
    from gasp_plugin.train.assemble import build_run

    train = demo_out / "train"
    recipe = load_recipe("tiny_cpu", [
        *overrides, f"training.output_dir={out}", f"training.max_steps={steps}", "training.save_steps=1000000",
        "training.logging_steps=1000000", f"model.tiny.dir={train / 'tiny-model'}",
        f"data.geometry.synthetic.dir={train / 'data' / 'scenes'}",
        f"data.instruct.synthetic.dir={train / 'data' / 'instruct'}"])
    from transformers.trainer_callback import PrinterCallback

    trainer = build_run(recipe, deepspeed_json=None, progress=False).trainer
    trainer.remove_callback(PrinterCallback)  # no log dicts between the tables
    clock = _Clock(warmup)
    trainer.add_callback(clock.callback)
    trainer.train()
    from gasp_plugin.train.threads import ThreadGovernor

    governors = [c.summary() for c in trainer.callback_handler.callbacks if isinstance(c, ThreadGovernor)]
    return clock.rate, (governors[0] if governors else None)


def _busy_process() -> subprocess.Popen:
    """A competing CPU-bound process: one core of pure-Python busy loop."""
    return subprocess.Popen([sys.executable, "-c", "x = 0\nwhile True:\n    x += 1"])


def run(args) -> int:
    import logging

    import torch

    if args.rate_steps <= args.warmup:
        raise ValueError(f"--rate-steps ({args.rate_steps}) must exceed --warmup ({args.warmup})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        demo_out = root / "demo"
        record = {"load_before": load_average(), "cpu_count": os.cpu_count(), "threads": args.threads,
                  "targets": TARGETS, "overrides": list(args.overrides)}
        if not args.skip_demo:
            record["demo"] = run_demo_command(demo_out, args.threads, list(args.overrides))
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        logging.getLogger("gasp_plugin.train").setLevel(logging.WARNING)
        try:
            record["load_before_rates"] = load_average()
            alone, alone_threads = step_rate(demo_out, root / "rate_alone", args.rate_steps, args.warmup,
                                             list(args.overrides))
            busy = _busy_process()
            try:
                record["load_with_busy"] = load_average()
                beside, beside_threads = step_rate(demo_out, root / "rate_busy", args.rate_steps, args.warmup,
                                                   list(args.overrides))
            finally:
                busy.kill()
                busy.wait()
        finally:
            torch.set_num_threads(threads)
        record["rates"] = {"alone_steps_per_s": alone, "busy_steps_per_s": beside, "slowdown": alone / beside,
                           "threads_alone": alone_threads, "threads_busy": beside_threads}
        record["load_after"] = load_average()
    _print(record)
    write_json(args.json, record)
    return 0


def _verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def _print(record: dict) -> None:
    print(f"\ngasp demo on {record['cpu_count']} cores, torch threads {record['threads']}; load average "
          f"{record['load_before']} before, {record['load_after']} after (other processes included)")
    print(f"{'':34s}{'measured':>10s}{'target':>10s}")
    demo = record.get("demo")
    if demo:
        print(f"{'gasp demo wall time, s':34s}{demo['seconds']:10.0f}{'<= 300':>10s}  "
              f"{_verdict(demo['seconds'] <= TARGETS['demo_s'])} (training {demo['training_s']:.0f} s)")
        for d, value in demo["pck2"].items():
            print(f"{'held-out synthetic PCK@2, ' + d:34s}{value:10.3f}{'>= 0.85':>10s}  "
                  f"{_verdict(value >= TARGETS['pck2'])}")
    r = record["rates"]
    print(f"{'training steps/s, alone':34s}{r['alone_steps_per_s']:10.2f}")
    print(f"{'steps/s beside one busy process':34s}{r['busy_steps_per_s']:10.2f}")
    print(f"{'slowdown (alone / beside)':34s}{r['slowdown']:10.2f}{'<= 3':>10s}  "
          f"{_verdict(r['slowdown'] <= TARGETS['slowdown'])}")
    for name in ("alone", "busy"):
        gov = r.get(f"threads_{name}")
        if gov:
            print(f"  cpu_threads: auto, {name}: steps at each thread count {gov['steps_at_threads']}, "
                  f"{gov['fallbacks']} fallbacks to one thread")
