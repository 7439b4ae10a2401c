"""qk descriptors: their cosine equals the per-head cosine averaged over heads (GQA included)."""

import pytest
import torch
import torch.nn.functional as F

from gasp_plugin.core.qk import qk_descriptors
from gasp_plugin.probe.metrics import cosine_similarity


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (6, 1)])
def test_qk_cosine_is_mean_of_per_head_cosines(hq, hkv):
    c, na, nb = 8, 5, 7
    g = torch.Generator().manual_seed(hq * 10 + hkv)
    q, k = torch.randn(na, hq * c, generator=g), torch.randn(nb, hkv * c, generator=g)
    qd, kd = qk_descriptors(q, k, hq, hkv)
    got = cosine_similarity(qd, kd)
    # reference: an explicit loop, key head of query head h is h // (hq // hkv)
    ref = torch.zeros(na, nb)
    for h in range(hq):
        kv = h // (hq // hkv)
        qh = F.normalize(q[:, h * c:(h + 1) * c], dim=-1)
        kh = F.normalize(k[:, kv * c:(kv + 1) * c], dim=-1)
        ref += qh @ kh.T / hq
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # the descriptors are unit vectors already
    torch.testing.assert_close(qd.norm(dim=-1), torch.ones(na))


def test_qk_descriptors_reject_bad_heads():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        qk_descriptors(torch.zeros(2, 12), torch.zeros(2, 8), 3, 2)
    with pytest.raises(ValueError, match="expected"):
        qk_descriptors(torch.zeros(2, 12), torch.zeros(2, 7), 4, 2)
