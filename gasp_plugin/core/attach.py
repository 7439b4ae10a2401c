"""Attach GASP to a transformers VLM, compute its loss after a forward, and detach it again.

``attach_gasp`` registers the heads as a submodule, ``model.gasp_heads`` (so DeepSpeed partitions
and all-reduces them with the model), and forward hooks that capture the supervised layers'
visual-token spans (:mod:`gasp_plugin.core.capture`). Attach before ``get_peft_model`` /
``deepspeed.initialize``.

**The heads are trained the same way on every path**: whatever wraps or freezes the model after
attaching (``get_peft_model`` freezes every module it does not adapt, a freezing policy may do
the same), call ``handle.ensure_trainable()`` afterwards. Do not list the heads in PEFT
``modules_to_save``: they are saved on their own (``handle.save_heads`` / the trainers'
``gasp_heads.safetensors``), so the adapter stays loadable with plain PEFT. In training mode
``compute_loss`` refuses to run when the heads are frozen or when no captured state has a gradient
path into the model (e.g. under re-entrant activation checkpointing), naming the fix.

    handle = attach_gasp(model, GaspConfig())
    model = get_peft_model(model, lora_config)   # optional
    handle.ensure_trainable()                    # the heads train whatever froze them
    out = model(**inputs)                        # geometry batch
    gasp = handle.compute_loss(targets)          # GaspLossOutput: total, corr, depth, per layer
    loss = out.loss + gasp.total                 # instruction batch: out.loss + handle.zero_loss()
    handle.save_heads("heads.safetensors")
    detach_gasp(model)                           # plain model again: same state_dict keys, same outputs

Shape notation: ``b`` batch, ``S`` captured span, ``e`` embedding size, as in
:mod:`gasp_plugin.core.targets`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gasp_plugin.core.capture import VisualCapture, span_index, take_rows
from gasp_plugin.constants import HEADS_ATTR
from gasp_plugin.core.config import GaspConfig
from gasp_plugin.core.head import GaspHeads, gathered_params
from gasp_plugin.core.loss import GaspLoss, GaspLossOutput, connected_zero
from gasp_plugin.core.qk import attention_heads, grouped_qk_descriptors
from gasp_plugin.core.targets import GaspTargets

__all__ = ["GaspHandle", "GaspGradientError", "attach_gasp", "detach_gasp", "load_heads", "save_heads",
           "write_heads_file", "HEADS_ATTR"]

logger = logging.getLogger(__name__)

_HANDLE_ATTR = "_gasp_handle"
_FORMAT = "gasp-heads-v1"


class GaspGradientError(RuntimeError):
    """A training-mode GASP loss would not train what it should (frozen heads, no path into the LLM)."""


def _text_hidden_size(config: Any) -> int:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


class GaspHandle:
    """What :func:`attach_gasp` returns: the loss after a forward, zero loss, head I/O, detach."""

    def __init__(self, model: nn.Module, adapter, config: GaspConfig, layers: list[int], capture: VisualCapture):
        self.model, self.adapter, self.config, self.layers = model, adapter, config, layers
        self.capture = capture
        self.loss_fn = GaspLoss(config)
        self._warned: set[str] = set()

    @property
    def heads_module(self) -> nn.Module:
        """``model.gasp_heads`` (a PEFT ``ModulesToSaveWrapper`` when PEFT wrapped it)."""
        return getattr(self.model, HEADS_ATTR)

    @property
    def heads(self) -> GaspHeads:
        """The trainable :class:`GaspHeads` (PEFT's active copy under ``modules_to_save``)."""
        module = self.heads_module
        if isinstance(module, GaspHeads):
            return module
        copies = getattr(module, "modules_to_save", None)
        active = getattr(module, "active_adapter", None)
        if copies is not None and active is not None:
            key = active[0] if isinstance(active, (list, tuple)) else active
            if key in copies:
                return copies[key]
        return module.original_module

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters (the ones an optimizer must update, at the heads' learning rate)."""
        return list(self.heads.parameters())

    def ensure_trainable(self) -> int:
        """Make the heads trainable again after PEFT or a freezing policy froze them (call it after
        ``get_peft_model`` / freezing, before building the optimizer); returns their parameter count."""
        params = self.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        return sum(p.numel() for p in params)

    def _check_gradient_path(self, states: dict[str, dict[int, torch.Tensor]]) -> None:
        """With autograd on (a loss to train with): heads trainable, and each captured kind (hidden,
        q, k) attached to the model's graph in some layer (else that term trains the heads only, or
        nothing). See the module docstring."""
        if not torch.is_grad_enabled():
            return  # evaluation under torch.no_grad()
        frozen = [p for p in self.trainable_parameters() if not p.requires_grad]
        if frozen:
            raise GaspGradientError(
                f"{len(frozen)} GASP head parameters are frozen (get_peft_model or a freezing policy froze "
                "them after attach_gasp): call handle.ensure_trainable() after wrapping or freezing the model "
                "(or compute the loss under torch.no_grad() to evaluate)"
            )
        for kind, per_layer in states.items():
            # a view taken inside a re-entrant checkpoint reports requires_grad (its base became the
            # checkpoint's output) but has no grad_fn: gradients would stop at it
            detached = sorted(layer for layer, x in per_layer.items() if x.grad_fn is None)
            if detached and len(detached) == len(per_layer):
                raise GaspGradientError(
                    f"no captured {kind!r} state (layers {detached}) has a gradient path into the model, so GASP "
                    "would not train it. Causes: re-entrant activation checkpointing around the layer or its "
                    "projections (use gradient_checkpointing_kwargs={'use_reentrant': False}), or no trainable "
                    "parameter at or below the supervised layers (LoRA target_modules / freezing)"
                )
            if detached and kind not in self._warned:
                self._warned.add(kind)
                logger.warning("GASP: %r states of layers %s have no gradient path into the model (no trainable "
                               "parameter at or below them); their terms train the heads only", kind, detached)

    def _embed(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        fn = self.heads_module
        if self.config.head_checkpoint and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(fn, hidden, layer, use_reentrant=False)
        return fn(hidden, layer)

    def compute_loss(self, targets: GaspTargets) -> GaspLossOutput:
        """GASP loss of the last forward's captured states against ``targets``."""
        if not isinstance(targets, GaspTargets):
            raise TypeError(f"targets must be GaspTargets, got {type(targets).__name__}")
        states = self.capture.take()
        start, mask = self.capture.span[0], self.capture.visual_mask
        targets = targets.to(mask.device)
        tp = targets.token_positions
        if tp.shape[0] != mask.shape[0]:
            raise ValueError(f"targets are for {tp.shape[0]} rows but the forward had {mask.shape[0]}")
        ok = torch.gather(mask, 1, tp.clamp(min=0).reshape(tp.shape[0], -1)).reshape(tp.shape)
        _check_without_sync((ok | (tp < 0)).all(),
                            "targets.token_positions point at non-visual tokens of the last forward's input_ids")
        rows = torch.arange(tp.shape[0], device=tp.device)
        anchor_pos = tp[rows, targets.anchor_frame]  # [b, n]
        anchor_pos = torch.where(
            targets.anchor_tokens >= 0, torch.gather(anchor_pos, 1, targets.anchor_tokens.clamp(min=0)), -1
        )  # [b, p]
        frames = targets.target_frames.clamp(min=0)
        target_pos = torch.gather(tp, 1, frames[..., None].expand(-1, -1, tp.shape[-1]))  # [b, t, n]
        target_pos = torch.where((targets.target_frames >= 0)[..., None], target_pos, -1)
        # every position is a visual token (checked above), so inside the captured span
        anchor_rows, target_rows = span_index(anchor_pos, start), span_index(target_pos, start)
        # queries at the anchor points, keys at the target frames: only those rows are projected
        read = {"q": anchor_rows, "k": target_rows}
        for kind in ("q", "k"):
            if kind in states:
                states[kind] = {layer: span.rows(*read[kind]) for layer, span in states[kind].items()}
        self._check_gradient_path(states)
        embeddings = {}
        for layer in self.layers:
            emb = self._embed(states["hidden"][layer], layer)  # [b, S, e]
            embeddings[layer] = (take_rows(emb, *anchor_rows), take_rows(emb, *target_rows))
        qk = None
        if self.config.qk_weight > 0:
            heads, kv_heads = attention_heads(self.adapter.config)
            qk = {  # rows first: descriptors are per-row normalisations
                layer: grouped_qk_descriptors(states["q"][layer], states["k"][layer], heads, kv_heads)
                for layer in self.layers
            }
        return self.loss_fn(embeddings, targets, qk=qk)

    def zero_loss(self) -> torch.Tensor:
        """A zero that touches every head (weight 0), for steps without geometry."""
        self.capture.clear()
        heads = self.heads
        param = next(heads.parameters())
        probe = torch.zeros(1, heads.d_model, device=param.device, dtype=param.dtype)
        layers = self.layers if not heads.config.shared_head else self.layers[:1]
        return connected_zero(*(self.heads_module(probe, layer) for layer in layers))

    def save_heads(self, path: str | Path) -> Path:
        """Write the heads (and their config) to a safetensors file."""
        return save_heads(self.heads, path)

    def load_heads(self, path: str | Path) -> None:
        """Load heads saved by :meth:`save_heads` into the attached heads (shapes must match)."""
        loaded = load_heads(path)
        heads = self.heads
        if loaded.layers != heads.layers or loaded.d_model != heads.d_model:
            raise ValueError(
                f"{path}: heads for layers {loaded.layers} (d={loaded.d_model}) do not fit the attached "
                f"heads for layers {heads.layers} (d={heads.d_model})"
            )
        with gathered_params(heads.parameters(), modify=True):
            heads.load_state_dict(loaded.state_dict())

    def detach(self) -> nn.Module:
        return detach_gasp(self.model)


def _check_without_sync(ok: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` unless the 0-d bool ``ok`` holds. On the CPU it is read at once;
    on an accelerator it is a device-side assertion (``torch._assert_async``), so the step does not
    wait for the device to read one flag: a failure surfaces at the next synchronisation, as a
    RuntimeError carrying ``message``."""
    if ok.device.type == "cpu":
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)


def attach_gasp(model: nn.Module, config: GaspConfig | None = None) -> GaspHandle:
    """Register GASP heads (``model.gasp_heads``) and capture hooks on ``model``; see module doc."""
    from gasp_plugin.models.registry import get_adapter

    config = config or GaspConfig()
    if not isinstance(config, GaspConfig):
        raise TypeError(f"config must be a GaspConfig, got {type(config).__name__}")
    if getattr(model, _HANDLE_ATTR, None) is not None or hasattr(model, HEADS_ATTR):
        raise ValueError(f"GASP is already attached to this {type(model).__name__}; call detach_gasp(model) first")
    adapter = get_adapter(model)
    decoder = adapter.decoder_layers(model)
    layers = config.resolve_layers(len(decoder))
    heads = GaspHeads(_text_hidden_size(adapter.config), layers, config)
    # fp32 parameters on the model's device; they compute in the dtype of the states they read
    heads.to(device=next(model.parameters()).device)
    if config.init == "svd_q":  # on the weights' device, each layer once under ZeRO-3 (see core.head)
        heads.init_from_q({l: _base_weight(adapter.attention_projections(decoder[l][1])[0]) for l in layers})
    model.add_module(HEADS_ATTR, heads)
    kinds = ("hidden", "q", "k") if config.qk_weight > 0 else ("hidden",)
    capture = VisualCapture(model, adapter, layers, kinds=kinds).start()
    handle = GaspHandle(model, adapter, config, layers, capture)
    model.__dict__[_HANDLE_ATTR] = handle
    return handle


def _base_weight(proj: nn.Module) -> nn.Parameter:
    return getattr(proj, "base_layer", proj).weight


def detach_gasp(model_or_handle: Any) -> nn.Module:
    """Remove the hooks and heads; returns the plain model."""
    model = model_or_handle.model if isinstance(model_or_handle, GaspHandle) else model_or_handle
    handle = model.__dict__.pop(_HANDLE_ATTR, None)
    if handle is None:
        raise ValueError(f"GASP is not attached to this {type(model).__name__}")
    handle.capture.stop()
    if HEADS_ATTR in model._modules:
        del model._modules[HEADS_ATTR]
    return model


def save_heads(heads: GaspHeads, path: str | Path) -> Path:
    """Write ``heads`` to ``path`` (safetensors; config, d_model and layers in the metadata)."""
    with gathered_params(heads.parameters()):
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in heads.state_dict().items()}
    return write_heads_file(tensors, heads, path)


def write_heads_file(tensors: dict[str, torch.Tensor], heads: GaspHeads, path: str | Path) -> Path:
    """Write an already gathered heads ``state_dict`` in the format :func:`load_heads` reads,
    described by ``heads`` (its d_model, layers and config). Used by trainers whose state dict
    was consolidated elsewhere (e.g. under ZeRO-3)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": _FORMAT,
        "d_model": str(heads.d_model),
        "layers": json.dumps(heads.layers),
        "config": json.dumps(heads.config.to_dict()),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=meta)
    return path


def load_heads(path: str | Path) -> GaspHeads:
    """:class:`GaspHeads` from a file written by :func:`save_heads` / ``handle.save_heads``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GASP heads file at {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a GASP heads file (metadata format={meta.get('format')!r}, expected {_FORMAT!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    heads = GaspHeads(int(meta["d_model"]), json.loads(meta["layers"]), GaspConfig(**cfg))
    heads.load_state_dict(tensors)
    return heads
