"""The ``gasp`` command line. Each subcommand lives next to the code it drives and registers
itself here by module path; a module provides ``add_arguments(parser)`` and ``run(args) -> int``.

Every command ends the same way (:func:`gasp_plugin.errors.run_command`): a user's mistake (a
missing file, a bad recipe key or value, an unsupported model, a folder that is not a scene) is one
line ``gasp <cmd>: error: ...`` on stderr and exit status 2; a bug prints its traceback (exit
status 1). ``gasp --debug <cmd>`` (or ``gasp <cmd> --debug``) shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from gasp_plugin.errors import add_debug_flag, run_command

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "tracks": ("gasp_plugin.data.tracks_cli", "compute ground-truth point tracks on a scene"),
    "data": ("gasp_plugin.data.index_cli", "data sets: gasp data index ROOT... --out index.jsonl [--workers N]"),
    "bench": ("gasp_plugin.bench.cli", "benchmarks: tracks, overhead"),
    "probe": ("gasp_plugin.probe.cli", "layer-wise point-matching probe of a VLM on held-out scenes"),
    "train": ("gasp_plugin.train.launch", "train with GASP from a recipe: gasp train --recipe FILE [key=value ...]"),
    "demo": ("gasp_plugin.demo", "the whole method on a tiny model: probe, train with GASP, probe again"),
    "env": ("gasp_plugin.env", "versions, supported ranges and attention kernels here, to paste into a bug report"),
    "export": ("gasp_plugin.eval.export", "a trained run to a plain checkpoint: gasp export RUN --out DIR (LoRA merged, heads left out)"),
    "eval": ("gasp_plugin.eval.cli", "lmms-eval on checkpoints over the spatial benchmarks, one report: gasp eval base=DIR gasp=DIR"),
    "integrations": ("gasp_plugin.integrations", "framework glue: gasp integrations swift prints the ms-swift plugin file"),
}


class _Version(argparse.Action):
    """``--version``: read only when asked (it looks up installed versions)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from gasp_plugin.env import version_line

        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gasp", description="GASP: geometric priors for VLMs")
    parser.add_argument("--version", action=_Version, help="gasp-plugin, python and key package versions")
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        add_debug_flag(p, default=argparse.SUPPRESS)  # also after the command: gasp train --debug
        import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(f"gasp {args.command}", lambda: import_module(args._module).run(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
