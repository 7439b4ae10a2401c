"""GaspLoss against a naive per-pair loop, analytic cases, and the zero-but-connected rule."""

import math

import pytest
import torch

from gasp_plugin.core.config import GaspConfig
from gasp_plugin.core.loss import GaspLoss, layer_losses
from gasp_plugin.core.targets import GaspTargets


def _random_targets(gen, b=2, f=4, t=3, p=5, n=7):
    """Awkward sizes, padding in every tensor, some invisible pairs and depth holes."""
    positions = torch.arange(b * f * n).reshape(b, f, n).clone()
    positions[1, :, n - 2 :] = -1  # example 1 has frames of n - 2 tokens
    positions[1, f - 1] = -1  # and one frame fewer
    target_frames = torch.tensor([[1, 2, 3], [2, 0, -1]])
    anchor_tokens = torch.randint(0, n - 2, (b, p), generator=gen)
    anchor_tokens[0, 1] = -1
    pos_tokens = torch.randint(0, n - 2, (b, t, p), generator=gen)
    pos_tokens[0, 0, 2] = -1
    visible = torch.rand(b, t, p, generator=gen) > 0.3
    point_depth = torch.rand(b, t, p, generator=gen) * 3 + 0.5
    visible[0, 0, 0] = True
    point_depth[0, 0, 0] = 0.0  # a visible pair with unknown depth: corr only
    token_depth = torch.rand(b, t, n, generator=gen) * 3 + 0.5
    token_depth[0, 2, :3] = 0.0
    token_depth[1, :, n - 2 :] = 0.0
    return GaspTargets(positions, torch.tensor([0, 1]), anchor_tokens, target_frames, pos_tokens, visible, point_depth, token_depth)


def _naive(anchor, target, tg: GaspTargets, tau, eps):
    corr, depth, nc, nd = 0.0, 0.0, 0, 0
    b, t, p = tg.pos_tokens.shape
    for i in range(b):
        for j in range(t):
            frame = int(tg.target_frames[i, j])
            if frame < 0:
                continue
            toks = [k for k in range(tg.token_positions.shape[-1]) if tg.token_positions[i, frame, k] >= 0]
            for q in range(p):
                if not tg.visible[i, j, q] or tg.pos_tokens[i, j, q] < 0 or tg.anchor_tokens[i, q] < 0:
                    continue
                a = anchor[i, q].double() / anchor[i, q].double().norm()
                sims = {k: float(a @ (target[i, j, k].double() / target[i, j, k].double().norm())) / tau for k in toks}
                lse = math.log(sum(math.exp(s) for s in sims.values()))
                corr += lse - sims[int(tg.pos_tokens[i, j, q])]
                nc += 1
                with_depth = [k for k in toks if tg.token_depth[i, j, k] > 0]
                d = float(tg.point_depth[i, j, q])
                if d > 0 and with_depth:
                    z = sum(math.exp(sims[k]) for k in with_depth)
                    d_hat = sum(math.exp(sims[k]) / z * float(tg.token_depth[i, j, k]) for k in with_depth)
                    depth += abs(d - d_hat) / (d + d_hat + eps)
                    nd += 1
    return corr / max(nc, 1), depth / max(nd, 1), nc, nd


def test_layer_losses_match_naive_loop():
    gen = torch.Generator().manual_seed(0)
    tg = _random_targets(gen)
    anchor = torch.randn(2, 5, 6, generator=gen)
    target = torch.randn(2, 3, 7, 6, generator=gen)
    corr, depth, nc, nd = layer_losses(anchor, target, tg, tau=0.13, eps=1e-6)
    ref_corr, ref_depth, ref_nc, ref_nd = _naive(anchor, target, tg, 0.13, 1e-6)
    assert (nc, nd) == (ref_nc, ref_nd) and nc > 5 and nd < nc
    assert corr.dtype == torch.float32
    assert corr.item() == pytest.approx(ref_corr, rel=1e-5)
    assert depth.item() == pytest.approx(ref_depth, rel=1e-5)


def test_total_weights_and_layer_average():
    gen = torch.Generator().manual_seed(1)
    tg = _random_targets(gen)
    emb = {l: (torch.randn(2, 5, 4, generator=gen), torch.randn(2, 3, 7, 4, generator=gen)) for l in (0, 3)}
    cfg = GaspConfig(tau=0.2, corr_weight=0.5, depth_weight=2.0)
    out = GaspLoss(cfg)(emb, tg)
    parts = [_naive(*emb[l], tg, 0.2, cfg.depth_eps) for l in (0, 3)]
    corr = sum(p[0] for p in parts) / 2
    depth = sum(p[1] for p in parts) / 2
    assert out.corr.item() == pytest.approx(corr, rel=1e-5)
    assert out.depth.item() == pytest.approx(depth, rel=1e-5)
    assert out.total.item() == pytest.approx(0.5 * corr + 2.0 * depth, rel=1e-5)
    assert set(out.per_layer) == {0, 3}
    logs = out.log_dict()
    assert logs["gasp/corr/layer_3"] == pytest.approx(parts[1][0], rel=1e-5)


def test_perfect_embeddings_give_near_zero_loss():
    # one-hot token embeddings; each point's anchor embedding equals its true target token's
    n, t, p = 6, 2, 4
    eye = torch.eye(n)
    pos = torch.tensor([[[0, 2, 4, 5], [1, 3, 0, 2]]])
    # every target frame's tokens are the same basis, so a point must match one token in both frames:
    pos[0, 1] = pos[0, 0]
    target = eye.expand(1, t, n, n).clone()
    anchor = eye[pos[0, 0]][None]  # [1, p, n]
    token_depth = torch.linspace(1.0, 3.0, n).expand(1, t, n).clone()
    point_depth = token_depth[0, 0, pos[0, 0]].expand(1, t, p).clone()
    tg = GaspTargets(
        torch.arange(3 * n).reshape(1, 3, n), torch.tensor([0]), pos[0, 0][None].clone(), torch.tensor([[1, 2]]),
        pos, torch.ones(1, t, p, dtype=torch.bool), point_depth, token_depth,
    )
    out = GaspLoss(GaspConfig(tau=0.01))({0: (anchor, target)}, tg)
    assert out.corr.item() < 1e-6
    assert out.depth.item() < 1e-6
    # and a wrong match is punished
    bad = GaspLoss(GaspConfig(tau=0.01))({0: (eye[[1, 3, 5, 0]][None], target)}, tg)
    assert bad.corr.item() > 10


def test_depth_term_exact_two_token_case():
    # two tokens with depth 1 and 3; equal similarity -> d_hat = 2; point depth 1 -> |1-2|/(1+2)
    anchor = torch.tensor([[[1.0, 0.0]]])
    target = torch.tensor([[[[1.0, 1.0], [1.0, -1.0]]]])
    tg = GaspTargets(
        torch.arange(4).reshape(1, 2, 2), torch.tensor([0]), torch.tensor([[0]]), torch.tensor([[1]]),
        torch.tensor([[[0]]]), torch.tensor([[[True]]]), torch.tensor([[[1.0]]]), torch.tensor([[[1.0, 3.0]]]),
    )
    corr, depth, _, _ = layer_losses(anchor, target, tg, tau=0.5, eps=0.0)
    assert depth.item() == pytest.approx(1 / 3, rel=1e-6)
    assert corr.item() == pytest.approx(math.log(2), rel=1e-6)


def test_nothing_visible_gives_connected_zero():
    gen = torch.Generator().manual_seed(2)
    tg = _random_targets(gen)
    tg.visible[:] = False
    anchor = torch.randn(2, 5, 6, requires_grad=True)
    target = torch.randn(2, 3, 7, 6, requires_grad=True)
    out = GaspLoss()({0: (anchor, target)}, tg)
    assert out.total.item() == 0.0 and out.num_pairs == 0
    out.total.backward()
    assert anchor.grad is not None and target.grad is not None
    assert torch.count_nonzero(anchor.grad) == 0


def test_bf16_inputs_computed_in_fp32():
    gen = torch.Generator().manual_seed(3)
    tg = _random_targets(gen)
    anchor = torch.randn(2, 5, 6, generator=gen)
    target = torch.randn(2, 3, 7, 6, generator=gen)
    ref = GaspLoss()({0: (anchor.bfloat16().float(), target.bfloat16().float())}, tg)
    out = GaspLoss()({0: (anchor.bfloat16(), target.bfloat16())}, tg)
    assert out.total.dtype == torch.float32
    assert out.total.item() == pytest.approx(ref.total.item(), rel=1e-6)


def test_shape_errors_are_clear():
    gen = torch.Generator().manual_seed(4)
    tg = _random_targets(gen)
    with pytest.raises(ValueError, match="do not match targets.token_depth"):
        layer_losses(torch.randn(2, 5, 6), torch.randn(2, 3, 8, 6), tg, tau=0.1, eps=0.0)
    with pytest.raises(ValueError, match="GaspTargets.visible must have shape"):
        GaspTargets(tg.token_positions, tg.anchor_frame, tg.anchor_tokens, tg.target_frames, tg.pos_tokens,
                    tg.visible[:, :2], tg.point_depth, tg.token_depth)
    with pytest.raises(ValueError, match="at least one layer"):
        GaspLoss()({}, tg)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tau": 0}, "tau must be a positive number"),
        ({"init": "xavier"}, r"init must be one of \['svd_q', 'random'\], got 'xavier'"),
        ({"layers": []}, "layers must be"),
        ({"layers": [1, 1]}, "duplicates"),
        ({"embed_dim": 0}, "embed_dim must be a positive int"),
        ({"corr_weight": -1}, "corr_weight must be a number >= 0"),
    ],
)
def test_config_errors_name_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaspConfig(**kwargs)


def test_config_resolves_layers():
    assert GaspConfig().resolve_layers(3) == [0, 1, 2]
    assert GaspConfig(layers=range(1, 3)).resolve_layers(4) == [1, 2]
    assert GaspConfig(layers=[-1, 0]).resolve_layers(4) == [0, 3]
    with pytest.raises(ValueError, match=r"out of range .* 4 decoder layers"):
        GaspConfig(layers=[4]).resolve_layers(4)


def test_loss_makes_no_host_sync():
    """No tensor value is read on the host inside the loss (.item(), int(), bool(), .tolist(),
    data-dependent shapes): it runs, forward and backward, on the meta device, which has no values
    to read. On a GPU it so queues behind the forward; the counts are tensors, read when logged."""
    from dataclasses import fields

    gen = torch.Generator().manual_seed(4)
    tg = _random_targets(gen)
    meta = GaspTargets(**{f.name: getattr(tg, f.name).to("meta") for f in fields(GaspTargets)})
    emb = {layer: (torch.randn(2, 5, 6, device="meta", requires_grad=True),
                   torch.randn(2, 3, 7, 6, device="meta", requires_grad=True)) for layer in (0, 3)}
    out = GaspLoss(GaspConfig(qk_weight=1.0))(emb, meta, qk=emb)
    out.total.backward()
    assert out.total.device.type == "meta" and emb[0][0].grad is not None
    assert isinstance(out.num_pairs, torch.Tensor) and out.num_pairs.dim() == 0
    real = GaspLoss()({0: (torch.randn(2, 5, 6), torch.randn(2, 3, 7, 6))}, tg)
    assert int(real.num_pairs) == int(tg.valid_pairs().sum()) and real.log_dict()["gasp/pairs"] == float(real.num_pairs)


@pytest.mark.parametrize("threshold", [0, 10**9], ids=["recomputed", "small logits kept"])
def test_backward_keeps_each_layers_inputs_not_its_logits(monkeypatch, threshold):
    """Per layer the loss saves only its embeddings for backward (the [b, t, p, n] logits and
    softmaxes are recomputed) when the logits have RECOMPUTE_MIN_ELEMENTS elements or more, else
    keeps them; the gradients are those of the plain computation either way."""
    import gasp_plugin.core.loss as loss_module

    monkeypatch.setattr(loss_module, "RECOMPUTE_MIN_ELEMENTS", threshold)
    gen = torch.Generator().manual_seed(5)
    tg = _random_targets(gen)
    emb = {layer: (torch.randn(2, 5, 6, generator=gen, requires_grad=True),
                   torch.randn(2, 3, 7, 6, generator=gen, requires_grad=True)) for layer in (0, 1)}
    cfg = GaspConfig(qk_weight=0.5)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        out = GaspLoss(cfg)(emb, tg, qk=emb)
    assert ((2, 3, 5, 7) in shapes) == (threshold > 0), shapes  # logits-shaped tensors kept or not
    grads = torch.autograd.grad(out.total, [t for pair in emb.values() for t in pair])
    ref = 0.0
    for anchor, target in emb.values():
        corr, depth, _, _ = layer_losses(anchor, target, tg, tau=cfg.tau, eps=cfg.depth_eps)
        qk, _, _, _ = layer_losses(anchor, target, tg, tau=cfg.tau, eps=cfg.depth_eps, with_depth=False,
                                    normalized=True)
        ref = ref + (cfg.corr_weight * corr + cfg.depth_weight * depth + cfg.qk_weight * qk) / 2
    torch.testing.assert_close(out.total, ref)
    for got, want in zip(grads, torch.autograd.grad(ref, [t for pair in emb.values() for t in pair])):
        torch.testing.assert_close(got, want)
