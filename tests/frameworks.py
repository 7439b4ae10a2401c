"""Virtual environments for the training frameworks GASP integrates with, built once and cached.

Each framework test runs the framework's *own* entry point (``llamafactory-cli train``,
``SFTTrainer.train``, ``swift sft``), installed from the package registry at a pinned version in
a venv of its own (its pins differ from ours and from each other's), with this checkout
installed editable beside it. A venv is reused while its spec (requirements + the torch pair) is
unchanged: ``<cache>/<name>/.gasp-spec`` records it. The cache is ``$GASP_VENV_DIR`` or
``<repo>/.cache/venvs``.

Frameworks that need torchvision get ``torch==2.14.1 torchvision==0.29.1`` (the CPU torch 2.13.0
wheel on this kind of machine has no matching torchvision); the others the CPU ``torch==2.13.0``.
That pair is a CUDA build of about 6 GB, so it is installed once, in a base venv per torch pin set
(``<cache>/torch-<digest>``), and each framework venv sees it through a ``.pth`` file: its own
site-packages come first (a framework's newer numpy, say, shadows the base's), then the base's.
Four framework venvs thus take about 6 GB + 4 x 0.5-1 GB instead of 4 x 6.5 GB.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_CPU = ("torch==2.13.0",)
TORCH_VISION = ("torch==2.14.1", "torchvision==0.29.1")


@dataclass(frozen=True)
class Framework:
    """A framework's venv: a name, its torch pins and its own requirements (pinned)."""

    name: str
    torch: tuple[str, ...]
    requirements: tuple[str, ...]

    @property
    def spec(self) -> str:
        return json.dumps({"torch": self.torch, "requirements": self.requirements}, sort_keys=True)


def cache_dir() -> Path:
    return Path(os.environ.get("GASP_VENV_DIR", REPO / ".cache" / "venvs"))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _site_packages(root: Path) -> Path:
    """A venv's site-packages (the venvs are made by this interpreter, so with its version)."""
    return root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _check_disk(where: Path, need_gb: float) -> None:
    import shutil

    free = shutil.disk_usage(where).free / 2**30
    if free < need_gb:
        raise RuntimeError(f"{where} has {free:.1f} GiB free; building this venv needs about {need_gb:.0f} GiB. "
                           f"Free some space or point GASP_VENV_DIR at a larger disk.")


def _run(cmd: list, log: Path, timeout: int) -> None:
    with log.open("a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}); log {log}:\n{tail}")


def _fresh_venv(root: Path, log: Path, timeout: int) -> Path:
    if root.exists():
        import shutil

        shutil.rmtree(root)
    _run([sys.executable, "-m", "venv", str(root)], log, timeout)
    return root / "bin" / "python"


def _pip(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "-q", "--no-cache-dir", "--disable-pip-version-check"]


def _is_built(root: Path, digest: str) -> bool:
    marker = root / ".gasp-spec"
    return (root / "bin" / "python").is_file() and marker.is_file() and marker.read_text() == digest


def ensure_torch_base(torch: tuple[str, ...], timeout: int = 1800) -> Path:
    """The site-packages of a venv holding only ``torch`` (pins), built once and shared."""
    digest = _digest(json.dumps(torch))
    root = cache_dir() / f"torch-{digest}"
    if not _is_built(root, digest):
        root.parent.mkdir(parents=True, exist_ok=True)
        _check_disk(root.parent, 8)
        log = root.parent / f"torch-{digest}.install.log"
        log.write_text("")
        python = _fresh_venv(root, log, timeout)
        _run([*_pip(python), *torch], log, timeout)
        (root / ".gasp-spec").write_text(digest)
    return _site_packages(root)


def ensure_venv(fw: Framework, timeout: int = 1800) -> Path:
    """The venv's python for ``fw``, building it (and this checkout, editable) when its spec changed.

    Torch comes from the shared base venv of ``fw.torch`` (see the module docstring).
    """
    base = ensure_torch_base(fw.torch, timeout)
    root = cache_dir() / fw.name
    digest = _digest(fw.spec + str(base))
    python = root / "bin" / "python"
    if _is_built(root, digest):
        return python
    _check_disk(root.parent, 3)
    log = root.parent / f"{fw.name}.install.log"
    log.write_text("")
    start = time.monotonic()
    _fresh_venv(root, log, timeout)
    (_site_packages(root) / "_gasp_torch_base.pth").write_text(f"{base}\n")
    # The torch pins ride along so that no requirement can move torch off the base's build.
    _run([*_pip(python), *fw.torch, *fw.requirements, "-e", str(REPO)], log, timeout)
    (root / ".gasp-spec").write_text(digest)
    with log.open("a") as f:
        f.write(f"built in {time.monotonic() - start:.0f} s\n")
    return python
