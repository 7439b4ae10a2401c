"""``gasp data index ROOT... --out index.jsonl [--workers N] [--max-depth D]``

Walks the roots once, opens every scene folder found (any registered layout) in ``N`` processes,
and appends one JSON line per scene to ``--out`` (layout, frames, image size, usable frames, the
reasons frames were dropped); an interrupted run continues where it stopped. Prints a progress bar
and a summary table. ``gasp train`` (``data.geometry.scenes``), ``gasp probe --scenes`` and the
integrations (``--gasp_geometry_data``) accept the index file wherever they accept scene folders.
File layout: :mod:`gasp_plugin.data.index`.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p = sub.add_parser("index", help="index scene folders for training at scale",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("roots", nargs="+", help="scene folders, or folders holding scene folders")
    p.add_argument("--out", required=True, help="the index file (JSON lines); appended to when it exists")
    p.add_argument("--workers", type=int, default=1, help="processes opening scenes in parallel")
    p.add_argument("--max-depth", type=int, default=4, help="how many folder levels below a root to search")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from gasp_plugin.data.index import build_index, read_index, summary_table

    try:
        summary = build_index(args.roots, args.out, workers=args.workers, max_depth=args.max_depth,
                              progress=not args.no_progress)
        records = read_index(args.out, errors=True)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"gasp data index: error: {exc}", file=sys.stderr)
        return 2
    print(summary_table(records))
    print(f"indexed {len(summary.records)} scenes in {summary.seconds:.1f} s with {args.workers} worker(s)"
          f"{f'; {summary.resumed} already in the index' if summary.resumed else ''}; wrote {args.out}")
    return 0
