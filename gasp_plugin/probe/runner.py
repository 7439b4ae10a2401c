"""Run the probe: one forward per held-out frame pair, descriptors per layer, matches scored.

Notation: ``L`` sequence length, ``n`` visual tokens of a frame, ``p`` tracks of a pair, ``d``
hidden size.

Each pair (anchor frame, target frame) is one batch row: the two frames given as two images
(anchor first) with the adapter's minimal prompt; several pairs go through one forward as
separate rows. At every probed decoder layer, forward
hooks (:class:`gasp_plugin.core.capture.VisualCapture`) keep the visual tokens of the layer's
output hidden states and of its ``q_proj`` / ``k_proj`` outputs (pre-rotary). A query is the anchor token holding a track's anchor
pixel; its truth is the target token holding the track's pixel in the target frame; only tracks
visible in the target (and inside both token grids) count. Descriptors (cosine similarity):

- ``qk``: anchor-token queries vs target-token keys, averaged over heads
  (:mod:`gasp_plugin.core.qk`, shared with the optional query/key loss term);
- ``hidden``: the layer's output hidden states of both frames;
- ``head``: the GASP head of the layer applied to those hidden states (when heads are given).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gasp_plugin.core.qk import attention_heads, qk_descriptors
from gasp_plugin.probe.metrics import CELL_DISTANCES, DEFAULT_DISTANCE, DEFAULT_TEMPERATURE, MatchStats, match
from gasp_plugin.probe.pairs import MAX_GAP_LIMIT, PairSet, select_pairs
from gasp_plugin.probe.report import PairMatches, ProbeReport

__all__ = ["run_probe"]


def _head_embed(heads, layer: int, hidden: torch.Tensor) -> torch.Tensor:
    param = next(iter(heads.parameters()), None)
    return heads(hidden if param is None else hidden.to(param.dtype), layer)


def _to_device(inputs: dict, device, dtype) -> dict:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def _resolve_layers(layers, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    bad = [l for l in layers if not -n_layers <= int(l) < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {n_layers} decoder layers")
    return sorted({int(l) % n_layers for l in layers})


@dataclass
class _Prepared:
    """One pair ready for the forward: its inputs, frame layouts and the queries that count."""

    index: int
    pair: object
    inputs: dict
    layouts: tuple
    qtok: torch.Tensor  # [q] anchor token of each counted track
    ttok: torch.Tensor  # [q] true target token
    valid: torch.Tensor  # [p] which tracks count


class _PairProbe:
    """Descriptors and matches for one forward of a batch of pairs."""

    def __init__(self, adapter, processor, num_heads, num_kv_heads, heads, temperature):
        self.adapter, self.processor = adapter, processor
        self.hq, self.hkv, self.heads, self.temperature = num_heads, num_kv_heads, heads, temperature
        self.layouts: dict = {}

    def layout(self, hw):
        if hw not in self.layouts:
            self.layouts[hw] = self.adapter.frame_layout(self.processor, hw)
        return self.layouts[hw]

    def prepare(self, index, pair, scene) -> _Prepared | str:
        """The pair's inputs and counted queries, or the reason it is left out."""
        try:
            frames = [np.asarray(scene.image(pair.anchor)), np.asarray(scene.image(pair.target))]
        except (OSError, ValueError) as err:
            return f"image unreadable: {err}"
        lay = tuple(self.layout(tuple(fr.shape[:2])) for fr in frames)
        tr = pair.tracks
        qtok = lay[0].pixels_to_tokens(tr.query_xy)
        ttok = lay[1].pixels_to_tokens(tr.xy[1])
        valid = tr.visible[1] & (qtok >= 0) & (ttok >= 0)
        if not bool(valid.any()):
            return "no visible track inside both token grids"
        inputs = self.adapter.build_frame_inputs(self.processor, frames)
        for g, l in zip(self.adapter.frame_grids(inputs)[0], lay):
            if tuple(g) != tuple(l.grid_hw):
                raise ValueError(f"token grid {tuple(g)} of the inputs differs from the layout's {l.grid_hw}")
        return _Prepared(index, pair, inputs, lay, qtok[valid], ttok[valid], valid)

    def descriptors(self, cap, layer, pos_a, pos_b):
        """``{name: (anchor [b, n_a, *], target [b, n_b, *])}`` for one layer; ``pos_a`` /
        ``pos_b`` ``[b, n]`` sequence positions of the two frames' visual tokens in each row."""
        hid_a, hid_b = cap.gather("hidden", layer, pos_a), cap.gather("hidden", layer, pos_b)
        q, k = cap.gather("q", layer, pos_a), cap.gather("k", layer, pos_b)
        out = {"qk": qk_descriptors(q, k, self.hq, self.hkv), "hidden": (hid_a, hid_b)}
        if self.heads is not None and layer in self.heads.layers:
            out["head"] = (_head_embed(self.heads, layer, hid_a), _head_embed(self.heads, layer, hid_b))
        return out


def _batches(prepared, batch_size: int):
    """Consecutive pairs (from an iterable of :class:`_Prepared`) whose inputs have the same
    sequence length, ``batch_size`` at most."""
    batch: list[_Prepared] = []
    for item in prepared:
        if batch and (len(batch) == batch_size or item.inputs["input_ids"].shape != batch[0].inputs["input_ids"].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _stack_inputs(batch: list[_Prepared]) -> dict:
    """One batch from single-row inputs: every tensor concatenated along dim 0 (rows of
    ``input_ids``-like tensors; images / patches / grids of the rows' images in order)."""
    keys = batch[0].inputs.keys()
    return {k: torch.cat([b.inputs[k] for b in batch]) if isinstance(batch[0].inputs[k], torch.Tensor)
            else batch[0].inputs[k] for k in keys}


@dataclass
class _Recorder:
    """Accumulates per (descriptor, layer) match statistics and the matches for the picture."""

    deltas: tuple[int, ...]
    metric: str = DEFAULT_DISTANCE
    stats: dict = field(default_factory=dict)
    matches: dict = field(default_factory=dict)

    def add(self, name: str, layer: int, item: _Prepared, pred: torch.Tensor, conf: torch.Tensor) -> None:
        grid_b = tuple(item.layouts[1].grid_hw)
        st = self.stats.setdefault(name, {}).setdefault(layer, MatchStats(deltas=self.deltas, metric=self.metric))
        st.add(pred, item.ttok, conf, grid_b, item.pair.gap)
        tr = item.pair.tracks
        self.matches.setdefault((name, layer), []).append(PairMatches(
            item.index, tr.query_xy[item.valid].tolist(), tr.xy[1][item.valid].tolist(),
            pred.tolist(), item.ttok.tolist(), grid_b))


def _probe_batch(model, adapter, cap, probe: _PairProbe, batch: list[_Prepared], layers, rec: _Recorder) -> None:
    """One forward of a batch of pairs, then every layer's descriptors matched and recorded."""
    param = next(model.parameters())
    inputs = _stack_inputs(batch)
    model(**_to_device(inputs, param.device, param.dtype))
    pos = adapter.frame_token_positions(inputs)  # [b, 2, n]
    n_a, n_b = batch[0].layouts[0].num_tokens, batch[0].layouts[1].num_tokens
    for layer in layers:
        for name, (da, db) in probe.descriptors(cap, layer, pos[:, 0, :n_a], pos[:, 1, :n_b]).items():
            for r, item in enumerate(batch):
                pred, conf = match(da[r][item.qtok.to(da.device)], db[r], probe.temperature)
                rec.add(name, layer, item, pred.cpu(), conf.cpu())
    cap.clear()


def run_probe(
    model,
    processor,
    scenes,
    *,
    heads=None,
    pairs: PairSet | None = None,
    layers: list[int] | None = None,
    deltas: tuple[int, ...] = (0, 1, 2),
    max_gap: int = MAX_GAP_LIMIT,
    pairs_per_gap: int = 2,
    grid: int = 8,
    temperature: float = DEFAULT_TEMPERATURE,
    out_dir: str | Path | None = None,
    progress: bool = True,
    model_name: str | None = None,
    batch_size: int = 8,
    distance: str = DEFAULT_DISTANCE,
) -> ProbeReport:
    """Probe ``model`` on held-out ``scenes``.

    Args:
        model, processor: a supported VLM (see :func:`gasp_plugin.models.registry.get_adapter`)
            and its processor.
        scenes: the held-out :class:`~gasp_plugin.data.scene.Scene` list ``pairs`` refers to.
        heads: GASP heads (``heads(hidden, layer)``) to add the ``head`` descriptor.
        pairs: pre-selected pairs; by default :func:`select_pairs` with ``max_gap``,
            ``pairs_per_gap`` and ``grid``.
        layers: decoder layer indices to probe (default: all).
        deltas: PCK thresholds in token cells.
        temperature: softmax temperature of the confidence used for rho.
        out_dir: when given, ``probe.json`` and the PNGs are written there.
        progress: show a progress bar over pairs.
        model_name: the name recorded in the report (default: the config's ``_name_or_path``).
        batch_size: pairs per forward. Each pair is its own batch row holding the two frames, so
            batching changes nothing but speed (pairs of different sequence lengths are not mixed).
        distance: cell metric of PCK (``"chebyshev"``: a square of cells; ``"euclidean"``: a disc;
            see :data:`gasp_plugin.probe.metrics.CELL_DISTANCES`).

    Returns:
        :class:`ProbeReport`.
    """
    from tqdm.auto import tqdm

    from gasp_plugin.core.capture import VisualCapture
    from gasp_plugin.models.registry import get_adapter

    if pairs is None:
        pairs = select_pairs(scenes, max_gap=max_gap, pairs_per_gap=pairs_per_gap, grid=grid)
    adapter = get_adapter(model)
    layers = _resolve_layers(layers, len(adapter.decoder_layers(model)))
    param = next(model.parameters())
    hidden_size = int(model.config.get_text_config().hidden_size)
    if heads is not None and getattr(heads, "d_model", hidden_size) != hidden_size:
        raise ValueError(f"heads expect hidden size {heads.d_model}, the model has {hidden_size}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    probe = _PairProbe(adapter, processor, *attention_heads(model.config), heads, temperature)
    if distance not in CELL_DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; known: {sorted(CELL_DISTANCES)}")
    rec = _Recorder(tuple(deltas), distance)
    skipped, token_grids = Counter(), set()
    forwards = 0
    t0 = time.perf_counter()
    bar = tqdm(total=len(pairs.pairs), desc="probe", unit="pair", disable=not progress)

    def prepared():  # lazily, so only one batch of inputs is held at a time
        for i, pair in enumerate(pairs.pairs):
            item = probe.prepare(i, pair, scenes[pair.scene_index])
            if isinstance(item, str):
                skipped[item] += 1
                bar.update(1)
            else:
                yield item

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), VisualCapture(model, adapter, layers, kinds=("hidden", "q", "k"), detach=True) as cap:
            for batch in _batches(prepared(), batch_size):
                _probe_batch(model, adapter, cap, probe, batch, layers, rec)
                forwards += 1
                token_grids.update(tuple(item.layouts[1].grid_hw) for item in batch)
                bar.update(len(batch))
    finally:
        model.train(was_training)
        bar.close()
    if not rec.stats:
        raise ValueError(f"no pair could be probed; left out: {dict(skipped)}")
    report = ProbeReport(
        model=model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        pair_set=pairs, stats=rec.stats, deltas=tuple(deltas), distance=distance, temperature=temperature,
        query_grid=pairs.grid, token_grids=sorted(token_grids), matches=rec.matches, skipped=dict(skipped),
        layouts=dict(probe.layouts),
        meta={"layers_probed": layers, "forwards": forwards, "batch_size": int(batch_size),
              "scene_frames": {s.name: len(s) for s in scenes},
              "seconds": round(time.perf_counter() - t0, 2), "device": str(param.device),
              "dtype": str(param.dtype).replace("torch.", ""),
              "attn_implementation": getattr(model.config, "_attn_implementation", None)},
    )
    if out_dir is not None:
        from gasp_plugin.probe.output import write_outputs

        write_outputs(report, scenes, out_dir)
    return report
