"""The report of ``gasp eval``: per task and category, each checkpoint's score side by side and its
difference from the first checkpoint (the reference, usually the base model), written as
``report.json``, ``report.md`` and ``report.png`` (grouped bars, one panel per task).

Scores are lmms-eval's, fractions in [0, 1] in the JSON; the Markdown and the chart show points
(x 100), as papers report them. A run that failed has no scores: its cells read ``failed`` and its
error is listed; the other runs' results stand.

``report.json``: ``{"checkpoints": [{label, path, model_type, lmms_model, model_args}], "budgets",
"lmms_eval": {python, version}, "tasks": {task: {label: {status, scores, seconds, log, command,
error}}}, "rows": [{task, category, <label>: score, "diff_<label>": difference}], "probe":
{label: summary}}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["table_rows", "write_report", "markdown"]


def _num(x):
    return None if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else x


def table_rows(report: dict) -> list[dict]:
    """One row per (task, category) over all checkpoints' scores; ``diff_<label>`` = the label's
    score minus the first checkpoint's (None when either is missing)."""
    labels = [c["label"] for c in report["checkpoints"]]
    rows = []
    for task, runs in report["tasks"].items():
        categories: list[str] = []
        for label in labels:
            for cat in (runs.get(label) or {}).get("scores") or {}:
                if cat not in categories:
                    categories.append(cat)
        for cat in categories:
            row = {"task": task, "category": cat}
            for label in labels:
                row[label] = _num(((runs.get(label) or {}).get("scores") or {}).get(cat))
            ref = row[labels[0]]
            for label in labels[1:]:
                row[f"diff_{label}"] = None if ref is None or row[label] is None else row[label] - ref
            rows.append(row)
    return rows


def _cell(runs: dict, label: str, value) -> str:
    status = (runs.get(label) or {}).get("status", "not run")
    if status != "ok":
        return status.split(":")[0]
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown(report: dict) -> str:
    labels = [c["label"] for c in report["checkpoints"]]
    rows = report["rows"]
    b = report["budgets"]
    lines = ["# gasp eval", "", f"lmms-eval {report['lmms_eval'].get('version', '?')} "
             f"({report['lmms_eval'].get('python', '?')}); scores in points (x 100); "
             f"difference = checkpoint - {labels[0]}.", "",
             f"Budgets: max_pixels {b['max_pixels']}, min_pixels {b['min_pixels']} per image or frame "
             f"(model classes with a pixel budget), at most {b['max_frames']} frames per video.", "",
             "| checkpoint | path | model_type | lmms-eval model | model_args |", "|---|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['path']} | {c['model_type']} | {c['lmms_model']} | `{c['model_args']}` |"
              for c in report["checkpoints"]]
    for task, runs in report["tasks"].items():
        lines += ["", f"## {task}", ""]
        head = ["category", *labels, *[f"{lab} - {labels[0]}" for lab in labels[1:]]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        task_rows = [r for r in rows if r["task"] == task]
        for r in task_rows:
            cells = [r["category"], *[_cell(runs, lab, r[lab]) for lab in labels]]
            cells += ["n/a" if r[f"diff_{lab}"] is None else f"{100 * r[f'diff_{lab}']:+.1f}" for lab in labels[1:]]
            lines.append("| " + " | ".join(cells) + " |")
        if not task_rows:
            lines.append("| (no scores) |" + " |" * (len(head) - 1))
        for label in labels:
            run = runs.get(label) or {}
            if run.get("status", "ok") != "ok":
                lines.append(f"\n{label}: {run.get('status')} ({run.get('error', '')}); log: {run.get('log')}")
    if report.get("probe"):
        lines += ["", "## Layer-wise probe (attention query/key matching, PCK@2 at the peak layer)", "",
                  "| checkpoint | peak layer | PCK@2 | chance | rho | robustness at max gap |", "|---|---|---|---|---|---|"]
        for label, s in report["probe"].items():
            if "error" in s:
                lines.append(f"| {label} | failed: {s['error']} | | | | |")
                continue
            lines.append(f"| {label} | {s.get('peak_layer')} | {_pct(s.get('pck2'))} | {_pct(s.get('chance_pck2'))} | "
                         f"{_fmt(s.get('rho'))} | {_pct(s.get('robustness_max_gap'))} |")
    return "\n".join(lines) + "\n"


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def plot(report: dict, path: Path) -> Path | None:
    """Grouped bars (points) per task and category, one bar per checkpoint; None with no scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [c["label"] for c in report["checkpoints"]]
    tasks = [t for t in report["tasks"] if any(r["task"] == t for r in report["rows"])]
    if not tasks:
        return None
    widths = [max(2, sum(r["task"] == t for r in report["rows"])) for t in tasks]
    fig, axes = plt.subplots(1, len(tasks), figsize=(sum(widths) * 0.9 + 1.5, 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    bar = 0.8 / len(labels)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in report["rows"] if r["task"] == task]
        for k, label in enumerate(labels):
            xs = [i + (k - (len(labels) - 1) / 2) * bar for i in range(len(rows))]
            ax.bar(xs, [100 * (r[label] or 0.0) for r in rows], bar, label=label)
        ax.set_xticks(range(len(rows)), [r["category"] for r in rows], rotation=45, ha="right", fontsize=7)
        ax.set_title(task, fontsize=9)
        ax.set_ylim(0, 100)
        ax.set_ylabel("score (points)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: Path, *, chart: bool = True) -> dict:
    """Fill ``report['rows']`` and write report.json / report.md (/ report.png); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["rows"] = table_rows(report)
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str))
    paths["markdown"].write_text(markdown(report))
    if chart:
        png = plot(report, out_dir / "report.png")
        if png is not None:
            paths["png"] = png
    return paths
