"""Correspondence heads: shape, SVD(q_proj) initialisation, shared head, no-DeepSpeed gather."""

import contextlib
import sys

import pytest
import torch

from gasp_plugin.core.config import GaspConfig
from gasp_plugin.core.head import CorrespondenceHead, GaspHeads, gathered_params, svd_init_


def test_head_shapes_and_architecture():
    head = CorrespondenceHead(48, embed_dim=8, hidden_mult=2)
    assert (head.fc1.in_features, head.fc1.out_features, head.fc2.out_features) == (48, 16, 8)
    x = torch.randn(3, 5, 48)
    ref = head.fc2(torch.nn.functional.gelu(head.fc1(x)))
    torch.testing.assert_close(head(x), ref)


def test_svd_init_rows_are_top_right_singular_directions():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(24, 40, generator=gen) @ torch.diag(torch.linspace(3, 0.1, 40))
    head = CorrespondenceHead(40, embed_dim=4)  # 8 rows < rank 24
    k = svd_init_(head, q)
    assert k == 8
    _, s, vh = torch.linalg.svd(q, full_matrices=False)
    w = head.fc1.weight.detach()
    # every row lies in the span of the top-8 right singular vectors, row i along vh[i]
    residual = w - (w @ vh[:8].T) @ vh[:8]
    assert residual.abs().max() < 1e-5
    cos = torch.nn.functional.cosine_similarity(w, vh[:8], dim=1).abs()
    assert bool((cos > 0.9999).all())
    norms = w.norm(dim=1)
    ratios = norms / norms[0]
    torch.testing.assert_close(ratios, s[:8] / s[0], rtol=1e-4, atol=1e-6)
    assert torch.count_nonzero(head.fc1.bias) == 0


def test_svd_init_keeps_random_rows_beyond_rank():
    q = torch.randn(4, 16)
    head = CorrespondenceHead(16, embed_dim=8)  # 16 rows, rank 4
    before = head.fc1.weight.detach().clone()
    assert svd_init_(head, q) == 4
    assert torch.equal(head.fc1.weight[4:], before[4:])
    with pytest.raises(ValueError, match="does not read d=16"):
        svd_init_(head, torch.randn(4, 10))


def test_gasp_heads_per_layer_and_shared():
    heads = GaspHeads(16, [0, 2], GaspConfig(embed_dim=4))
    assert sorted(heads.heads) == ["0", "2"]
    assert heads.head_for(0) is not heads.head_for(2)
    x = torch.randn(2, 16)
    assert heads(x, 2).shape == (2, 4)
    with pytest.raises(KeyError, match=r"supervised layers: \[0, 2\]"):
        heads(x, 1)
    shared = GaspHeads(16, [0, 1, 2], GaspConfig(embed_dim=4, shared_head=True))
    assert list(shared.heads) == ["shared"] and shared.head_for(0) is shared.head_for(2)
    qs = {l: torch.randn(8, 16) for l in (0, 1, 2)}
    shared.init_from_q(qs)
    expected = CorrespondenceHead(16, 4)
    svd_init_(expected, qs[1])  # a shared head starts from the middle layer's q_proj
    rows = min(8, expected.fc1.weight.shape[0])  # same directions (scale follows each head's init)
    cos = torch.nn.functional.cosine_similarity(shared.head_for(0).fc1.weight[:rows], expected.fc1.weight[:rows])
    torch.testing.assert_close(cos, torch.ones(rows))


def test_seeded_init_is_reproducible():
    a = GaspHeads(16, [0], GaspConfig(embed_dim=4, seed=5))
    b = GaspHeads(16, [0], GaspConfig(embed_dim=4, seed=5))
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_gather_is_noop_without_deepspeed_partitioning():
    params = list(CorrespondenceHead(8, 4).parameters())
    already = "deepspeed" in sys.modules
    ctx = gathered_params(params, modify=True)
    assert isinstance(ctx, contextlib.nullcontext)  # nothing partitioned: no DeepSpeed involved
    with ctx:
        pass
    assert already or "deepspeed" not in sys.modules
