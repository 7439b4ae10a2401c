"""Query/key descriptors and the optional query/key alignment term of GaspLoss."""

import math

import pytest
import torch
import torch.nn.functional as F

from gasp_plugin.core.config import GaspConfig
from gasp_plugin.core.loss import GaspLoss, layer_losses
from gasp_plugin.core.qk import qk_descriptors
from gasp_plugin.core.targets import GaspTargets


def _mean_head_cosine(q, k, hq, hkv):
    """Naive reference: loop over query heads, the key head of each group."""
    c = q.shape[-1] // hq
    g = hq // hkv
    total = 0.0
    for h in range(hq):
        qh = q[h * c : (h + 1) * c]
        kh = k[(h // g) * c : (h // g + 1) * c]
        total += float(F.cosine_similarity(qh, kh, dim=0))
    return total / hq


@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2), (3, 1)])
def test_qk_descriptor_dot_is_mean_head_cosine(hq, hkv):
    torch.manual_seed(0)
    c = 5
    q = torch.randn(2, 3, hq * c)
    k = torch.randn(7, hkv * c)
    a, b = qk_descriptors(q, k, hq, hkv)
    assert a.shape == (2, 3, hq * c) and b.shape == (7, hq * c)
    sims = torch.einsum("xyc,nc->xyn", a, b)
    for i in range(2):
        for j in range(3):
            for n in range(7):
                assert math.isclose(float(sims[i, j, n]), _mean_head_cosine(q[i, j], k[n], hq, hkv), abs_tol=1e-5)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2, 3)) and torch.allclose(b.norm(dim=-1), torch.ones(7))


def test_qk_descriptor_errors():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        qk_descriptors(torch.randn(2, 8), torch.randn(2, 6), 4, 3)
    with pytest.raises(ValueError, match="head dim"):
        qk_descriptors(torch.randn(2, 8), torch.randn(2, 6), 4, 2)


def _targets(b=2, t=2, p=5, n=9):
    g = torch.Generator().manual_seed(1)
    pos = torch.randint(0, n, (b, t, p), generator=g)
    visible = torch.rand(b, t, p, generator=g) > 0.3
    return GaspTargets(
        token_positions=torch.arange((t + 1) * n).reshape(1, t + 1, n).repeat(b, 1, 1),
        anchor_frame=torch.zeros(b, dtype=torch.long),
        anchor_tokens=torch.randint(0, n, (b, p), generator=g),
        target_frames=torch.arange(1, t + 1).repeat(b, 1),
        pos_tokens=pos,
        visible=visible,
        point_depth=torch.rand(b, t, p, generator=g) + 1.0,
        token_depth=torch.rand(b, t, n, generator=g) + 1.0,
    )


def test_qk_term_adds_weighted_infonce_on_descriptors():
    torch.manual_seed(0)
    targets = _targets()
    emb = {0: (torch.randn(2, 5, 8), torch.randn(2, 2, 9, 8)), 1: (torch.randn(2, 5, 8), torch.randn(2, 2, 9, 8))}
    qk = {0: (torch.randn(2, 5, 12), torch.randn(2, 2, 9, 12)), 1: (torch.randn(2, 5, 12), torch.randn(2, 2, 9, 12))}
    cfg = GaspConfig(qk_weight=0.5)
    with_qk = GaspLoss(cfg)(emb, targets, qk=qk)
    without = GaspLoss(cfg)(emb, targets)
    expected_qk = sum(layer_losses(*qk[l], targets, tau=cfg.tau, eps=cfg.depth_eps)[0] for l in qk) / 2
    assert torch.allclose(with_qk.qk, expected_qk)
    assert torch.allclose(with_qk.total, without.total + 0.5 * expected_qk)
    assert without.qk is None and "gasp/qk" in with_qk.log_dict()
