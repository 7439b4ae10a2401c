"""Visual-token capture: spans, q/k capture, no double capture under gradient checkpointing."""

import os

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.core.capture import ProjectedSpan, VisualCapture, gather_span, span_index  # noqa: E402
from gasp_plugin.models.registry import get_adapter  # noqa: E402
from gasp_plugin.models.tiny import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def qwen():
    model, processor = build_tiny_model("qwen2_vl", image_size=112, num_layers=3)
    adapter = get_adapter(model)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(2)]
    return model, adapter, adapter.build_frame_inputs(processor, frames)


def test_capture_matches_output_hidden_states(qwen):
    model, adapter, inputs = qwen
    with torch.no_grad(), VisualCapture(model, adapter, [0, 2], kinds=("hidden", "q", "k")) as cap:
        out = model(**inputs, output_hidden_states=True)
        pos = adapter.frame_token_positions(inputs)
        span = cap.span
        hid = cap.gather("hidden", 0, pos)
        q0 = cap.gather("q", 0, pos)
        states = cap.take()
    ids = inputs["input_ids"][0]
    visual = torch.nonzero(ids == model.config.image_token_id).flatten()
    assert span == (int(visual[0]), int(visual[-1]) + 1)
    # hidden_states[i + 1] is the output of decoder layer i (the last one after the final norm)
    torch.testing.assert_close(states["hidden"][0], out.hidden_states[1][:, span[0] : span[1]])
    torch.testing.assert_close(hid, out.hidden_states[1][0, pos[0]][None])
    layer0 = adapter.decoder_layers(model)[0][1]
    q_ref = layer0.self_attn.q_proj(layer0.input_layernorm(out.hidden_states[0]))
    torch.testing.assert_close(q0, q_ref[0, pos[0]][None], rtol=1e-5, atol=1e-5)
    assert states["k"][2].full().shape[-1] == layer0.self_attn.k_proj.out_features
    assert not cap.active


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_no_double_capture_same_gradients(qwen, reentrant):
    model, adapter, inputs = qwen
    pos = adapter.frame_token_positions(inputs)
    grads = {}
    for ckpt in (False, True):
        model.zero_grad(set_to_none=True)
        model.train()
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
            assert adapter.decoder_layers(model)[0][1].gradient_checkpointing
        calls = {i: 0 for i in range(3)}
        layers = adapter.decoder_layers(model)
        counters = [layers[i][1].register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1)) for i in range(3)]
        try:
            with VisualCapture(model, adapter, [0, 1, 2]) as cap:
                model(**inputs)
                states = cap.take()["hidden"]
                loss = sum((cap_gather(states[l], pos, cap.span[0]) ** 2).mean() * (l + 1) for l in range(3))
                loss.backward()
                recomputed = cap.recomputed
        finally:
            for h in counters:
                h.remove()
            model.gradient_checkpointing_disable()
            model.eval()
        assert sorted(states) == [0, 1, 2]
        # transformers 5 checkpoints layer.forward (hooks outside), so hooks fire once; a wrapper
        # that re-runs __call__ in backward would fire them again: those calls must be ignored
        assert all(c in (1, 2) for c in calls.values())
        assert recomputed == sum(c - 1 for c in calls.values())
        grads[ckpt] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[False].keys() == grads[True].keys() and len(grads[False]) > 10
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6, msg=name)


def test_layer_calls_outside_a_forward_are_not_captured(qwen):
    # what a checkpoint wrapper re-running layer __call__ during backward looks like to the hooks
    model, adapter, inputs = qwen
    layer = adapter.decoder_layers(model)[1][1]
    seen = {}
    keep = layer.register_forward_pre_hook(lambda _m, a, k: seen.update(args=a, kwargs=k), with_kwargs=True)
    with torch.no_grad(), VisualCapture(model, adapter, [1]) as cap:
        model(**inputs)
        keep.remove()
        first = cap.states["hidden"][1]
        layer(*seen["args"], **seen["kwargs"])
        assert cap.recomputed == 1 and cap.states["hidden"][1] is first


def cap_gather(x, pos, start):
    return gather_span(x, pos, start)


def test_take_without_forward_and_bad_kinds(qwen):
    model, adapter, _ = qwen
    with pytest.raises(ValueError, match="subset of"):
        VisualCapture(model, adapter, [0], kinds=("values",))
    with pytest.raises(ValueError, match="out of range"):
        VisualCapture(model, adapter, [7])
    with VisualCapture(model, adapter, [0]) as cap:
        with pytest.raises(RuntimeError, match="no visual-token states were captured"):
            cap.take()


def test_text_only_forward_captures_nothing(qwen):
    model, adapter, inputs = qwen
    text_ids = inputs["input_ids"][:, :3]
    with torch.no_grad(), VisualCapture(model, adapter, [0]) as cap:
        model(input_ids=text_ids)
        assert cap.span is None
        with pytest.raises(RuntimeError):
            cap.take()


def test_gather_span_pads_and_checks():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    out = gather_span(x, torch.tensor([[10, 13, -1], [11, 10, 12]]), 10)
    torch.testing.assert_close(out[0, 1], x[0, 3])
    torch.testing.assert_close(out[0, 2], torch.zeros(3))
    torch.testing.assert_close(out[1, 0], x[1, 1])
    with pytest.raises(ValueError, match="outside the captured visual span"):
        gather_span(x, torch.tensor([[9]]).expand(2, 1), 10)



@pytest.mark.parametrize("threshold", [0, 10**9], ids=["checkpointed", "kept"])
@pytest.mark.parametrize("rows", [[3, 0, -1], [5, 1, 2, 0, 4, -1]], ids=["few rows: projected", "most rows: span"])
def test_projected_span_rows_match_the_projected_span(rows, threshold, monkeypatch):
    """q/k read at a few rows are projected from those input rows only (RMSNorm and the projection
    act per row); at most rows the span is projected once: both equal the span's projection, with
    zero rows at padding and gradients reaching the input at the rows read only."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    import gasp_plugin.core.capture as capture_module

    monkeypatch.setattr(capture_module, "RECOMPUTE_MIN_ELEMENTS", threshold)  # norm + projection recomputed or not
    torch.manual_seed(0)
    base = torch.randn(1, 9, 8, requires_grad=True)
    x = base[:, 1:7]  # a span view of a layer input: S = 6, starting at sequence position 10
    norm, proj = Qwen2RMSNorm(8), nn.Linear(8, 5)  # with a bias: padding rows must still be zero
    span = ProjectedSpan(x, norm, proj)
    pos = torch.tensor([[r + 10 if r >= 0 else -1 for r in rows]])
    out = span.rows(*span_index(pos, 10))
    assert (span._full is None) == (2 * len(rows) <= 6)
    ref = proj(norm(x))
    for j, r in enumerate(rows):
        torch.testing.assert_close(out[0, j], ref[0, r] if r >= 0 else torch.zeros(5))
    out.sum().backward()
    touched = sorted(int(i) - 1 for i in torch.nonzero(base.grad.abs().sum(-1)[0]).flatten())
    assert touched == sorted(r for r in rows if r >= 0)
