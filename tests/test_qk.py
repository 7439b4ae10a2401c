"""Query/key descriptors and the optional query/key alignment term of GaspLoss."""

import math

import pytest
import torch
import torch.nn.functional as F

from gasp_plugin.core.config import GaspConfig
from gasp_plugin.core.loss import GaspLoss, layer_losses
from gasp_plugin.core.qk import grouped_qk_descriptors, qk_descriptors
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


@pytest.mark.parametrize("hq,hkv", [(4, 4), (6, 2), (3, 1), (28, 4)])
def test_grouped_qk_descriptors_give_the_same_similarities_in_fewer_dimensions(hq, hkv):
    """Summing each group's normalised query heads instead of repeating key heads: the same mean
    head cosine (against the naive loop), keys of norm 1, and the same q/k loss term as the
    repeated-key descriptors of the probe."""
    torch.manual_seed(1)
    c = 5
    q, k = torch.randn(2, 3, hq * c), torch.randn(2, 2, 9, hkv * c)
    a, b = grouped_qk_descriptors(q, k, hq, hkv)
    assert a.shape == (2, 3, hkv * c) and b.shape == (2, 2, 9, hkv * c)
    assert torch.allclose(b.norm(dim=-1), torch.ones(2, 2, 9)) and bool((a.norm(dim=-1) <= 1 + 1e-6).all())
    sims = torch.einsum("bpc,btnc->btpn", a, b)
    for (i, t, j, n) in [(0, 0, 0, 0), (1, 1, 2, 8), (0, 1, 1, 4)]:
        assert math.isclose(float(sims[i, t, j, n]), _mean_head_cosine(q[i, j], k[i, t, n], hq, hkv), abs_tol=1e-5)
    targets = _targets(p=3)
    full = layer_losses(*qk_descriptors(q, k, hq, hkv), targets, tau=0.07, eps=1e-6, with_depth=False)[0]
    grouped = layer_losses(a, b, targets, tau=0.07, eps=1e-6, with_depth=False, normalized=True)[0]
    torch.testing.assert_close(grouped, full, rtol=1e-5, atol=1e-6)


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
    expected_qk = sum(layer_losses(*qk[l], targets, tau=cfg.tau, eps=cfg.depth_eps, with_depth=False,
                                   normalized=True)[0] for l in qk) / 2
    assert torch.allclose(with_qk.qk, expected_qk)
    assert torch.allclose(with_qk.total, without.total + 0.5 * expected_qk)
    assert without.qk is None and "gasp/qk" in with_qk.log_dict()


def test_qk_term_follows_lora_wrappers_added_after_attach():
    """PEFT replaces q_proj/k_proj after GASP is attached: the captured q/k must be the wrapped
    modules' outputs (with the LoRA delta), so the qk term alone reaches the last layer's q/k LoRA."""
    import numpy as np
    from peft import LoraConfig, get_peft_model

    from gasp_plugin.core.attach import attach_gasp
    from gasp_plugin.models.registry import get_adapter
    from gasp_plugin.models.tiny import build_tiny_model

    model, processor = build_tiny_model("qwen2_vl", image_size=112)
    cfg = GaspConfig(embed_dim=8, corr_weight=0.0, depth_weight=0.0, qk_weight=1.0)
    handle = attach_gasp(model, cfg)
    lora = LoraConfig(r=4, target_modules=r".*language_model\.layers\.\d+\.self_attn\.(q|k)_proj")
    peft_model = get_peft_model(model, lora)
    handle.ensure_trainable()
    for n, p in peft_model.named_parameters():  # non-zero LoRA deltas
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    adapter = get_adapter(model)
    rng = np.random.default_rng(0)
    inputs = adapter.build_frame_inputs(processor, [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)])
    pos = adapter.frame_token_positions(inputs)
    n = pos.shape[-1]
    targets = GaspTargets(
        pos, torch.tensor([0]), torch.arange(4)[None], torch.arange(1, 3)[None],
        torch.arange(4).repeat(1, 2, 1), torch.ones(1, 2, 4, dtype=torch.bool),
        torch.ones(1, 2, 4), torch.ones(1, 2, n),
    )
    last = len(adapter.decoder_layers(model)) - 1
    q_wrapped = adapter.attention_projections(adapter.decoder_layers(peft_model)[last][1])[0]
    seen = {}
    def keep(_module, _inputs, output):  # the layer's own call comes first; returns None: output untouched
        seen.setdefault("q", output.detach())

    hook = q_wrapped.register_forward_hook(keep)
    peft_model(**inputs)
    hook.remove()
    start, end = handle.capture.span
    captured = handle.capture.gather("q", last, torch.arange(start, end)[None])  # computed when read
    torch.testing.assert_close(captured.detach(), seen["q"][:, start:end])
    handle.compute_loss(targets).total.backward()
    grads = [p.grad for name, p in peft_model.named_parameters()
             if f"layers.{last}.self_attn.q_proj.lora_B" in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
