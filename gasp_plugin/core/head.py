"""Correspondence heads: a 2-layer MLP ``d -> hidden_mult * e -> e`` (GELU) per supervised layer.

``init="svd_q"`` sets the first layer's rows to the top right-singular vectors of the same
decoder layer's ``q_proj`` weight (scaled by their relative singular values, at the norm of the
default initialisation), so at step 0 the head reads the directions that layer's attention queries
read. Rows beyond the weight's rank keep their random initialisation. Under DeepSpeed ZeRO-3 the
q_proj weight (and the head's own parameters, if partitioned) are gathered first; without
DeepSpeed the gather is a no-op and deepspeed is never imported.

Shape notation: ``d`` LLM hidden size, ``e`` embedding size, ``...`` any leading dims.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable

import torch
from torch import nn

from gasp_plugin.core.config import GaspConfig

logger = logging.getLogger(__name__)

__all__ = ["CorrespondenceHead", "GaspHeads", "gathered_params", "svd_init_"]


def gathered_params(params: Iterable[nn.Parameter], modify: bool = False):
    """Context in which ZeRO-3 partitioned ``params`` are whole (written back when ``modify``).

    A no-op (and no deepspeed import) when no parameter is partitioned.
    """
    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)


class CorrespondenceHead(nn.Module):
    """``[..., d] -> [..., e]``: Linear(d, h) -> GELU -> Linear(h, e), h = hidden_mult * e."""

    def __init__(self, d_model: int, embed_dim: int = 256, hidden_mult: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden_mult * embed_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_mult * embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.to(self.fc1.weight.dtype))))


@torch.no_grad()
def svd_init_(head: CorrespondenceHead, q_weight: torch.Tensor) -> int:
    """Set ``head.fc1`` rows from the SVD of ``q_weight [d_q, d]``; returns the rows set."""
    w = head.fc1.weight
    if q_weight.shape[1] != w.shape[1]:
        raise ValueError(f"q_proj weight {list(q_weight.shape)} does not read d={w.shape[1]} features")
    _, s, vh = torch.linalg.svd(q_weight.detach().float(), full_matrices=False)
    k = min(w.shape[0], int((s > s[0] * 1e-6).sum()))
    rows = vh[:k] * (s[:k] / s[:k].mean())[:, None]
    rows = rows * (w.norm(dim=1).mean() / rows.norm(dim=1).mean())
    w[:k] = rows.to(w.dtype)
    head.fc1.bias.zero_()
    return k


class GaspHeads(nn.Module):
    """The heads of all supervised layers (or one shared head), called as ``heads(x, layer)``.

    Registered on the model as ``model.gasp_heads`` by :func:`gasp_plugin.core.attach.attach_gasp`.
    """

    def __init__(self, d_model: int, layers: list[int], config: GaspConfig | None = None):
        super().__init__()
        self.config = config or GaspConfig()
        self.d_model = int(d_model)
        self.layers = [int(i) for i in layers]
        keys = ["shared"] if self.config.shared_head else [str(i) for i in self.layers]
        gen = torch.random.fork_rng(devices=[])
        with gen:
            torch.manual_seed(self.config.seed)
            self.heads = nn.ModuleDict(
                {k: CorrespondenceHead(self.d_model, self.config.embed_dim, self.config.hidden_mult) for k in keys}
            )

    def head_for(self, layer: int) -> CorrespondenceHead:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} has no GASP head; supervised layers: {self.layers}")
        return self.heads["shared" if self.config.shared_head else str(layer)]

    def forward(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """``[..., d] -> [..., e]`` with the head of ``layer``."""
        return self.head_for(layer)(x)

    def init_from_q(self, q_weights: dict[int, nn.Parameter]) -> None:
        """SVD init from each layer's q_proj weight (the middle layer's for a shared head)."""
        if self.config.shared_head:
            middle = self.layers[len(self.layers) // 2]
            q_weights = {middle: q_weights[middle]}
        partitioned = sum(hasattr(q, "ds_id") for q in q_weights.values())
        if partitioned:
            logger.info("GASP heads: SVD init from %d ZeRO-3 partitioned q_proj weights, gathered", partitioned)
        for layer, q in q_weights.items():
            head = self.head_for(layer)
            with gathered_params([q]), gathered_params(head.parameters(), modify=True):
                svd_init_(head, q)
