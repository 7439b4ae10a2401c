"""What every benchmark reports beside its table: the machine's load, and its figures as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["load_average", "write_json"]


def load_average() -> float | None:
    """The 1-minute load average (other processes included), ``None`` where the OS has none."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def write_json(path: str | Path | None, record: dict) -> None:
    """Write ``record`` to ``path`` (indented JSON) and say so; nothing when ``path`` is None."""
    if path:
        Path(path).write_text(json.dumps(record, indent=2))
        print(f"wrote {path}")
