"""Interleaving geometry and instruction batches, decided per global step so every rank agrees.

Notation: a *step* is one global micro-batch index ``k`` (``optimizer_step * accumulation + m``);
at step ``k`` every rank processes one micro-batch of ``b`` samples, and all ranks take the same
kind of batch (geometry or instruction), because the kind is a pure function of ``(seed, k)``.
ZeRO-3 hangs when ranks run different modules in one step; this makes that impossible.

Each stream is split across ranks without overlap: the ``n``-th step of a kind uses stream items
``n * world * b + rank * b + j`` (``j < b``). Everything is deterministic given the seed.

:class:`InterleavedDataset` is a map-style dataset whose flat index ``i`` encodes
``(step, rank, j)`` in the order that a sequential sampler batched by ``b`` and sharded across
ranks by ``accelerate`` (batch ``t`` to rank ``t % world``) hands out, so the stock Trainer data
loader, its resume logic (skipping batches without loading them) and its sharding all apply.

A sample that cannot be used (:class:`BadSample`) is replaced by another item of the same stream
(deterministically), and the replacement is counted and carried in the batch (``gasp_skipped``),
so skips are counted even inside DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from gasp_plugin.constants import TARGETS_KEY
from gasp_plugin.data.clips import check_geometry_ratio
from gasp_plugin.data.instruct import BadSample

__all__ = [
    "GEOMETRY",
    "INSTRUCT",
    "KINDS",
    "step_uniform",
    "step_kinds",
    "InterleavePlan",
    "InterleavedDataset",
    "InterleavedCollator",
    "PermutedSource",
    "META_KEYS",
    "NOTES_KEY",
    "forward_keys",
    "KeepForwardKeys",
]

GEOMETRY, INSTRUCT = "geometry", "instruct"
KINDS = (GEOMETRY, INSTRUCT)
#: what :class:`InterleavedCollator` adds to a batch besides the kind's own keys (the trainer pops them)
META_KEYS = ("gasp_kind", "gasp_skipped", "gasp_skip_reasons", "gasp_trace")
#: a sample dict may carry notes under this key (e.g. a clip's frames and tokens); the dataset
#: moves them into the sample's trace, where the trainer reads them
NOTES_KEY = "gasp_notes"
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a counter-based hash."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def step_uniform(seed: int, steps: np.ndarray | int, salt: int = 0) -> np.ndarray:
    """A uniform number in ``[0, 1)`` per step, a pure function of ``(seed, salt, step)``."""
    steps = np.asarray(steps, dtype=np.uint64)
    key = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _splitmix64(np.uint64(salt)))
    return (_splitmix64(steps ^ key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def step_kinds(seed: int, geometry_ratio: float, num_steps: int) -> np.ndarray:
    """``bool [num_steps]``: True where step ``k`` is a geometry step (probability ``geometry_ratio``)."""
    check_geometry_ratio(geometry_ratio)
    return step_uniform(seed, np.arange(num_steps, dtype=np.uint64)) < geometry_ratio


@dataclass(frozen=True)
class InterleavePlan:
    """Which kind each step is, and which stream item each ``(step, rank, j)`` reads."""

    seed: int
    geometry_ratio: float
    world_size: int
    batch_size: int
    num_steps: int

    def __post_init__(self):
        for name in ("world_size", "batch_size", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)!r}")
        check_geometry_ratio(self.geometry_ratio)

    @property
    def _counts(self) -> tuple[np.ndarray, np.ndarray]:
        return _cumulative(self.seed, self.geometry_ratio, self.num_steps)

    def kind(self, step: int) -> str:
        self._check(step)
        return GEOMETRY if self._counts[0][step] else INSTRUCT

    def locate(self, index: int) -> tuple[int, int, int]:
        """Flat dataset index -> ``(step, rank, j)``."""
        per_step = self.world_size * self.batch_size
        step, within = divmod(int(index), per_step)
        return step, within // self.batch_size, within % self.batch_size

    def stream_index(self, step: int, rank: int, j: int) -> tuple[str, int]:
        """``(kind, n * world * b + rank * b + j)`` with ``n`` = earlier steps of the same kind."""
        self._check(step)
        is_geo, geo_before = self._counts
        n = int(geo_before[step]) if is_geo[step] else step - int(geo_before[step])
        kind = GEOMETRY if is_geo[step] else INSTRUCT
        return kind, (n * self.world_size + rank) * self.batch_size + j

    def __len__(self) -> int:
        return self.num_steps * self.world_size * self.batch_size

    def _check(self, step: int) -> None:
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside the plan's {self.num_steps} steps")


@lru_cache(maxsize=8)
def _cumulative(seed: int, ratio: float, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(is_geometry [k], geometry steps strictly before k [k])``."""
    is_geo = step_kinds(seed, ratio, num_steps)
    before = np.concatenate([[0], np.cumsum(is_geo)[:-1]]).astype(np.int64)
    return is_geo, before


class PermutedSource:
    """A finite dataset read as an endless stream: epoch ``e`` visits it in a seeded permutation.

    ``source(i)`` returns ``encode(perm_e[i % n])`` with ``e = i // n``.
    """

    def __init__(self, encode: Callable[[int], Any], length: int, seed: int):
        if length < 1:
            raise ValueError("PermutedSource: the dataset is empty")
        self.encode, self.length, self.seed = encode, length, seed

    def item_id(self, index: int) -> int:
        epoch, pos = divmod(int(index), self.length)
        return int(_permutation(self.seed, epoch, self.length)[pos])

    def __call__(self, index: int) -> Any:
        return self.encode(self.item_id(index))


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, length: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(length)


class InterleavedDataset:
    """Map-style dataset over the plan; item ``i`` is a dict with ``kind``, ``sample``,
    ``skipped`` (bad samples replaced to produce it) and ``trace`` (step, rank, stream index).

    Args:
        plan: the :class:`InterleavePlan`.
        sources: kind -> callable ``stream_index -> sample``; raises :class:`BadSample` for an
            unusable sample. A kind with ratio 0 (never drawn) may be missing.
        max_tries: replacements tried per item before giving up with a RuntimeError.
    """

    def __init__(self, plan: InterleavePlan, sources: dict[str, Callable[[int], Any]], max_tries: int = 16):
        unknown = set(sources) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown source kinds {sorted(unknown)}; known: {KINDS}")
        need = {GEOMETRY} if plan.geometry_ratio == 1 else {INSTRUCT} if plan.geometry_ratio == 0 else set(KINDS)
        missing = need - set(sources)
        if missing:
            raise ValueError(
                f"geometry_ratio={plan.geometry_ratio} needs {sorted(need)} data but {sorted(missing)} has none"
            )
        self.plan, self.sources, self.max_tries = plan, sources, max_tries

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> dict:
        step, rank, j = self.plan.locate(index)
        kind, stream = self.plan.stream_index(step, rank, j)
        reasons = []
        for attempt in range(self.max_tries):
            # replacements: far-away stream items, a pure function of (seed, item, attempt)
            item = stream if attempt == 0 else stream + 1 + int(
                step_uniform(self.plan.seed, stream, salt=attempt) * 2**40
            )
            try:
                sample = self.sources[kind](item)
            except BadSample as err:
                reasons.append(str(err))
                continue
            trace = {"step": step, "rank": rank, "kind": kind, "stream": item}
            if isinstance(sample, dict) and NOTES_KEY in sample:
                trace.update(sample.pop(NOTES_KEY))
            return {"kind": kind, "sample": sample, "skipped": attempt, "reasons": reasons, "trace": trace}
        raise RuntimeError(
            f"{self.max_tries} consecutive unusable {kind} samples at step {step} (rank {rank}); "
            f"the data is probably broken. Last reasons: {reasons[-3:]}"
        )


@dataclass
class InterleavedCollator:
    """Collates one rank's micro-batch (all items share a kind) with that kind's collator.

    The batch gets ``gasp_kind`` (str), ``gasp_skipped`` (int), ``gasp_skip_reasons`` and
    ``gasp_trace`` (list of dicts), the :data:`META_KEYS`; the trainer pops them before the forward.
    """

    collators: dict[str, Callable[[list], dict]]

    def __call__(self, items: list[dict]) -> dict:
        kinds = {it["kind"] for it in items}
        if len(kinds) != 1:
            raise RuntimeError(f"a micro-batch mixes kinds {sorted(kinds)}: the sampler is not sequential")
        kind = kinds.pop()
        batch = self.collators[kind]([it["sample"] for it in items])
        batch["gasp_kind"] = kind
        batch["gasp_skipped"] = sum(it["skipped"] for it in items)
        batch["gasp_skip_reasons"] = [r for it in items for r in it["reasons"]]
        batch["gasp_trace"] = [it["trace"] for it in items]
        return batch


def forward_keys(model) -> frozenset[str] | None:
    """Names of the keyword arguments the model's forward declares (a PEFT wrapper unwrapped;
    ``**kwargs`` not counted); ``None`` when it declares none (it accepts anything)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return frozenset(named) or None


@dataclass
class KeepForwardKeys:
    """Collate with ``collate``, then drop keys the model's forward does not take (``keys`` from
    :func:`forward_keys`; ``None`` keeps all). The GASP targets always stay: the trainer pops them."""

    collate: Callable[[list], dict]
    keys: frozenset[str] | None

    def __call__(self, examples: list) -> dict:
        batch = self.collate(examples)
        if self.keys is None:
            return batch
        return {k: v for k, v in batch.items() if k in self.keys or k == TARGETS_KEY}
