"""Query/key descriptors of visual tokens: what a layer's attention itself matches.

The layer's ``q_proj`` output of an anchor token and ``k_proj`` output of a target token (both
pre-RoPE) are split into heads and L2-normalised per head; the descriptors are scaled so that
their dot product is the **mean over query heads of the per-head cosine**. Grouped-query attention
repeats each key head for its ``num_heads // num_kv_heads`` query heads, as attention does.

Used by the probe (the paper's layer-wise diagnostic) and by the optional query/key alignment
term of :class:`gasp_plugin.core.loss.GaspLoss` (``GaspConfig.qk_weight``).

Shape notation: ``*`` leading dims, ``hq`` query heads, ``hkv`` key heads, ``c`` head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["per_head_normalised", "qk_descriptors", "grouped_qk_descriptors", "attention_heads"]


def attention_heads(config) -> tuple[int, int]:
    """``(num_heads, num_kv_heads)`` of the text model, read from its config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    return heads, int(getattr(text, "num_key_value_heads", None) or heads)


def per_head_normalised(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[*, heads * c]`` -> ``[*, heads, c]`` with each head's vector L2-normalised (float32)."""
    if x.ndim < 1 or x.shape[-1] % num_heads:
        raise ValueError(f"expected [..., {num_heads} * head_dim], got {tuple(x.shape)}")
    return F.normalize(x.float().reshape(*x.shape[:-1], num_heads, -1), dim=-1)


def _heads(q: torch.Tensor, k: torch.Tensor, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([*a, hq, c], [*b, hkv, c])``: per-head normalised queries and keys, shapes checked."""
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    qh, kh = per_head_normalised(q, num_heads), per_head_normalised(k, num_kv_heads)
    if qh.shape[-1] != kh.shape[-1]:
        raise ValueError(f"query head dim {qh.shape[-1]} != key head dim {kh.shape[-1]}")
    return qh, kh


def qk_descriptors(
    q: torch.Tensor, k: torch.Tensor, num_heads: int, num_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-averaged query/key descriptors.

    Args:
        q: ``[*a, hq * c]`` query projection outputs of the anchor tokens.
        k: ``[*b, hkv * c]`` key projection outputs of the target tokens.
        num_heads, num_kv_heads: ``hq`` and ``hkv`` (from the model config).

    Returns:
        ``[*a, hq * c]`` and ``[*b, hq * c]`` float32 descriptors whose dot product is the mean
        over query heads of ``cos(q_h, k_{h // g})`` (each descriptor has norm 1).
    """
    qh, kh = _heads(q, k, num_heads, num_kv_heads)
    kh = kh.repeat_interleave(num_heads // num_kv_heads, dim=-2)  # [*b, hq, c]
    scale = 1.0 / math.sqrt(num_heads)
    return qh.flatten(-2) * scale, kh.flatten(-2) * scale


def grouped_qk_descriptors(
    q: torch.Tensor, k: torch.Tensor, num_heads: int, num_kv_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same similarity as :func:`qk_descriptors`, in ``hkv * c`` dimensions instead of ``hq * c``.

    The mean over query heads of ``cos(q_h, k_{h // g})`` equals the dot product of the sum of each
    group's normalised query heads with its normalised key head, so the keys are never repeated:
    at Qwen2.5-VL-7B's 28 query / 4 key heads the target descriptors and the logits' inner
    dimension are 7x smaller (the loss keeps the target descriptors of every layer for backward).

    Returns:
        ``[*a, hkv * c]`` queries and ``[*b, hkv * c]`` keys, float32; each key has norm 1, a query
        has norm <= 1 (1 when the heads of each group agree), so the similarity is their plain dot
        product: do not normalise them again (``layer_losses(..., normalized=True)``).
    """
    qh, kh = _heads(q, k, num_heads, num_kv_heads)
    g = num_heads // num_kv_heads
    grouped = qh.reshape(*qh.shape[:-2], num_kv_heads, g, qh.shape[-1]).sum(-2)  # [*a, hkv, c]
    scale = math.sqrt(num_kv_heads)
    return grouped.flatten(-2) * (scale / num_heads), kh.flatten(-2) / scale
