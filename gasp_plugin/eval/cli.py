"""``gasp eval``: lmms-eval on one or more checkpoints over the spatial benchmarks, one report.

Example (base model against the exported GASP checkpoint, data downloaded beforehand)::

    gasp eval base=/ckpt/Qwen2.5-VL-7B-Instruct gasp=outputs/gasp-export \\
        --tasks vsibench,blink_multi_view_reasoning,all_angles_bench \\
        --data vsibench=/data/VSI-Bench --data all_angles_bench=/data/All-Angles-Bench \\
        --python /venvs/lmms/bin/python --max-pixels 602112 --max-frames 32 --out outputs/eval

A thin layer: every (checkpoint, task) is one run of lmms-eval's own command line
(``python -m lmms_eval``) in the Python given by ``--python`` (default: this one), with the
family's lmms-eval model class and the stated budgets; its log and lmms-eval's own result files stay
under ``--out/runs/<label>/<task>/``. One line of progress per run; a run that fails is reported and
the others go on; the report (``report.json``, ``report.md``, ``report.png``, see
:mod:`gasp_plugin.eval.report`) is rewritten after every run, so an interrupted evaluation keeps
what finished. ``--probe-scenes`` adds ``gasp probe``'s layer-wise summary of each checkpoint.
Imports nothing heavy at module level (``gasp --help`` imports every command module).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

__all__ = ["add_arguments", "run", "parse_checkpoint", "parse_data"]


def parse_checkpoint(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` or ``PATH`` (label: the folder's name)."""
    label, sep, path = text.partition("=")
    if not sep:
        label, path = Path(text).name, text
    if not label or not path:
        raise argparse.ArgumentTypeError(f"checkpoint {text!r}: expected LABEL=PATH or PATH")
    return label, Path(path)


def parse_data(text: str) -> tuple[str, Path]:
    task, sep, path = text.partition("=")
    if not sep or not task or not path:
        raise argparse.ArgumentTypeError(f"--data {text!r}: expected TASK=DIR")
    return task, Path(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", type=parse_checkpoint, metavar="[LABEL=]CHECKPOINT",
                        help="checkpoint folders (e.g. base=/ckpt/base gasp=outputs/export); the first is the reference")
    parser.add_argument("--tasks", default="vsibench,blink_multi_view_reasoning,all_angles_bench",
                        help="comma-separated lmms-eval tasks (default: the paper's three)")
    parser.add_argument("--data", action="append", type=parse_data, default=[], metavar="TASK=DIR",
                        help="a local copy of a task's data in its released layout (required for all_angles_bench)")
    parser.add_argument("--python", default=sys.executable, help="the Python that has lmms-eval (default: this one)")
    parser.add_argument("--out", default="outputs/eval", help="folder for the report and the runs")
    parser.add_argument("--max-pixels", type=int, default=602112, help="pixels per image or video frame, at most")
    parser.add_argument("--min-pixels", type=int, default=3136, help="pixels per image or video frame, at least")
    parser.add_argument("--max-frames", type=int, default=32, help="frames per video, at most")
    parser.add_argument("--device", default=None, help="cuda, cuda:0 or cpu (default: cuda if available)")
    parser.add_argument("--num-processes", type=int, default=1, help="data-parallel processes (accelerate launch)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="questions per task, for a quick try")
    parser.add_argument("--lmms-args", default="", help="extra arguments for lmms-eval, as one string")
    parser.add_argument("--probe-scenes", nargs="+", default=None, metavar="SCENE",
                        help="held-out scenes: add gasp probe's layer-wise summary of each checkpoint")
    parser.add_argument("--stream", action="store_true", help="show lmms-eval's own output as it runs")


def _device(requested: str | None) -> str:
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _clean(scores: dict) -> dict:
    return {k: (None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v) for k, v in scores.items()}


def _probe(label: str, checkpoint: Path, scenes: list[str], out: Path) -> dict:
    """``gasp probe`` of one checkpoint in its own process; the attention (qk) summary."""
    folder = out / "probe" / label
    log = out / "probe" / f"{label}.log"
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "gasp_plugin.cli", "probe", "--model", str(checkpoint), "--scenes", *scenes,
           "--out", str(folder), "--no-progress"]
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        return {"error": f"gasp probe exited {done.returncode}; log {log}"}
    summary = json.loads((folder / "probe.json").read_text())["summary"]
    return {**summary.get("qk", {}), "descriptor": "qk", "probe_json": str(folder / "probe.json")}


def run(args: argparse.Namespace) -> int:
    from gasp_plugin.eval import harness
    from gasp_plugin.eval.report import write_report

    out = Path(args.out).resolve()
    labels = [label for label, _ in args.checkpoints]
    if len(set(labels)) != len(labels):
        raise ValueError(f"checkpoint labels must differ, got {labels}: name them LABEL=PATH")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    data = dict(args.data)
    unknown = sorted(set(data) - set(tasks))
    if unknown:
        raise ValueError(f"--data for {unknown}, which --tasks {args.tasks!r} does not run")
    budgets = harness.Budgets(args.max_pixels, args.min_pixels, args.max_frames)
    device = _device(args.device)
    checkpoints = []
    for label, path in args.checkpoints:
        model_type, cls = harness.model_class_for(path)
        checkpoints.append({"label": label, "path": str(path.resolve()), "model_type": model_type,
                            "lmms_model": cls.name, "force_simple": cls.force_simple,
                            "model_args": harness.model_args(path, cls, budgets, device if args.num_processes == 1 else None)})
    local_builtin = [t for t in data if not (t in harness.TASKS and harness.TASKS[t].shipped)]
    info = harness.lmms_info(args.python, local_builtin)
    runs = [harness.plan_task(t, data.get(t), out, info.get("yaml", {})) for t in tasks]
    report = {"checkpoints": checkpoints, "budgets": vars(budgets) | {"device": device},
              "lmms_eval": {"python": args.python, "version": info["version"]},
              "tasks": {t: {} for t in tasks}, "probe": {}}
    extra = args.lmms_args.split()
    total, k = len(checkpoints) * len(runs), 0
    print(f"gasp eval: {len(checkpoints)} checkpoint(s) x {len(runs)} task(s) with lmms-eval {info['version']} "
          f"({args.python}), device {device}; report in {out}")
    for ckpt in checkpoints:
        for task_run in runs:
            k += 1
            folder = out / "runs" / ckpt["label"] / task_run.task
            log = folder / "lmms_eval.log"
            cmd = harness.lmms_command(args.python, ckpt["lmms_model"], ckpt["model_args"], task_run, folder / "lmms",
                                       device=device, batch_size=args.batch_size, limit=args.limit,
                                       num_processes=args.num_processes, force_simple=ckpt["force_simple"], extra=extra)
            print(f"[{k}/{total}] {ckpt['label']} / {task_run.task}: running (log {log})", flush=True)
            result = harness.run_lmms(cmd, folder / "lmms", log, task_run.env, sys.stdout if args.stream else None)
            entry = {"seconds": round(result.seconds, 1), "log": str(log), "command": cmd}
            if result.ok:
                try:
                    scores = _clean(harness.read_scores(result.results_file, task_run))
                    entry.update(status="ok", scores=scores, results_file=str(result.results_file))
                except ValueError as err:
                    entry.update(status="failed: unreadable results", error=str(err))
            else:
                entry.update(status=result.status, error=result.error)
            report["tasks"][task_run.task][ckpt["label"]] = entry
            overall = (entry.get("scores") or {}).get("overall")
            shown = f"overall {100 * overall:.1f}" if overall is not None else entry.get("error", "")
            print(f"[{k}/{total}] {ckpt['label']} / {task_run.task}: {entry['status']} in {result.seconds:.0f} s, {shown}",
                  flush=True)
            write_report(report, out, chart=False)
    if args.probe_scenes:
        for ckpt in checkpoints:
            print(f"probe: {ckpt['label']} on {len(args.probe_scenes)} scene path(s)", flush=True)
            report["probe"][ckpt["label"]] = _probe(ckpt["label"], Path(ckpt["path"]), args.probe_scenes, out)
    paths = write_report(report, out)
    print(Path(paths["markdown"]).read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    failed = [f"{lab}/{t}" for t, r in report["tasks"].items() for lab, e in r.items() if e["status"] != "ok"]
    if failed:
        print(f"gasp eval: {len(failed)} of {total} run(s) failed: {', '.join(failed)} (see their logs)", file=sys.stderr)
        return 1
    return 0
