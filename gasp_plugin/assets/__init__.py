"""Data shipped with the package: a trimmed real RGB-D sample (``hololens-000``, MIT licence)."""

from pathlib import Path

__all__ = ["asset_path", "HOLOLENS_SAMPLE"]

_ROOT = Path(__file__).parent


def asset_path(name: str) -> Path:
    """Path of a bundled asset; raises ``FileNotFoundError`` naming what is available."""
    path = _ROOT / name
    if not path.exists():
        known = sorted(p.name for p in _ROOT.iterdir() if not p.name.startswith("_"))
        raise FileNotFoundError(f"no bundled asset {name!r} in {_ROOT}; available: {known}")
    return path


HOLOLENS_SAMPLE = "hololens-000"
