"""``gasp bench NAME [options]``: a registry of benchmarks, each a module with
``add_arguments(parser)`` and ``run(args) -> int`` that prints a side-by-side table with ratios.

Benchmark modules are imported only when run, so a benchmark whose module (or its dependencies)
is missing fails with a clear error and never breaks ``gasp --help``.
"""

from __future__ import annotations

import argparse
from importlib import import_module

__all__ = ["BENCHMARKS", "register_benchmark", "add_arguments", "run"]

# benchmark name -> (module, one-line description)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "tracks": ("gasp_plugin.bench.tracks", "ground-truth track computation vs decoding the same clip"),
    "overhead": ("gasp_plugin.bench.overhead", "training-step cost of GASP vs plain fine-tuning"),
    "gpu": ("gasp_plugin.bench.gpu", "plain vs GASP training steps of Qwen2.5-VL-7B on 24-frame clips (CUDA)"),
    "demo": ("gasp_plugin.bench.demo_speed", "gasp demo's wall time and PCK@2, and its step rate beside a busy process"),
    "attach": ("gasp_plugin.bench.attach", "attach_gasp time at 7B width, randomized vs full SVD init"),
    "data": ("gasp_plugin.bench.data", "per-stage cost of preparing a geometry clip vs decoding, and DataLoader clips/s"),
    "clips": ("gasp_plugin.bench.clips", "frames, tokens and supervised pairs per geometry clip, per recipe and grid"),
}


def register_benchmark(name: str, module: str, description: str = "",
                       registry: dict[str, tuple[str, str]] = BENCHMARKS) -> None:
    """Add a benchmark; a name already registered is rejected."""
    if name in registry:
        raise ValueError(f"benchmark {name!r} is already registered ({registry[name][0]})")
    registry[name] = (module, description)


def _listing(registry) -> str:
    return "\n".join(f"  {n:10s} {d}" for n, (_, d) in sorted(registry.items()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "benchmarks:\n" + _listing(BENCHMARKS) + "\n\n`gasp bench NAME --help` shows a benchmark's options."
    parser.add_argument("name", metavar="NAME", help="benchmark to run: " + ", ".join(sorted(BENCHMARKS)))
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")


def load_benchmark(name: str, registry: dict[str, tuple[str, str]] = BENCHMARKS):
    """The module of benchmark ``name``; ``ValueError`` for an unknown name, ``ImportError`` with
    the module path for a module that cannot be imported."""
    if name not in registry:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {sorted(registry)}")
    module = registry[name][0]
    try:
        return import_module(module)
    except ImportError as exc:
        raise ImportError(f"benchmark {name!r} is registered as {module}, which cannot be imported: {exc}") from exc


def run(args) -> int:
    module = load_benchmark(args.name)  # an unknown or unimportable name: a one-line `gasp bench: error:`
    parser = argparse.ArgumentParser(prog=f"gasp bench {args.name}", description=BENCHMARKS[args.name][1])
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(args.options)) or 0)
