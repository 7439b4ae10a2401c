"""The ``gasp`` command line. Each subcommand lives next to the code it drives and registers
itself here by module path; a module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "tracks": ("gasp_plugin.data.tracks_cli", "compute ground-truth point tracks on a scene"),
    "data": ("gasp_plugin.data.index_cli", "data sets: gasp data index ROOT... --out index.jsonl [--workers N]"),
    "bench": ("gasp_plugin.bench.cli", "benchmarks: tracks, overhead"),
    "probe": ("gasp_plugin.probe.cli", "layer-wise point-matching probe of a VLM on held-out scenes"),
    "train": ("gasp_plugin.train.launch", "train with GASP from a recipe: gasp train --recipe FILE [key=value ...]"),
    "demo": ("gasp_plugin.demo", "the whole method on a tiny model: probe, train with GASP, probe again"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gasp", description="GASP: geometric priors for VLMs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
