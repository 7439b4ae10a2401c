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


def _spectrum_matrix(n: int, kind: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "flat":  # a random Gaussian weight: singular values spread over [0, 2], no decay
        return torch.randn(n, n, generator=gen) / n**0.5
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    power = {"1/i": 1.0, "1/sqrt(i)": 0.5}[kind]
    return u @ torch.diag(torch.arange(1, n + 1, dtype=torch.float32) ** -power) @ v.T


@pytest.mark.parametrize("kind, energy, cosine, values", [
    ("1/i", 0.999, 0.999, 0.001),        # measured: energy 0.9998, cosine 1.0000, values 0.0000
    ("1/sqrt(i)", 0.98, 0.999, 0.005),   # measured: 0.984, 0.9998, 0.0013
    ("flat", 0.89, None, 0.06),          # measured: 0.902, (directions not defined), 0.045
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_randomized_svd_error_against_the_full_svd(kind, energy, cosine, values, dtype):
    """The init's randomized SVD at the 7B proportions (k = 512 of 3584, here 128 of 896) against
    the full SVD: share of the top-k energy the rows capture, cosine of the top 16 directions,
    and relative error of the top 16 singular values, for a decaying and a flat spectrum."""
    from gasp_plugin.core.head import top_singular

    w = _spectrum_matrix(896, kind)
    _, s_full, vh_full = torch.linalg.svd(w, full_matrices=False)
    s, vh = top_singular(w.to(dtype), 128)
    assert s.shape == (128,) and vh.shape == (128, 896) and s.dtype == vh.dtype == torch.float32
    torch.testing.assert_close(vh.norm(dim=1), torch.ones(128), atol=1e-4, rtol=0)
    captured = (w @ vh.T).pow(2).sum() / s_full[:128].pow(2).sum()
    assert captured >= energy
    if cosine is not None:
        assert (vh[:16] * vh_full[:16]).sum(1).abs().min() >= cosine
    assert ((s[:16] - s_full[:16]).abs() / s_full[:16]).max() <= values
    s2, vh2 = top_singular(w.to(dtype), 128)
    assert torch.equal(s, s2) and torch.equal(vh, vh2)  # seeded: every rank gets the same rows


def test_small_weights_get_the_exact_svd():
    from gasp_plugin.core.head import top_singular

    w = _spectrum_matrix(96, "flat")
    _, s_full, vh_full = torch.linalg.svd(w, full_matrices=False)
    s, vh = top_singular(w, 24)  # 96 <= 4 x 24: exact
    torch.testing.assert_close(s, s_full[:24])
    torch.testing.assert_close(vh, vh_full[:24])


def test_head_runs_in_the_dtype_it_reads_without_an_fp32_copy():
    """fp32 parameters (the optimizer's master copy), bf16 input: the head computes in bf16 and
    saves no fp32 copy of its input for backward; gradients reach the fp32 parameters."""
    head = CorrespondenceHead(64, embed_dim=8)
    x = torch.randn(2, 50, 64, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = head(x)
    assert out.dtype == torch.bfloat16
    assert not [t for t in saved if t.dtype == torch.float32 and t.numel() >= x.numel()]
    out.float().sum().backward()
    assert head.fc1.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    ref = head.fc2(torch.nn.functional.gelu(head.fc1(x.detach().float())))
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


def test_svd_init_from_a_bf16_weight_reads_its_top_directions():
    w = _spectrum_matrix(896, "1/i")
    head = CorrespondenceHead(896, embed_dim=64)  # 128 rows of 896: the randomized path
    assert svd_init_(head, w.bfloat16()) == 128
    _, _, vh = torch.linalg.svd(w, full_matrices=False)
    cos = torch.nn.functional.cosine_similarity(head.fc1.weight[:16].detach(), vh[:16], dim=1).abs()
    assert bool((cos > 0.999).all()) and head.fc1.weight.dtype == torch.float32


def _shared_init_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(7)
        qs = {layer: torch.randn(48, 32, generator=gen) for layer in (0, 1, 2)}
        heads = GaspHeads(32, [0, 1, 2], GaspConfig(embed_dim=4))
        computed = heads.init_from_q(qs, share=True)
        torch.save({"computed": computed, "state": heads.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_init_from_q_computes_each_layer_once_and_shares_it(tmp_path):
    """Under ZeRO (share=True) layer i's SVD runs on rank i % world only and is broadcast: both
    ranks end with the heads a single process computes."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # a forked child of a process that ran OpenMP can hang
    procs = [ctx.Process(target=_shared_init_worker, args=(r, 2, str(tmp_path / "init"), str(tmp_path)), daemon=True)
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0, 0]
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["computed"] for r in results] == [[0, 2], [1]]
    gen = torch.Generator().manual_seed(7)
    qs = {layer: torch.randn(48, 32, generator=gen) for layer in (0, 1, 2)}
    alone = GaspHeads(32, [0, 1, 2], GaspConfig(embed_dim=4))
    assert alone.init_from_q(qs) == [0, 1, 2]
    for r in results:
        for key, value in alone.state_dict().items():
            assert torch.equal(r["state"][key], value), key
