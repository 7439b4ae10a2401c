"""Descriptors of visual tokens for the probe, from what one forward captured at one layer.

Notation: ``n`` visual tokens of a frame, ``hq`` / ``hkv`` query / key-value heads, ``c`` head
dim, ``d`` hidden size.

``qk`` (the paper's probe): anchor tokens are described by the layer's query projection output,
target tokens by its key projection output, both *before* rotary embedding (the ``q_proj`` /
``k_proj`` module outputs), so that position does not enter the match. Attention compares each
query head with its key head; the probe averages that comparison over heads: every head's vector
is L2-normalised, key heads are repeated to match query heads the way grouped-query attention
shares them (key head ``j`` serves query heads ``j * g .. (j + 1) * g - 1``, ``g = hq / hkv``), and
the concatenation is scaled by ``1 / sqrt(hq)``. The cosine of two such descriptors is then exactly
the mean over heads of the per-head cosine similarity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["per_head_normalised", "qk_descriptors"]


def per_head_normalised(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[n, heads * c]`` -> ``[n, heads, c]`` with each head's vector L2-normalised (float32)."""
    if x.ndim != 2 or x.shape[1] % num_heads:
        raise ValueError(f"expected [n, {num_heads} * head_dim], got {tuple(x.shape)}")
    return F.normalize(x.float().reshape(x.shape[0], num_heads, -1), dim=-1)


def qk_descriptors(
    q: torch.Tensor, k: torch.Tensor, num_heads: int, num_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-averaged query/key descriptors.

    Args:
        q: ``[n_a, hq * c]`` query projection outputs of the anchor tokens.
        k: ``[n_b, hkv * c]`` key projection outputs of the target tokens.
        num_heads, num_kv_heads: ``hq`` and ``hkv`` (from the model config).

    Returns:
        ``[n_a, hq * c]`` and ``[n_b, hq * c]`` descriptors whose cosine similarity is the mean over
        query heads of ``cos(q_h, k_{h // g})``.
    """
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    qh = per_head_normalised(q, num_heads)  # [n_a, hq, c]
    kh = per_head_normalised(k, num_kv_heads)  # [n_b, hkv, c]
    if qh.shape[-1] != kh.shape[-1]:
        raise ValueError(f"query head dim {qh.shape[-1]} != key head dim {kh.shape[-1]}")
    kh = kh.repeat_interleave(num_heads // num_kv_heads, dim=1)  # [n_b, hq, c]
    scale = 1.0 / math.sqrt(num_heads)
    return qh.flatten(1) * scale, kh.flatten(1) * scale
