"""GASP losses: InfoNCE over ground-truth correspondences plus soft-argmax depth consistency.

Shape notation: ``b`` clips, ``t`` target frames, ``p`` anchor points, ``n`` visual tokens per
frame, ``e`` head embedding size.

Negatives are **local**: for each anchor point and target frame, the candidates are the visual
tokens of that target frame in the same example (the same 3D point seen in another frame is a true
match, so other frames are not negatives). Nothing is gathered across ranks, so the loss takes no
rank/world_size and every rank computes the same function of its own batch.

For each supervised layer, with L2-normalised embeddings and ``s_ij = <a_i, z_j> / tau``:

- correspondence: ``-log softmax_j(s_ij)[pos_i]``, averaged over visible (point, target) pairs;
- depth: ``A_ij = softmax_j s_ij`` over the target frame's tokens *that have a depth* (tokens whose
  cell holds no valid depth pixel are left out of the expectation rather than counted as depth 0),
  ``d_hat = sum_j A_ij d_j``, loss ``|d - d_hat| / (d + d_hat + eps)``, averaged over visible pairs
  with a known point depth.

Both are computed in fp32 whatever the embedding dtype, averaged over layers, and weighted
(``corr_weight``, ``depth_weight``). For backward, each layer keeps only its embeddings: its
logits and softmaxes are recomputed from them (non-re-entrant activation checkpointing). A batch with nothing to supervise gives an exact zero that is
still connected to every embedding (so all heads receive a gradient, as ZeRO requires).

No host synchronisation: pair counts stay 0-dim tensors on the batch's device (a mean over no
pairs divides a zero sum by 1 instead of branching on the count), so on a GPU the loss queues
behind the forward without waiting for it; read ``num_pairs`` (``float()`` / ``.item()``) at
logging steps only.

Stand-alone use in a custom training loop (the handle captures and runs the heads for you)::

    from gasp_plugin import GaspConfig, attach_gasp
    handle = attach_gasp(model, GaspConfig())
    targets = batch.pop("gasp_targets")                        # a GeometryCollator batch
    out = model(**batch)                                       # geometry batch
    gasp = handle.compute_loss(targets)                        # GaspLossOutput
    gasp.total.backward()                                      # (+ out.loss when it has labels)

or directly on embeddings you computed yourself::

    loss = GaspLoss(GaspConfig())({layer: (anchor_emb, target_emb)}, targets)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F

from gasp_plugin.constants import RECOMPUTE_MIN_ELEMENTS
from gasp_plugin.core.config import GaspConfig
from gasp_plugin.core.targets import GaspTargets

__all__ = ["GaspLoss", "GaspLossOutput", "PairMasks", "layer_losses", "connected_zero"]

_MASKED = -1e9  # logit of padding tokens (finite: a fully padded frame must not give NaN)


@dataclass
class GaspLossOutput:
    """The weighted total and its parts.

    Attributes:
        total: ``corr_weight * corr + depth_weight * depth`` (scalar, fp32, with grad).
        corr: correspondence term averaged over layers.
        depth: depth term averaged over layers.
        per_layer: ``{layer: {"corr": tensor, "depth": tensor[, "qk": tensor]}}``.
        num_pairs: visible (point, target frame) pairs supervised by the correspondence term
            (a 0-dim integer tensor: reading it is a host sync, so only at logging steps).
        num_depth_pairs: pairs supervised by the depth term (the same).
    """

    total: torch.Tensor
    corr: torch.Tensor
    depth: torch.Tensor
    per_layer: dict = field(default_factory=dict)
    num_pairs: torch.Tensor | int = 0
    num_depth_pairs: torch.Tensor | int = 0
    qk: torch.Tensor | None = None

    def terms(self) -> dict[str, torch.Tensor]:
        """The terms as detached fp32 tensors, flat: ``corr``, ``depth``[, ``qk``] and
        ``{term}/layer_{i}`` for each layer (no host sync; what loggers accumulate)."""
        out = {"corr": self.corr, "depth": self.depth}
        if self.qk is not None:
            out["qk"] = self.qk
        for layer, parts in self.per_layer.items():
            for term, value in parts.items():
                out[f"{term}/layer_{layer}"] = value
        return {k: v.detach().float() for k, v in out.items()}

    def log_dict(self, prefix: str = "gasp") -> dict[str, float]:
        """Flat float values for a logger: total, terms, per-layer terms, pair counts (host syncs:
        call it at logging steps)."""
        out = {f"{prefix}/total": float(self.total.detach()), f"{prefix}/pairs": float(self.num_pairs)}
        out.update({f"{prefix}/{k}": float(v) for k, v in self.terms().items()})
        return out


def connected_zero(*tensors: torch.Tensor) -> torch.Tensor:
    """An fp32 scalar zero that depends on every tensor (each gets a zero gradient): the term a
    step without supervision adds so that every rank runs, and reduces, the same parameters."""
    if not tensors:
        raise ValueError("connected_zero needs at least one tensor")
    return torch.stack([t.float().sum() * 0.0 for t in tensors]).sum()


@dataclass(frozen=True)
class PairMasks:
    """What the loss needs from the targets, computed once per batch (not per layer).

    Attributes:
        token_mask: ``[b, t, n]`` real tokens of each target frame.
        valid: ``[b, t, p]`` pairs the correspondence term uses; ``num_pairs`` of them.
        has_depth: ``[b, t, n]`` tokens with a valid depth (the soft-argmax candidates).
        depth_valid: ``[b, t, p]`` pairs the depth term uses; ``num_depth_pairs`` of them.
        num_pairs, num_depth_pairs: 0-dim integer tensors (no host sync).
    """

    token_mask: torch.Tensor
    valid: torch.Tensor
    has_depth: torch.Tensor
    depth_valid: torch.Tensor
    num_pairs: torch.Tensor
    num_depth_pairs: torch.Tensor

    @classmethod
    def of(cls, targets: GaspTargets) -> "PairMasks":
        valid = targets.valid_pairs()
        has_depth = targets.token_depth > 0
        depth_valid = valid & (targets.point_depth > 0) & has_depth.any(-1)[:, :, None]
        return cls(targets.target_token_mask(), valid, has_depth, depth_valid, valid.sum(), depth_valid.sum())


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``, over ``count`` entries; 0 when there are none (a zero sum
    over 1: no branch on the count, so no host sync)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / count.clamp(min=1)


def layer_losses(
    anchor: torch.Tensor,
    target: torch.Tensor,
    targets: GaspTargets,
    *,
    tau: float,
    eps: float,
    masks: PairMasks | None = None,
    with_depth: bool = True,
    normalized: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Correspondence and depth terms of one layer.

    Args:
        anchor: ``[b, p, e]`` embeddings of the anchor points' tokens.
        target: ``[b, t, n, e]`` embeddings of the target frames' tokens.
        targets: the batch's :class:`GaspTargets`.
        masks: ``PairMasks.of(targets)``, computed here when not given (pass it to share it
            across layers).
        with_depth: compute the depth term (else it is a connected zero).
        normalized: the inputs are already descriptors whose dot product is the similarity (the
            q/k term's :func:`gasp_plugin.core.qk.grouped_qk_descriptors`); else each embedding is
            L2-normalised (cosine similarity).

    Returns:
        ``(corr, depth, num_pairs, num_depth_pairs)``; terms are fp32 scalars, counts 0-dim
        integer tensors.
    """
    b, p, _ = anchor.shape
    if target.shape[:3] != targets.token_depth.shape or target.shape[0] != b:
        raise ValueError(
            f"target embeddings {list(target.shape)} do not match targets.token_depth "
            f"{list(targets.token_depth.shape)} (expected [b, t, n, e])"
        )
    if p != targets.anchor_tokens.shape[1]:
        raise ValueError(f"anchor embeddings have {p} points, targets have {targets.anchor_tokens.shape[1]}")
    m = masks if masks is not None else PairMasks.of(targets)
    a, z = anchor.float(), target.float()
    if not normalized:
        a, z = F.normalize(a, dim=-1), F.normalize(z, dim=-1)
    logits = torch.einsum("bpe,btne->btpn", a, z) / tau
    logits = logits.masked_fill(~m.token_mask[:, :, None, :], _MASKED)
    zero = connected_zero(anchor, target)

    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, targets.pos_tokens.clamp(min=0)[..., None]).squeeze(-1)  # [b, t, p]
    corr = _masked_mean(nll, m.valid, m.num_pairs) + zero

    if with_depth:
        depth_logits = logits.masked_fill(~m.has_depth[:, :, None, :], _MASKED)
        del logits  # the depth term's own copy is all that is left to read
        attn = torch.softmax(depth_logits, dim=-1)  # [b, t, p, n]
        d_hat = torch.einsum("btpn,btn->btp", attn, targets.token_depth.float())
        d = targets.point_depth.float()
        rel = (d - d_hat).abs() / (d + d_hat + eps)
        depth = _masked_mean(rel, m.depth_valid, m.num_depth_pairs) + zero
    else:
        depth = zero
    return corr, depth, m.num_pairs, m.num_depth_pairs


def _recomputed(fn, anchor: torch.Tensor, target: torch.Tensor, is_qk: bool):
    """``fn(anchor, target, is_qk)``; with autograd on, under non-re-entrant activation
    checkpointing: backward keeps the layer's inputs only and recomputes its ``[b, t, p, n]``
    logits and softmaxes (a few MB a layer in fp32 at the 7B operating point, about 1 GB over 28
    layers) from them, for one more evaluation of the loss (under 0.5% of a 7B step). Logits of
    fewer than :data:`gasp_plugin.constants.RECOMPUTE_MIN_ELEMENTS` elements are kept instead."""
    if not (torch.is_grad_enabled() and (anchor.requires_grad or target.requires_grad)):
        return fn(anchor, target, is_qk)
    b, p = anchor.shape[:2]
    if b * p * target.shape[1:3].numel() < RECOMPUTE_MIN_ELEMENTS:  # logits [b, t, p, n]
        return fn(anchor, target, is_qk)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, anchor, target, is_qk, use_reentrant=False, preserve_rng_state=False)


class GaspLoss:
    """InfoNCE + soft-argmax depth over per-layer embeddings; see the module docstring."""

    def __init__(self, config: GaspConfig | None = None):
        self.config = config or GaspConfig()

    def __call__(
        self,
        embeddings: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
        targets: GaspTargets,
        qk: Mapping[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> GaspLossOutput:
        """Total and parts of the GASP loss.

        Args:
            embeddings: ``{layer: (anchor [b, p, e], target [b, t, n, e])}`` head embeddings.
            targets: the batch's :class:`GaspTargets`.
            qk: optional ``{layer: (anchor queries [b, p, c], target keys [b, t, n, c])}``
                descriptors whose dot product is the similarity, used as they are (not
                normalised again; :func:`gasp_plugin.core.qk.grouped_qk_descriptors`) for the query/key
                alignment term, weighted by ``config.qk_weight``; its InfoNCE uses the same
                positives and negatives as the correspondence term.
        """
        if not embeddings:
            raise ValueError("GaspLoss needs embeddings of at least one layer")
        cfg = self.config
        masks = PairMasks.of(targets)

        def terms(anchor, target, is_qk):  # heads: cosine + depth; q/k: descriptors as they are, no depth
            return layer_losses(anchor, target, targets, tau=cfg.tau, eps=cfg.depth_eps, masks=masks,
                                with_depth=not is_qk, normalized=is_qk)[:2]

        per_layer = {}
        for layer, (anchor, target) in embeddings.items():
            corr, depth = _recomputed(terms, anchor, target, False)
            per_layer[layer] = {"corr": corr, "depth": depth}
        corr = torch.stack([v["corr"] for v in per_layer.values()]).mean()
        depth = torch.stack([v["depth"] for v in per_layer.values()]).mean()
        total = cfg.corr_weight * corr + cfg.depth_weight * depth
        qk_term = None
        if qk:
            for layer, (queries, keys) in qk.items():
                per_layer.setdefault(layer, {})["qk"] = _recomputed(terms, queries, keys, True)[0]
            qk_term = torch.stack([per_layer[l]["qk"] for l in qk]).mean()
            total = total + cfg.qk_weight * qk_term
        return GaspLossOutput(total, corr, depth, per_layer, masks.num_pairs, masks.num_depth_pairs, qk_term)
