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
``q_proj(input_layernorm(x))`` and ``k_proj(...)`` are computed on that span when the states are
read (``take`` / ``gather``), after the forward, with the projections the layer holds then (a
PEFT LoRA wrapper included). After, not in the hook: where a checkpoint wraps the whole layer
call (transformers 5.17 does; hooks then run inside it), extra operations in the forward that its
recomputation does not repeat make non-re-entrant checkpointing fail ("a different number of
tensors was saved"), as seen on an H200. Under DeepSpeed ZeRO-3 a module's weights are whole only
inside the engine's forward, so there q/k are computed in the layer's output hook instead (a
checkpoint around the whole layer call together with ZeRO-3 and the q/k term is not supported).
Cost: the two projections once more on the visual span, only when the q/k term is on. Under a re-entrant checkpoint around the whole layer call the
captured states have no graph; :class:`gasp_plugin.core.attach.GaspHandle` then refuses to train,
naming the setting.

Capture is *armed* when the LLM's token embedding runs (its input_ids give the span) and
*disarmed* when the LLM's final norm runs. Gradient checkpointing that re-runs decoder layers
during backward does so after the final norm: those calls are counted (``recomputed``) but never
captured again. A layer that runs twice within one armed forward is an error.

Shape notation: ``b`` batch rows, ``L`` sequence length, ``S`` span length, ``d`` hidden size.

    with VisualCapture(model, adapter, layers=[0, 3], kinds=("hidden", "q", "k")) as cap:
        model(**inputs)
    states = cap.take()            # {"hidden": {0: [b, S, d], 3: ...}, "q": ..., "k": ...}
    cap.span                       # (start, end) of the captured positions
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["VisualCapture"]

_KINDS = ("hidden", "q", "k")


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


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
                    self._store_qk()  # ZeRO-3 gathers a module's weights only inside the forward

        return hook

    def _store_qk(self) -> None:
        """q_proj / k_proj outputs ``[b, S, ·]`` of each pending layer's normed input span, computed
        after the forward: inside the forward a checkpoint around the whole layer call would see
        operations its recomputation does not repeat (see module doc)."""
        for layer, x in self._pending.items():
            module = self._decoder[layer][1]
            normed = self.adapter.attention_input_norm(module)(x)
            q, k = self.adapter.attention_projections(module)
            for kind, proj in (("q", q), ("k", k)):
                if kind in self.kinds:
                    out = proj(normed)
                    self.states[kind][layer] = out.detach() if self.detach else out
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

    def take(self) -> dict[str, dict[int, torch.Tensor]]:
        """The states of the last forward (then forgotten). Raises if nothing was captured."""
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


def take_rows(x: torch.Tensor, rel: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Rows ``rel`` (from :func:`span_index`) of a span tensor ``x [b, S, c]`` -> ``[b, *idx, c]``,
    zero at padding. No range check: see :func:`gather_span`."""
    c = x.shape[-1]
    out = torch.gather(x, 1, rel.to(x.device)[..., None].expand(-1, -1, c)).reshape(*pad.shape, c)
    return out.masked_fill(pad.to(x.device)[..., None], 0.0)


def gather_span(x: torch.Tensor, positions: torch.Tensor, start: int) -> torch.Tensor:
    """Rows of a span tensor ``x [b, S, c]`` at absolute sequence ``positions [b, *idx]``.

    Padding positions (-1) give zero rows. Returns ``[b, *idx, c]``. Positions outside the span
    raise (one host sync); callers that know them to be visual tokens use :func:`take_rows`.
    """
    span = x.shape[1]
    rel = positions.to(x.device) - start
    if bool(((rel < 0) | (rel >= span))[positions.to(x.device) >= 0].any()):
        raise ValueError(f"positions fall outside the captured visual span [{start}, {start + span})")
    return take_rows(x, *span_index(positions.to(x.device), start))
