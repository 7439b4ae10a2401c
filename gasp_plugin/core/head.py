"""Correspondence heads: a 2-layer MLP ``d -> hidden_mult * e -> e`` (GELU) per supervised layer.

``init="svd_q"`` sets the first layer's rows to the top right-singular vectors of the same
decoder layer's ``q_proj`` weight (scaled by their relative singular values, at the norm of the
default initialisation), so at step 0 the head reads the directions that layer's attention queries
read. Rows beyond the weight's rank keep their random initialisation.

Only the top ``hidden_mult * e`` directions are needed (512 of 3584 at 7B), so a large weight gets
a randomized SVD (:func:`top_singular`: a seeded subspace iteration, run on the weight's device,
in fp32): about 4 products of the weight with a 3584 x 520 block instead of a full SVD (7.5 s a
layer on 2 CPU cores). Its error against the full SVD is stated in :func:`top_singular` and
checked in tests/test_head.py. Small weights (the tiny models) get the exact SVD.

Under DeepSpeed ZeRO-3 the q_proj weight (and the head's own parameters, if partitioned) are
gathered first, layer by layer on every rank; each layer's SVD is then computed by one rank
(layer ``i`` by rank ``i % world``) and broadcast to the others, instead of on every rank.
Without DeepSpeed the gather is a no-op and deepspeed is never imported.

The heads compute in the dtype of what they read (the model's: no fp32 copy of a bf16 visual span
is made and kept for backward); their parameters stay in the dtype they were created in (fp32,
the optimizer's master copy) and are cast per call. The loss upcasts the embeddings to fp32.

Shape notation: ``d`` LLM hidden size, ``e`` embedding size, ``k`` directions, ``...`` any leading dims.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterable

import torch
from torch import nn

from gasp_plugin.core.config import GaspConfig

logger = logging.getLogger(__name__)

__all__ = ["CorrespondenceHead", "GaspHeads", "gathered_params", "svd_init_", "top_singular"]

#: a weight whose smaller side is at most this many times the directions wanted gets the exact SVD
EXACT_SVD_FACTOR = 4


def gathered_params(params: Iterable[nn.Parameter], modify: bool = False, modifier_rank: int = 0):
    """Context in which ZeRO-3 partitioned ``params`` are whole (when ``modify``, the values of rank
    ``modifier_rank`` are written back and partitioned to every rank).

    A no-op (and no deepspeed import) when no parameter is partitioned.
    """
    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank if modify else None)


class CorrespondenceHead(nn.Module):
    """``[..., d] -> [..., e]``: Linear(d, h) -> GELU -> Linear(h, e), h = hidden_mult * e."""

    def __init__(self, d_model: int, embed_dim: int = 256, hidden_mult: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden_mult * embed_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_mult * embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In ``x``'s floating dtype (the parameters are cast, not the input; see the module doc).

        The layers are called as modules, so DeepSpeed ZeRO-3 gathers their partitioned weights
        (it gathers a module's own parameters when that module runs); a half-precision input runs
        them under autocast, which casts the fp32 weights instead of keeping an fp32 copy of ``x``."""
        dtype = self.fc1.weight.dtype
        if x.is_floating_point() and x.dtype in (torch.bfloat16, torch.float16) and x.dtype != dtype:
            with torch.autocast(x.device.type, dtype=x.dtype):
                return self.fc2(self.act(self.fc1(x)))
        return self.fc2(self.act(self.fc1(x.to(dtype))))


def _orthonormal(y: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """Orthonormal basis ``[m, q]`` of the columns of ``y [m, q]`` (fp32): Cholesky QR (Gram
    matrix in float64; a Householder QR of a tall block is several times slower on a CPU), twice
    for orthogonality to fp32 precision; Householder QR where the block is too ill-conditioned."""
    for _ in range(passes):
        y64 = y.double()
        chol, info = torch.linalg.cholesky_ex(y64.T @ y64)
        if int(info):
            return torch.linalg.qr(y).Q
        y = torch.linalg.solve_triangular(chol.float(), y.T, upper=False).T
    return y


def _products_dtype(w: torch.Tensor) -> torch.dtype:
    """bf16 products for a bf16 weight where they are fast (CUDA, or a CPU with bf16 matrix
    instructions, as oneDNN reports); fp32 otherwise."""
    if w.dtype == torch.bfloat16 and (w.is_cuda or (w.device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())):
        return torch.bfloat16
    return torch.float32


@torch.no_grad()
def top_singular(w: torch.Tensor, k: int, *, oversample: int = 8, niter: int = 1,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s [k'], vh [k', n])``: the top ``k' = min(k, m, n)`` singular values and right singular
    vectors of ``w [m, n]``, fp32, on ``w``'s device.

    A weight whose smaller side is at most :data:`EXACT_SVD_FACTOR` x ``k`` gets the exact SVD;
    a larger one a randomized SVD (Halko, Martinsson, Tropp 2011): a seeded Gaussian block of
    ``k + oversample`` columns, ``niter`` power iterations, then the exact SVD of the ``(k +
    oversample) x n`` projection (through its small Gram matrix, in float64). The four products
    with ``w`` run in bf16 when ``w`` is bf16 and the device has fast bf16 products, else fp32.

    Error against the full SVD at the 7B proportions (k = 512 of 3584; measured at 128 of 896,
    tests/test_head.py; the same in bf16): on a decaying spectrum (s_i ~ 1/i) the rows capture
    99.98% of the top-k energy, the top 16 directions match to cosine > 0.9999 and their singular
    values to 0.03%; at s_i ~ 1/sqrt(i): 98.4%, 0.9998 and 0.13%; on a flat spectrum (a random
    Gaussian weight, the worst case, where single directions are not even defined) 90% of the
    energy, leading singular values within 4.5%.
    """
    m, n = w.shape
    k = min(k, m, n)
    q = k + oversample
    if min(m, n) <= EXACT_SVD_FACTOR * k or q >= min(m, n):
        _, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
        return s[:k], vh[:k]
    dtype = _products_dtype(w)
    a = w.detach().to(dtype)
    gen = torch.Generator(device=a.device).manual_seed(seed)
    sketch = torch.randn(n, q, generator=gen, device=a.device, dtype=dtype)
    basis = _orthonormal((a @ sketch).float(), passes=1)  # [m, q]: any well-conditioned basis of the range
    for i in range(niter):  # (a a^T) basis in one go: its Gram stays well inside float64 for q << m
        basis = _orthonormal((a @ (a.T @ basis.to(dtype))).float(), passes=2 if i == niter - 1 else 1)
    b = (basis.to(dtype).T @ a).float()  # [q, n]
    # SVD of the short, wide b through its q x q Gram matrix (LAPACK's SVD of b itself takes
    # seconds on a CPU): b b^T = u diag(s^2) u^T, vh = diag(1/s) u^T b
    evals, u = torch.linalg.eigh((b @ b.T).double())
    order = torch.argsort(evals, descending=True)[:k]
    s = evals[order].clamp(min=0).sqrt()
    vh = (u[:, order].T.float() @ b) / s.float().clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    return s.float(), vh


@torch.no_grad()
def svd_init_(head: CorrespondenceHead, q_weight: torch.Tensor) -> int:
    """Set ``head.fc1`` rows from the top singular directions of ``q_weight [d_q, d]``
    (:func:`top_singular`, on the weight's device); returns the rows set."""
    w = head.fc1.weight
    if q_weight.shape[1] != w.shape[1]:
        raise ValueError(f"q_proj weight {list(q_weight.shape)} does not read d={w.shape[1]} features")
    s, vh = top_singular(q_weight, w.shape[0])
    k = min(w.shape[0], int((s > s[0] * 1e-6).sum()))
    rows = vh[:k] * (s[:k] / s[:k].mean())[:, None]
    rows = rows.to(w.device) * (w.norm(dim=1).mean() / rows.norm(dim=1).mean().to(w.device))
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

    def init_from_q(self, q_weights: dict[int, nn.Parameter], share: bool | None = None) -> list[int]:
        """SVD init from each layer's q_proj weight (the middle layer's for a shared head);
        returns the layers whose SVD this process computed.

        ``share``: compute each layer's SVD on one rank (layer ``i`` on rank ``i % world``) and
        broadcast the head's first layer from it. ``None`` shares exactly when the q_proj weights
        are ZeRO-3 partitioned in a process group of more than one rank (their gather is a
        collective, so every rank is here, in the same order).
        """
        if self.config.shared_head:
            middle = self.layers[len(self.layers) // 2]
            q_weights = {middle: q_weights[middle]}
        partitioned = sum(hasattr(q, "ds_id") for q in q_weights.values())
        if partitioned:
            logger.info("GASP heads: SVD init from %d ZeRO-3 partitioned q_proj weights, gathered", partitioned)
        rank, world = _rank_world()
        if share is None:
            share = bool(partitioned) and world > 1
        computed = []
        for i, (layer, q) in enumerate(q_weights.items()):
            head = self.head_for(layer)
            owner = i % world if share else rank
            with gathered_params([q]), gathered_params(head.parameters(), modify=True, modifier_rank=owner):
                if owner == rank:
                    svd_init_(head, q)
                    computed.append(layer)
                if share and not any(hasattr(p, "ds_id") for p in head.parameters()):
                    _broadcast_(head.fc1, owner, q.device)
        return computed


def _rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def _broadcast_(linear: nn.Linear, src: int, device: torch.device) -> None:
    """Broadcast ``linear``'s weight and bias from rank ``src``, through ``device`` (a CUDA device
    under NCCL: where the gathered q_proj weight is)."""
    import torch.distributed as dist

    for p in (linear.weight, linear.bias):
        buf = p.detach().to(device).contiguous()
        dist.broadcast(buf, src=src)
        p.copy_(buf.to(p.device))
