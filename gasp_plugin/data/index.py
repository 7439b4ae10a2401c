"""A scene index: the scene folders under some roots, opened once (in parallel) and recorded, so
that training on thousands of scenes starts without walking a shared file system again.

    gasp data index /data/scannet/scans /data/dl3dv --out index.jsonl --workers 16
    open_scenes(["index.jsonl"])        # what gasp train / gasp probe / the integrations call

The file is JSON lines: a header ``{"format": "gasp-scene-index/1", "roots": [...]}``, then one
record per scene, in the order the walk found them::

    {"path": "/abs/scene", "layout": "scannet-sens", "name": "scene0000_00", "frames": 5578,
     "usable": 5502, "image_size": [1296, 968], "dropped": {"pose contains NaN or inf": [[17, 92]]},
     "seconds": 0.41}

``dropped`` maps a reason (file names and numbers replaced by ``FILE`` / ``N``) to the dropped
frames as inclusive ``[first, last]`` ranges. A scene that cannot be opened is recorded with
``"error"`` instead. Writing is append-only and flushed per scene, so an interrupted run continues
where it stopped (scenes already recorded are not opened again; a half-written last line is
dropped). Reading sorts records by path, so every rank of a job sees the same scene order.

:class:`IndexedScene` serves a recorded scene without touching its files until a frame is read
(then the reader opens it with the recorded layout); its length and usable frames come from the
record.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gasp_plugin.data.scene import Scene, detect_layouts, open_scene

__all__ = ["INDEX_FORMAT", "find_scenes", "index_scene", "build_index", "read_index", "is_scene_index",
           "IndexedScene", "scenes_from_index", "IndexSummary", "summary_table", "reason_kind"]

INDEX_FORMAT = "gasp-scene-index/1"


def reason_kind(reason: str) -> str:
    """A skip reason with file names and numbers replaced, so that reasons can be counted."""
    kind = re.sub(r"\S*[/\\]\S*", "FILE", reason)
    return re.sub(r"(?<![A-Za-z])-?\d+(\.\d+)?", "N", kind)


def _ranges(ids: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def _expand(ranges) -> list[int]:
    return [i for a, b in ranges for i in range(int(a), int(b) + 1)]


def find_scenes(roots, max_depth: int = 4) -> tuple[list[tuple[Path, str]], list[dict]]:
    """Scene folders under ``roots``: ``([(path, layout)], [error records])``. A folder one reader
    recognises is a scene (not descended into); others are searched ``max_depth`` levels down
    (hidden folders skipped). A folder several readers recognise is an error record."""
    found, errors, seen = [], [], set()
    stack = [(Path(r).resolve(), 0) for r in reversed([str(r) for r in roots])]
    for r, _ in stack:
        if not r.exists():
            raise FileNotFoundError(f"index root {r} does not exist")
    while stack:
        path, depth = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        layouts = detect_layouts(path)
        if len(layouts) == 1:
            found.append((path, layouts[0]))
        elif len(layouts) > 1:
            errors.append({"path": str(path), "error": f"matches several layouts {layouts}; open it with layout=..."})
        elif path.is_dir() and depth < max_depth:
            try:
                subs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError as exc:
                errors.append({"path": str(path), "error": f"cannot list: {exc}"})
                continue
            stack.extend((p, depth + 1) for p in reversed(subs))
    return found, errors


def index_scene(path: str | Path, layout: str) -> dict:
    """Open one scene and describe it (or the error that stopped it)."""
    start = time.perf_counter()
    try:
        scene = open_scene(path, layout=layout)
        valid = scene.valid_frames
        size = None
        if valid:
            i = valid[0]
            size = list(scene.image_size(i)) if hasattr(scene, "image_size") else list(scene.image(i).shape[1::-1])
        by_kind: dict[str, list[int]] = {}
        for i, reason in scene.skipped.items():
            by_kind.setdefault(reason_kind(reason), []).append(int(i))
        record = {"path": str(path), "layout": layout, "name": scene.name, "frames": len(scene), "usable": len(valid),
                  "image_size": size, "dropped": {k: _ranges(v) for k, v in sorted(by_kind.items())}}
    except (ValueError, OSError, ImportError) as exc:
        record = {"path": str(path), "layout": layout, "error": str(exc)}
    record["seconds"] = round(time.perf_counter() - start, 4)
    return record


def _index_one(item):
    return index_scene(*item)


def _worker_init():
    import torch

    torch.set_num_threads(1)  # many small processes: no intra-op threads fighting over cores


def read_index(path: str | Path, errors: bool = False) -> list[dict]:
    """Records of an index file, sorted by path (the last record of a path wins); error records
    only when ``errors``. Relative paths are taken from the index's folder."""
    path = Path(path)
    records: dict[str, dict] = {}
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{k}: not a JSON line ({exc}); re-run gasp data index to repair it") from exc
        if "format" in rec:
            if rec["format"] != INDEX_FORMAT:
                raise ValueError(f"{path}: index format {rec['format']!r}, this version reads {INDEX_FORMAT!r}")
            continue
        p = Path(rec["path"])
        rec["path"] = str(p if p.is_absolute() else (path.parent / p).resolve())
        records[rec["path"]] = rec
    return [r for _, r in sorted(records.items()) if errors or "error" not in r]


def is_scene_index(path: str | Path) -> bool:
    """Whether ``path`` is a file whose first line is a scene-index header."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
        return json.loads(first).get("format", "").startswith("gasp-scene-index")
    except (OSError, ValueError, AttributeError):
        return False


def _resume(out: Path, roots) -> set[str]:
    """Paths already recorded in ``out``; writes the header to a new file and drops a half-written
    last line of an interrupted one."""
    if not out.is_file() or out.stat().st_size == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"format": INDEX_FORMAT, "roots": [str(Path(r).resolve()) for r in roots]}) + "\n")
        return set()
    if not is_scene_index(out):
        raise ValueError(f"{out} exists and is not a scene index; choose another --out")
    text = out.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        out.write_text("".join(lines[:-1]))  # the interrupted write
    return {r["path"] for r in read_index(out, errors=True)}


@dataclass
class IndexSummary:
    """What :func:`build_index` did: records written now, scenes skipped as already indexed."""

    records: list[dict] = field(default_factory=list)
    resumed: int = 0
    seconds: float = 0.0


def build_index(roots, out: str | Path, workers: int = 1, max_depth: int = 4, progress: bool = True) -> IndexSummary:
    """Find the scenes under ``roots`` and append a record per scene to ``out`` (see the module
    docstring), opening scenes in ``workers`` processes. Resumes an interrupted run."""
    from tqdm.auto import tqdm

    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    start = time.perf_counter()
    out = Path(out)
    done = _resume(out, roots)
    found, walk_errors = find_scenes(roots, max_depth=max_depth)
    todo = [(str(p), layout) for p, layout in found if str(p) not in done]
    summary = IndexSummary(resumed=len(found) - len(todo))
    with open(out, "a") as f, tqdm(total=len(todo), desc="indexing scenes", unit="scene", disable=not progress) as bar:
        def write(record):
            f.write(json.dumps(record) + "\n")
            f.flush()
            summary.records.append(record)
            bar.update(1)

        for record in walk_errors:
            if record["path"] not in done:
                f.write(json.dumps(record) + "\n")
                summary.records.append(record)
        if workers == 1 or len(todo) <= 1:
            for item in todo:
                write(_index_one(item))
        else:
            chunk = max(1, min(32, len(todo) // (8 * workers)))  # few round trips for many small scenes
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_worker_init) as pool:
                for record in pool.map(_index_one, todo, chunksize=chunk):
                    write(record)
    summary.seconds = time.perf_counter() - start
    return summary


def summary_table(records: list[dict]) -> str:
    """Scenes, frames, usable frames and errors per layout, then dropped frames by reason."""
    rows: dict[str, Counter] = {}
    reasons: Counter = Counter()
    for r in records:
        c = rows.setdefault(r.get("layout", "?"), Counter())
        if "error" in r:
            c["errors"] += 1
            continue
        c["scenes"] += 1
        c["frames"] += r["frames"]
        c["usable"] += r["usable"]
        for kind, ranges in r["dropped"].items():
            reasons[kind] += sum(b - a + 1 for a, b in ranges)
    total = sum(rows.values(), Counter())
    lines = [f"{'layout':<18} {'scenes':>7} {'frames':>9} {'usable':>9} {'dropped':>8} {'errors':>7}"]
    for name, c in sorted(rows.items()) + [("total", total)]:
        lines.append(f"{name:<18} {c['scenes']:>7} {c['frames']:>9} {c['usable']:>9} "
                     f"{c['frames'] - c['usable']:>8} {c['errors']:>7}")
    if reasons:
        lines.append("dropped frames by reason:")
        lines += [f"  {n:>8}  {kind}" for kind, n in reasons.most_common()]
    errors = [r for r in records if "error" in r]
    if errors:
        lines.append("scenes not indexed:")
        lines += [f"  {r['path']}: {r['error'].splitlines()[0]}" for r in errors[:20]]
        if len(errors) > 20:
            lines.append(f"  ... and {len(errors) - 20} more (see the index file)")
    return "\n".join(lines)


class IndexedScene(Scene):
    """A scene recorded in an index: length and usable frames from the record; the reader is
    opened (with the recorded layout) when a frame is first read. A scene whose frame count
    changed since it was indexed is a ``ValueError`` saying to re-index."""

    def __init__(self, record: dict):
        self.record, self.name = record, record["name"]
        self.path, self.layout = Path(record["path"]), record["layout"]
        self._n, self._scene = int(record["frames"]), None
        for kind, ranges in record.get("dropped", {}).items():
            for i in _expand(ranges):
                self.skipped[i] = f"{kind} (recorded in the index)"

    def __len__(self) -> int:
        return self._n

    @property
    def scene(self) -> Scene:
        """The reader's scene, opened on first use."""
        if self._scene is None:
            scene = open_scene(self.path, layout=self.layout)
            if len(scene) != self._n:
                raise ValueError(f"{self.path}: has {len(scene)} frames, the index recorded {self._n}; the scene "
                                 "changed since it was indexed: re-run gasp data index")
            scene.skipped.update(Scene.skipped.fget(self))  # what the index recorded
            self._scene = scene
        return self._scene

    @property
    def skipped(self) -> dict[int, str]:
        if self.__dict__.get("_scene") is not None:
            return self._scene.skipped
        return super().skipped

    def image(self, i: int) -> np.ndarray:
        return self.scene.image(self.check_frame(i))

    def images(self, ids: list[int]) -> np.ndarray:
        return self.scene.images([self.check_frame(i) for i in ids])

    def depth(self, i: int) -> np.ndarray:
        return self.scene.depth(self.check_frame(i))

    def intrinsics(self, i: int) -> np.ndarray:
        return self.scene.intrinsics(self.check_frame(i))

    def pose(self, i: int) -> np.ndarray:
        return self.scene.pose(self.check_frame(i))


def scenes_from_index(path: str | Path) -> list[IndexedScene]:
    """The usable scenes (opened without errors) of an index file, sorted by path."""
    return [IndexedScene(r) for r in read_index(path)]


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)
