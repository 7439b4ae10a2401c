"""Capture of visual-token states inside a running VLM, by forward hooks on the decoder layers.

What is kept: for each chosen decoder layer, a *view* ``[b, S, ·]`` of the layer output over the
span ``[start, end)`` of sequence positions that holds visual tokens (the first to the last visual
token of the batch), and optionally the layer's q_proj / k_proj outputs (pre-RoPE) at those
positions. A view costs no memory (the layer output is kept for backward anyway), and text tokens
outside the span are never touched.

**Why q/k are recomputed, not hooked.** Every hook sits on the decoder layer module itself, never
inside it: transformers (5.x) checkpoints a layer's ``forward``, so hooks on the layer run outside
the checkpoint and see tensors with a graph under re-entrant and non-re-entrant checkpointing
alike, while hooks on q_proj / k_proj would run inside it (under re-entrant checkpointing: no
graph, so the q/k term would train nothing). So a pre-hook keeps the layer's *input* span, and
``q_proj(input_layernorm(x))`` and ``k_proj(...)`` are computed from it when the states are read
(a :class:`ProjectedSpan`), after the forward, with the projections the layer holds then (a PEFT
LoRA wrapper included), and only for the rows read: the q/k term reads queries at the anchor
points only (``p`` rows, computed from those rows of the input) and keys at the target frames'
tokens (most of the span: projected over the span, then rows taken). Its cost is thus
``k_proj`` over the span plus ``q_proj`` over ``p`` rows, not both over the span. After the
forward, not in the hook: where a checkpoint wraps the whole layer call (transformers 5.17 does;
hooks then run inside it), extra operations in the forward that its recomputation does not repeat
make non-re-entrant checkpointing fail ("a different number of tensors was saved"), as seen on an
H200. Under DeepSpeed ZeRO-3 a module's weights are whole only inside the engine's forward, so
there q/k are computed over the span in the layer's output hook instead (a checkpoint around the
whole layer call together with ZeRO-3 and the q/k term is not supported). Under a re-entrant
checkpoint around the whole layer call the captured states have no graph;
:class:`gasp_plugin.core.attach.GaspHandle` then refuses to train, naming the setting.

Capture is *armed* when the LLM's token embedding runs (its input_ids give the span) and
*disarmed* when the LLM's final norm runs. Gradient checkpointing that re-runs decoder layers
during backward does so after the final norm: those calls are counted (``recomputed``) but never
captured again. A layer that runs twice within one armed forward is an error.

Shape notation: ``b`` batch rows, ``L`` sequence length, ``S`` span length, ``d`` hidden size.

    with VisualCapture(model, adapter, layers=[0, 3], kinds=("hidden", "q", "k")) as cap:
        model(**inputs)
    states = cap.take()            # {"hidden": {0: [b, S, d], 3: ...}, "q": {0: ProjectedSpan}, "k": ...}
    states["q"][0].full()          # [b, S, c]; .rows(*span_index(positions, start)) for some rows
    cap.span                       # (start, end) of the captured positions
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn

from gasp_plugin.constants import RECOMPUTE_MIN_ELEMENTS

__all__ = ["ProjectedSpan", "VisualCapture", "gather_span", "select_rows", "span_index", "take_rows"]

_KINDS = ("hidden", "q", "k")


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class ProjectedSpan:
    """One layer's ``q_proj`` or ``k_proj`` output over a captured span, computed when read.

    ``x [b, S, d]`` is the layer's input span (``norm`` and ``proj`` given) or the projected span
    itself (both ``None``: computed in the forward, as under ZeRO-3). :meth:`rows` projects only the
    rows it is asked for when they are at most half the span (the rows of the input are taken
    first: norm and projection act per row), else projects the span once and takes rows of the
    result (a copy of most of the input span, kept for the norm's backward, would cost more memory
    than the projection saves).
    """

    def __init__(self, x: torch.Tensor, norm=None, proj=None, detach: bool = False):
        self.x, self.norm, self.proj, self.detach = x, norm, proj, detach
        self._full: torch.Tensor | None = None if proj is not None else x

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """``proj(norm(x))``; with autograd on, under a non-re-entrant checkpoint: backward keeps
        ``x`` (a view of the layer input, kept anyway) and recomputes the norm (whose fp32 copy of
        the span would otherwise live until backward, 88 MB a layer at 6k tokens and d = 3584);
        inputs under :data:`gasp_plugin.constants.RECOMPUTE_MIN_ELEMENTS` elements are not worth it."""
        if self.detach or not torch.is_grad_enabled() or x.numel() < RECOMPUTE_MIN_ELEMENTS:
            with torch.no_grad() if self.detach else contextlib.nullcontext():
                return self._apply(x)
        from torch.utils.checkpoint import checkpoint

        return checkpoint(self._apply, x, use_reentrant=False)

    def full(self) -> torch.Tensor:
        """``[b, S, c]``: the projection of the whole span (computed once)."""
        if self._full is None:
            self._full = self._project(self.x)
        return self._full

    def rows(self, rel: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Rows ``rel`` (from :func:`span_index`) -> ``[b, *idx, c]``, zero at padding."""
        if self._full is None and 2 * rel.shape[1] <= self.x.shape[1]:
            out = self._project(select_rows(self.x, rel))  # [b, K, c]
            return out.reshape(*pad.shape, out.shape[-1]).masked_fill(pad.to(out.device)[..., None], 0.0)
        return take_rows(self.full(), rel, pad)


class VisualCapture:
    """Forward hooks that keep visual-token spans of chosen decoder layers; see module docstring."""

    def __init__(self, model: nn.Module, adapter, layers: Iterable[int], kinds: Iterable[str] = ("hidden",), detach: bool = False):
        self.kinds = tuple(kinds)
        bad = [k for k in self.kinds if k not in _KINDS]
        if bad or not self.kinds:
            raise ValueError(f"capture kinds must be a non-empty subset of {list(_KINDS)}, got {list(self.kinds)}")
        self.model, self.adapter, self.detach = model, adapter, detach
        decoder = adapter.decoder_layers(model)
        self.layers = sorted({int(i) for i in layers})
        out_of_range = [i for i in self.layers if not 0 <= i < len(decoder)]
        if out_of_range:
            raise ValueError(f"layers {out_of_range} out of range for {len(decoder)} decoder layers")
        self._decoder = decoder
        self._visual_ids = adapter.visual_token_ids()
        self._handles: list = []
        self._inputs: dict[int, torch.Tensor] = {}  # layer -> input span, until its output hook runs
        self._pending: dict[int, torch.Tensor] = {}  # layer -> input span whose q/k are not computed yet
        self._seen: set[int] = set()  # layers that ran in the current forward
        self._armed = False
        self.span: tuple[int, int] | None = None
        self.visual_mask: torch.Tensor | None = None
        self.states: dict[str, dict[int, torch.Tensor]] = {k: {} for k in self.kinds}
        self.recomputed = 0

    # -- hooks ---------------------------------------------------------------------------------
    def _arm(self, _module, args, kwargs=None):
        ids = args[0] if args else (kwargs or {}).get("input")
        self.states = {k: {} for k in self.kinds}
        self._inputs.clear()
        self._pending.clear()
        self._seen = set()
        self.span, self.visual_mask, self._armed = None, None, True
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            return
        mask = torch.isin(ids, torch.tensor(self._visual_ids, device=ids.device))
        cols = torch.nonzero(mask.any(0), as_tuple=False).flatten()
        if cols.numel():
            self.span = (int(cols[0]), int(cols[-1]) + 1)
            self.visual_mask = mask

    def _disarm(self, *_):
        self._armed = False

    def _keep_input(self, layer: int):
        def hook(_module, args, kwargs):
            if self._armed and self.span is not None:
                x = args[0] if args else kwargs["hidden_states"]
                self._inputs[layer] = x[:, self.span[0] : self.span[1]]

        return hook

    def _store(self, layer: int):
        def hook(_module, _inputs, output):
            if not self._armed:
                self.recomputed += 1
                return
            if self.span is None:
                return
            if layer in self._seen:
                raise RuntimeError(f"decoder layer {layer} ran twice in one forward; cannot tell which output to use")
            self._seen.add(layer)
            if "hidden" in self.kinds:
                out = _first(output)[:, self.span[0] : self.span[1]]
                self.states["hidden"][layer] = out.detach() if self.detach else out
            if "q" in self.kinds or "k" in self.kinds:
                self._pending[layer] = self._inputs.pop(layer)  # q/k computed when read (module doc)
                if _partitioned(self._decoder[layer][1]):
                    self._store_qk_now()  # ZeRO-3 gathers a module's weights only inside the forward

        return hook

    def _projected(self, layer: int, x: torch.Tensor) -> dict[str, ProjectedSpan]:
        module = self._decoder[layer][1]
        norm = self.adapter.attention_input_norm(module)
        projections = dict(zip(("q", "k"), self.adapter.attention_projections(module)))
        return {kind: ProjectedSpan(x, norm, projections[kind], self.detach) for kind in ("q", "k") if kind in self.kinds}

    def _store_qk(self) -> None:
        """q_proj / k_proj of each pending layer's input span, as :class:`ProjectedSpan` (computed
        when read, after the forward: inside the forward a checkpoint around the whole layer call
        would see operations its recomputation does not repeat; see module doc)."""
        for layer, x in self._pending.items():
            for kind, span in self._projected(layer, x).items():
                self.states[kind][layer] = span
        self._pending.clear()

    def _store_qk_now(self) -> None:
        """Under ZeRO-3 (weights whole only inside the forward): project the span in the hook, with
        no recompute-in-backward checkpoint (the weights would be partitioned again by then)."""
        for layer, x in self._pending.items():
            for kind, span in self._projected(layer, x).items():
                with torch.no_grad() if self.detach else contextlib.nullcontext():
                    self.states[kind][layer] = ProjectedSpan(span._apply(x))
        self._pending.clear()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "VisualCapture":
        if self._handles:
            return self
        embed, norm = self.adapter.forward_bounds(self.model)
        self._handles.append(embed.register_forward_pre_hook(self._arm))
        self._handles.append(norm.register_forward_hook(self._disarm))
        for layer in self.layers:
            module = self._decoder[layer][1]
            if "q" in self.kinds or "k" in self.kinds:
                self._handles.append(module.register_forward_pre_hook(self._keep_input(layer), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._store(layer)))
        return self

    def stop(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._inputs.clear()
        self._pending.clear()
        self._armed = False

    def __enter__(self) -> "VisualCapture":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def take(self) -> dict[str, dict[int, torch.Tensor | ProjectedSpan]]:
        """The states of the last forward (then forgotten): tensors ``[b, S, d]`` for ``hidden``,
        :class:`ProjectedSpan` for ``q`` / ``k``. Raises if nothing was captured."""
        self._store_qk()
        if self.span is None or not any(self.states.values()):
            raise RuntimeError(
                "no visual-token states were captured: run the model forward on inputs with input_ids "
                "holding visual tokens (inputs_embeds alone cannot be located) before computing the GASP loss"
            )
        missing = [l for l in self.layers if l not in self.states[self.kinds[0]]]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the last forward")
        states, self.states = self.states, {k: {} for k in self.kinds}
        return states

    def clear(self) -> None:
        self.states = {k: {} for k in self.kinds}
        self._pending.clear()

    def gather(self, kind: str, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """``[b, *idx, ·]`` states at sequence ``positions [b, *idx]`` (-1 -> zeros), without taking."""
        self._store_qk()
        x = self.states[kind][layer]
        if isinstance(x, ProjectedSpan):
            check_in_span(positions, self.span[0], x.x.shape[1])
            return x.rows(*span_index(positions.to(x.x.device), self.span[0]))
        return gather_span(x, positions, self.span[0])


def _partitioned(module: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions ``module``'s parameters (they are whole only while the
    engine's forward runs the module)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def span_index(positions: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rel [b, K], pad [b, *idx])``: absolute sequence ``positions [b, *idx]`` as rows of a span
    starting at ``start`` (flattened per batch row, padding -1 clamped to row 0), and the padding."""
    pad = positions < 0
    return (positions - start).clamp(min=0).reshape(positions.shape[0], -1), pad


def select_rows(x: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """``[b, K, c]``: rows ``rel [b, K]`` of ``x [b, S, c]``, by ``index_select`` per batch row (its
    backward keeps only the index, not ``x``; a row of a span view is contiguous, so nothing of
    the span is copied)."""
    rel = rel.to(x.device)
    return torch.stack([x[i].index_select(0, rel[i]) for i in range(x.shape[0])])


def take_rows(x: torch.Tensor, rel: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Rows ``rel`` (from :func:`span_index`) of a span tensor ``x [b, S, c]`` -> ``[b, *idx, c]``,
    zero at padding. No range check: see :func:`gather_span`."""
    out = select_rows(x, rel).reshape(*pad.shape, x.shape[-1])
    return out.masked_fill(pad.to(x.device)[..., None], 0.0)


def check_in_span(positions: torch.Tensor, start: int, span: int) -> None:
    """Raise unless every non-padding position lies in ``[start, start + span)`` (one host sync)."""
    rel = positions - start
    if bool(((rel < 0) | (rel >= span))[positions >= 0].any()):
        raise ValueError(f"positions fall outside the captured visual span [{start}, {start + span})")


def gather_span(x: torch.Tensor, positions: torch.Tensor, start: int) -> torch.Tensor:
    """Rows of a span tensor ``x [b, S, c]`` at absolute sequence ``positions [b, *idx]``.

    Padding positions (-1) give zero rows. Returns ``[b, *idx, c]``. Positions outside the span
    raise (one host sync); callers that know them to be visual tokens use :func:`take_rows`.
    """
    positions = positions.to(x.device)
    check_in_span(positions, start, x.shape[1])
    return take_rows(x, *span_index(positions, start))
