"""Virtual environments for the training frameworks GASP integrates with, built once and cached.

Each framework test runs the framework's *own* entry point (``llamafactory-cli train``,
``SFTTrainer.train``, ``swift sft``), installed from the package registry at a pinned version in
a venv of its own (its pins differ from ours and from each other's), with this checkout
installed editable beside it. A venv is reused while its spec (requirements + the torch pair) is
unchanged: ``<cache>/<name>/.gasp-spec`` records it. The cache is ``$GASP_VENV_DIR`` or
``<repo>/.cache/venvs``.

Frameworks that need torchvision get ``torch==2.14.1 torchvision==0.29.1`` (the CPU torch 2.13.0
wheel on this kind of machine has no matching torchvision); the others the CPU ``torch==2.13.0``.
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


def _run(cmd: list, log: Path, timeout: int) -> None:
    with log.open("a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}); log {log}:\n{tail}")


def ensure_venv(fw: Framework, timeout: int = 1800) -> Path:
    """The venv's python for ``fw``, building it (and this checkout, editable) when its spec changed."""
    root = cache_dir() / fw.name
    python = root / "bin" / "python"
    marker = root / ".gasp-spec"
    digest = hashlib.sha256(fw.spec.encode()).hexdigest()[:16]
    if python.is_file() and marker.is_file() and marker.read_text() == digest:
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    log = root.parent / f"{fw.name}.install.log"
    log.write_text("")
    start = time.monotonic()
    if root.exists():
        import shutil

        shutil.rmtree(root)
    _run([sys.executable, "-m", "venv", str(root)], log, timeout)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, *fw.torch], log, timeout)  # first: an unpinned torch would pull another build
    _run([*pip, *fw.torch, *fw.requirements, "-e", str(REPO)], log, timeout)
    marker.write_text(digest)
    with log.open("a") as f:
        f.write(f"built in {time.monotonic() - start:.0f} s\n")
    return python
