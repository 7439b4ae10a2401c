"""``gasp env`` and ``gasp --version``: what this machine runs, in a block to paste into a bug report.

For python and each package GASP uses (torch, transformers, peft, accelerate, deepspeed, flash-attn,
decord) the report gives the installed version and whether it lies in the range gasp-plugin
declares. The ranges are read from the installed distribution's metadata
(``importlib.metadata.requires("gasp-plugin")`` and ``Requires-Python``), so ``setup.py`` stays the
one place they are written; the check uses ``packaging`` (a transformers dependency). It also gives
torch's build (CPU, CUDA or ROCm) and devices, and which attention implementations a recipe's
``model.attn_implementation`` can use here.

The pieces are functions returning data (:func:`declared_requirements`, :func:`package_status`,
:func:`torch_info`, :func:`attention_implementations`, :func:`collect`) and one formatter
(:func:`format_report`); only :func:`collect` looks at the machine. :func:`version_line` reads
package metadata only (no torch import), so ``gasp --version`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

__all__ = ["DISTRIBUTION", "PACKAGES", "Requirement", "PackageStatus", "EnvReport", "declared_requirements",
           "installed_version", "package_status", "torch_info", "attention_implementations", "collect",
           "format_report", "version_line", "add_arguments", "run"]

DISTRIBUTION = "gasp-plugin"
#: reported packages (distribution names), in report order
PACKAGES = ("torch", "transformers", "peft", "accelerate", "deepspeed", "flash-attn", "decord")


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


@dataclass(frozen=True)
class Requirement:
    """A declared range: ``specifier`` (e.g. ``>=5.0,<6``; '' = any version), and ``extras``, the
    extras that declare it (empty: ``install_requires``, so the package is required)."""

    specifier: str = ""
    extras: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return not self.extras


@dataclass(frozen=True)
class PackageStatus:
    """One row of the report. ``in_range``: True / False, or None when not installed or unchecked."""

    name: str
    version: str | None
    requirement: Requirement | None  # None: gasp-plugin declares nothing for it
    in_range: bool | None

    @property
    def verdict(self) -> str:
        req = self.requirement
        if req is None:
            return "no range declared"
        if self.version is None:
            return "MISSING: required" if req.required else f"optional: pip install 'gasp-plugin[{req.extras[0]}]'"
        if self.in_range is None:
            return "unchecked: the packaging module is not installed"
        return "ok" if self.in_range else "OUTSIDE the declared range"


@dataclass
class EnvReport:
    """Everything :func:`format_report` prints."""

    gasp_version: str | None
    platform: str
    cpu: str
    python: PackageStatus
    packages: list[PackageStatus]
    torch: dict = field(default_factory=dict)
    attention: dict[str, str] = field(default_factory=dict)
    attention_auto: str | None = None
    note: str = ""  # e.g. why the ranges are unknown


def declared_requirements(requires: list[str], extras: list[str] = ()) -> dict[str, Requirement]:
    """``{canonical name: Requirement}`` from metadata requirement strings such as
    ``'deepspeed>=0.15; extra == "deepspeed"'``; ``extras`` are the distribution's extras
    (``Provides-Extra``). A package listed under several extras, or also in install_requires, is
    merged (install_requires wins)."""
    from packaging.requirements import Requirement as Parsed

    found: dict[str, Requirement] = {}
    for line in requires:
        parsed = Parsed(line)
        marker = parsed.marker
        if marker is None or marker.evaluate({"extra": ""}):
            under: tuple[str, ...] = ()
        else:
            under = tuple(e for e in extras if marker.evaluate({"extra": e}))
            if not under:
                continue  # a marker for another platform or python
        # lower bounds first: ">=5.0,<6"
        spec = ",".join(sorted(map(str, parsed.specifier), key=lambda c: (not c.startswith((">", "~", "=")), c)))
        name = _canonical(parsed.name)
        old = found.get(name)
        if old is not None:
            under = () if old.required or not under else tuple(dict.fromkeys(old.extras + under))
            spec = old.specifier or spec
        found[name] = Requirement(spec, under)
    return found


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_status(name: str, version: str | None, requirement: Requirement | None) -> PackageStatus:
    """Whether ``version`` of ``name`` lies in ``requirement`` (pre-releases and local builds such as
    ``2.13.0+cpu`` are compared by their release number)."""
    in_range = None
    if version is not None and requirement is not None:
        try:
            from packaging.specifiers import SpecifierSet
            from packaging.version import InvalidVersion, Version
        except ImportError:
            pass
        else:
            try:
                in_range = SpecifierSet(requirement.specifier).contains(Version(version), prereleases=True)
            except InvalidVersion:
                in_range = None
    return PackageStatus(name, version, requirement, in_range)


def torch_info() -> dict:
    """torch's version, build (``CPU``, ``CUDA 12.4``, ``ROCm 6.2``) and devices."""
    try:
        import torch
    except ImportError as err:
        return {"error": f"torch cannot be imported: {err}"}
    if torch.version.hip:
        build = f"ROCm {torch.version.hip}"
    elif torch.version.cuda:
        build = f"CUDA {torch.version.cuda}"
    else:
        build = "CPU"
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {props.name} ({props.total_memory / 2**30:.0f} GiB)")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return {"version": torch.__version__, "build": build, "devices": devices,
            "threads": torch.get_num_threads()}


def attention_implementations() -> tuple[dict[str, str], str | None]:
    """``({implementation: 'yes' or why not}, what model.attn_implementation=auto picks here)`` for
    the implementations a recipe accepts."""
    from gasp_plugin.recipe.recipe import ATTN_CHOICES
    from gasp_plugin.train.assemble import resolve_attention

    try:
        import torch
    except ImportError as err:
        return {name: f"no (torch: {err})" for name in ATTN_CHOICES if name != "auto"}, None
    usable: dict[str, str] = {}
    for name in ATTN_CHOICES:
        if name == "eager":
            usable[name] = "yes"
        elif name == "sdpa":
            usable[name] = ("yes" if hasattr(torch.nn.functional, "scaled_dot_product_attention")
                            else "no (this torch has no scaled_dot_product_attention)")
        elif name == "flash_attention_2":
            if installed_version("flash-attn") is None:
                usable[name] = "no (flash-attn is not installed)"
            elif not torch.cuda.is_available():
                usable[name] = "no (no CUDA device)"
            else:
                usable[name] = "yes"
    return usable, resolve_attention("auto")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect() -> EnvReport:
    """Look at this machine (imports torch and transformers)."""
    note = ""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
        meta = metadata.metadata(DISTRIBUTION)
        python_spec, extras = meta.get("Requires-Python") or "", meta.get_all("Provides-Extra") or []
    except metadata.PackageNotFoundError:
        requires, python_spec, extras = [], "", []
        note = f"{DISTRIBUTION} is not installed (pip install -e .), so its declared ranges are unknown"
    try:
        declared = declared_requirements(requires, extras)
    except ImportError:
        declared = {}
        note = "the packaging module is not installed, so the declared ranges are not read"
    python_req = Requirement(python_spec) if python_spec else None
    rows = [package_status(name, installed_version(name), declared.get(_canonical(name))) for name in PACKAGES]
    attention, auto = attention_implementations()
    return EnvReport(
        gasp_version=installed_version(DISTRIBUTION),
        platform=platform.platform(),
        cpu=f"{os.cpu_count()} cores, {_cpu_name()}",
        python=package_status("python", platform.python_version(), python_req),
        packages=rows,
        torch=torch_info(),
        attention=attention,
        attention_auto=auto,
        note=note,
    )


def _row(status: PackageStatus) -> str:
    req = status.requirement
    declared = ""
    if req is not None:
        where = f"extra [{','.join(req.extras)}], " if req.extras else ""
        declared = f"{where}declared {req.specifier or 'any version'}: "
    return f"- {status.name}: {status.version or 'not installed'} ({declared}{status.verdict})"


def format_report(report: EnvReport) -> str:
    """The paste-able block: a Markdown list, one line per item."""
    lines = ["Copy-and-paste the text below into your bug report.", "",
             f"- gasp-plugin: {report.gasp_version or 'not installed (running from a source tree)'}",
             f"- platform: {report.platform}",
             f"- CPU: {report.cpu}",
             _row(report.python)]
    for status in report.packages:
        line = _row(status)
        if status.name == "torch" and report.torch:
            t = report.torch
            if "error" in t:
                line += f"; {t['error']}"
            else:
                devices = ", ".join(t["devices"]) or "none"
                line += f"; {t['build']} build, {t['threads']} threads, accelerators: {devices}"
        lines.append(line)
    usable = [n for n, v in report.attention.items() if v == "yes"]
    not_usable = [f"{n} {v.removeprefix('no ')}" for n, v in report.attention.items() if v != "yes"]
    attention = f"- attention: usable {', '.join(usable) or 'none'}"
    if not_usable:
        attention += f"; not {', '.join(not_usable)}"
    if report.attention_auto:
        attention += f"; auto picks {report.attention_auto}"
    lines.append(attention)
    if report.note:
        lines.append(f"- note: {report.note}")
    return "\n".join(lines)


def version_line() -> str:
    """``gasp --version``: gasp-plugin, python and the core packages, from metadata only."""
    core = ", ".join(f"{n} {installed_version(n) or 'not installed'}" for n in ("torch", "transformers", "peft"))
    return (f"gasp-plugin {installed_version(DISTRIBUTION) or 'not installed'} (python {platform.python_version()}, "
            f"{core}); `gasp env` for the full report")


# ---- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gasp env`` takes no options."""


def run(args: argparse.Namespace) -> int:
    print(format_report(collect()))
    return 0
