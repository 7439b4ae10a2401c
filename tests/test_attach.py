"""attach_gasp / detach_gasp on tiny VLMs: gradients under PEFT, detach, head I/O, errors."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.core.attach import attach_gasp, detach_gasp, load_heads  # noqa: E402
from gasp_plugin.core.config import GaspConfig  # noqa: E402
from gasp_plugin.core.targets import GaspTargets  # noqa: E402
from gasp_plugin.models.registry import get_adapter  # noqa: E402
from gasp_plugin.models.tiny import TINY_MODEL_TYPES, build_tiny_model, save_tiny_model  # noqa: E402

CFG = GaspConfig(embed_dim=16)


def _inputs(model, processor, frames=3, seed=0):
    rng = np.random.default_rng(seed)
    imgs = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(frames)]
    adapter = get_adapter(model)
    inputs = adapter.build_frame_inputs(processor, imgs)
    pos = adapter.frame_token_positions(inputs)
    n = pos.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    p, t = 6, frames - 1
    targets = GaspTargets(
        pos, torch.tensor([0]), torch.randint(0, n, (1, p), generator=gen), torch.arange(1, frames)[None],
        torch.randint(0, n, (1, t, p), generator=gen), torch.ones(1, t, p, dtype=torch.bool),
        torch.rand(1, t, p, generator=gen) + 1, torch.rand(1, t, n, generator=gen) + 1,
    )
    return inputs, targets


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_gradients_reach_lora_and_heads_only(model_type, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from gasp_plugin.models.processing import load_processor

    path = save_tiny_model(model_type, tmp_path / "ckpt", image_size=112)  # the real loading path
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = load_processor(path)
    handle = attach_gasp(model, CFG)
    lora = LoraConfig(
        r=4, target_modules=r".*language_model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj", modules_to_save=["gasp_heads"]
    )
    peft_model = get_peft_model(model, lora)
    inputs, targets = _inputs(model, processor)
    out = peft_model(**inputs, labels=inputs["input_ids"])
    gasp = handle.compute_loss(targets)
    assert gasp.num_pairs == targets.num_visible > 0
    (out.loss + gasp.total).backward()
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert any("lora_A" in n for n in trainable) and any("gasp_heads" in n for n in trainable)
    assert not any("visual" in n or "vision_tower" in n for n in trainable)
    head_grads = [p.grad for n, p in peft_model.named_parameters() if "gasp_heads" in n and p.requires_grad]
    assert all(g.abs().sum() > 0 for g in head_grads)
    # GASP alone also reaches LoRA of every supervised layer
    peft_model.zero_grad(set_to_none=True)
    peft_model(**inputs)
    handle.compute_loss(targets).total.backward()
    lora_b = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n and "q_proj" in n]
    assert lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)
    peft_model.save_pretrained(tmp_path / "adapter")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert any("gasp_heads" in k for k in f.keys())


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_detach_restores_plain_model(model_type):
    model, processor = build_tiny_model(model_type, image_size=112)
    inputs, _ = _inputs(model, processor)
    keys = list(model.state_dict())
    with torch.no_grad():
        ref = model(**inputs).logits
    handle = attach_gasp(model, CFG)
    assert any(k.startswith("gasp_heads.") for k in model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, ref, rtol=0, atol=0)
    detach_gasp(model)
    assert list(model.state_dict()) == keys
    assert not hasattr(model, "gasp_heads") and not handle.capture.active
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not attached"):
        detach_gasp(model)
    attach_gasp(model, CFG).detach()  # attach again after detach works


def test_zero_loss_touches_every_head():
    model, _ = build_tiny_model("qwen2_vl", image_size=112, num_layers=3)
    handle = attach_gasp(model, CFG)
    z = handle.zero_loss()
    assert z.item() == 0.0
    z.backward()
    for name, p in model.gasp_heads.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0, name


def test_head_checkpoint_gives_same_loss_and_gradients():
    model, processor = build_tiny_model("qwen2_vl", image_size=112)
    inputs, targets = _inputs(model, processor)
    results = []
    for ckpt in (False, True):
        handle = attach_gasp(model, GaspConfig(embed_dim=16, head_checkpoint=ckpt))
        model(**inputs)
        loss = handle.compute_loss(targets).total
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.gasp_heads.named_parameters()}))
        model.zero_grad(set_to_none=True)
        detach_gasp(model)
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=name)


def test_heads_save_and_load(tmp_path):
    model, processor = build_tiny_model("llava", image_size=112)
    handle = attach_gasp(model, CFG)
    path = handle.save_heads(tmp_path / "heads.safetensors")
    loaded = load_heads(path)
    assert loaded.layers == handle.heads.layers and loaded.config == CFG
    for (k, v), (_, w) in zip(handle.heads.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(v, w), k
    with torch.no_grad():
        for p in handle.heads.parameters():
            p.zero_()
    handle.load_heads(path)
    assert torch.equal(handle.heads.state_dict()["heads.0.fc2.weight"], loaded.state_dict()["heads.0.fc2.weight"])
    other, _ = build_tiny_model("llava", image_size=112, num_layers=3)
    with pytest.raises(ValueError, match="do not fit the attached heads"):
        attach_gasp(other, CFG).load_heads(path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(Exception):
        load_heads(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="no GASP heads file"):
        load_heads(tmp_path / "missing.safetensors")


def test_bad_use_gives_clear_errors():
    from transformers import GPT2Config, GPT2LMHeadModel

    model, processor = build_tiny_model("qwen2_vl", image_size=112)
    handle = attach_gasp(model, CFG)
    with pytest.raises(ValueError, match="already attached"):
        attach_gasp(model, CFG)
    inputs, targets = _inputs(model, processor)
    with pytest.raises(RuntimeError, match="no visual-token states were captured"):
        handle.compute_loss(targets)
    model(**inputs)
    shifted = GaspTargets(targets.token_positions - 2, *[getattr(targets, f) for f in
                          ("anchor_frame", "anchor_tokens", "target_frames", "pos_tokens", "visible", "point_depth", "token_depth")])
    with pytest.raises(ValueError, match="non-visual tokens"):
        handle.compute_loss(shifted)
    with pytest.raises(ValueError, match="not supported by GASP; supported"):
        attach_gasp(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2)), CFG)
    with pytest.raises(ValueError, match="out of range"):
        attach_gasp(build_tiny_model("llava", image_size=112)[0], GaspConfig(layers=[5]))


def _lora_wrapped(model_type="qwen2_vl"):
    from peft import LoraConfig, get_peft_model

    model, processor = build_tiny_model(model_type, image_size=112)
    handle = attach_gasp(model, CFG)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=r".*language_model\.layers\.\d+\.self_attn\.q_proj"))
    return model, processor, handle, peft_model.train()


def test_frozen_heads_are_an_error_until_ensure_trainable():
    from gasp_plugin.core.attach import GaspGradientError

    model, processor, handle, peft_model = _lora_wrapped()
    assert not any(p.requires_grad for p in handle.heads.parameters())  # get_peft_model froze them
    inputs, targets = _inputs(model, processor)
    peft_model(**inputs)
    with pytest.raises(GaspGradientError, match=r"handle\.ensure_trainable\(\)"):
        handle.compute_loss(targets)
    with torch.no_grad():  # evaluation needs no trainable heads
        peft_model(**inputs)
        handle.compute_loss(targets)
    count = handle.ensure_trainable()
    assert count == sum(p.numel() for p in handle.heads.parameters()) > 0
    peft_model(**inputs)
    handle.compute_loss(targets).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in handle.heads.parameters())


def _gasp_grads(checkpointing, reentrant=False):
    """Gradients of the GASP loss alone (corr + depth + qk) on a tiny LoRA model: LoRA and heads."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)  # the same LoRA init in every run
    model, processor = build_tiny_model("qwen2_vl", image_size=112)
    handle = attach_gasp(model, GaspConfig(embed_dim=16, qk_weight=1.0))
    lora = LoraConfig(r=4, target_modules=r".*language_model\.layers\.\d+\.(self_attn\.(q|k)_proj|mlp\.up_proj)")
    peft_model = get_peft_model(model, lora)
    for n, p in peft_model.named_parameters():  # non-zero LoRA deltas, so every LoRA matrix gets a gradient
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    handle.ensure_trainable()
    peft_model.train()
    if checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        peft_model.enable_input_require_grads()  # what PEFT / the Trainer do for re-entrant checkpointing
    inputs, targets = _inputs(model, processor)
    peft_model(**inputs)
    out = handle.compute_loss(targets)
    out.total.backward()
    return out, {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointing_of_either_kind_gives_the_unchecked_gradients(reentrant):
    """Under re-entrant and non-re-entrant checkpointing every term (hidden-state heads and the
    q/k term) reaches LoRA with the gradients of a run without checkpointing."""
    plain_out, plain = _gasp_grads(False)
    ckpt_out, ckpt = _gasp_grads(True, reentrant)
    torch.testing.assert_close(ckpt_out.qk, plain_out.qk)
    assert plain.keys() == ckpt.keys()
    lora = [n for n in plain if "lora_" in n]
    assert len(lora) == 2 * 3 * len(plain_out.per_layer) and all(plain[n].abs().sum() > 0 for n in lora)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def _checkpoint_whole_layer_calls(model, reentrant: bool) -> None:
    """Wrap each decoder layer's whole ``__call__`` (hooks included) in a checkpoint, as older
    transformers releases and some training repositories do."""
    from torch.utils.checkpoint import checkpoint

    for _, layer in get_adapter(model).decoder_layers(model):
        base = type(layer)
        layer.__class__ = type(f"Checkpointed{base.__name__}", (base,), {
            "__call__": lambda self, *a, _base=base, **k: checkpoint(
                lambda *x: _base.__call__(self, *x, **k), *a, use_reentrant=reentrant)})


def test_a_checkpoint_around_the_whole_layer_call_is_an_error():
    """A wrapper that checkpoints a layer's ``__call__`` re-entrantly (hooks inside the checkpoint,
    as some training repositories did on older transformers) leaves the captured states without a
    graph: training stops at the first GASP loss, naming the setting to change."""

    from gasp_plugin.core.attach import GaspGradientError

    model, processor = build_tiny_model("qwen2_vl", image_size=112)
    handle = attach_gasp(model, CFG)
    _checkpoint_whole_layer_calls(model, reentrant=True)
    model.train()
    inputs, targets = _inputs(model, processor)
    model(**inputs)
    with pytest.raises(GaspGradientError, match="use_reentrant"):
        handle.compute_loss(targets)


def test_a_frozen_model_is_an_error():
    """Heads trainable but nothing in the model: GASP would train the heads only."""
    from gasp_plugin.core.attach import GaspGradientError

    model, processor = build_tiny_model("qwen2_vl", image_size=112)
    handle = attach_gasp(model, CFG)
    model.requires_grad_(False)
    handle.ensure_trainable()
    inputs, targets = _inputs(model, processor)
    model.train()(**inputs)
    with pytest.raises(GaspGradientError, match="'hidden' state.*no trainable"):
        handle.compute_loss(targets)


def test_a_non_reentrant_checkpoint_around_the_whole_layer_call_trains_the_qk_term():
    """transformers 5.17 checkpoints a decoder layer's whole call, so GASP's hooks run inside the
    checkpoint. Under non-re-entrant checkpointing, q/k computed inside the forward (but not in the
    recomputation) made backward fail with "a different number of tensors was saved" (seen on an
    H200); computed when read, after the forward, they train LoRA as without checkpointing."""

    plain_out, plain = _gasp_grads(False)
    torch.manual_seed(0)
    from peft import LoraConfig, get_peft_model

    model, processor = build_tiny_model("qwen2_vl", image_size=112)
    handle = attach_gasp(model, GaspConfig(embed_dim=16, qk_weight=1.0))
    peft_model = get_peft_model(model, LoraConfig(
        r=4, target_modules=r".*language_model\.layers\.\d+\.(self_attn\.(q|k)_proj|mlp\.up_proj)"))
    for n, p in peft_model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    handle.ensure_trainable()
    _checkpoint_whole_layer_calls(model, reentrant=False)
    peft_model.train()
    inputs, targets = _inputs(model, processor)
    peft_model(**inputs)
    handle.compute_loss(targets).total.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_token_position_check_reads_the_host_only_on_the_cpu():
    """On an accelerator the targets' position check is a device-side assertion: no host read of
    the flag (a meta tensor, which cannot be read, stands in); on the CPU a clear ValueError."""
    from gasp_plugin.core.attach import _check_without_sync

    _check_without_sync(torch.tensor(False, device="meta"), "never read")
    with pytest.raises(RuntimeError):
        bool(torch.tensor(False, device="meta"))  # what a host read would do
    _check_without_sync(torch.tensor(True), "fine")
    with pytest.raises(ValueError, match="bad targets"):
        _check_without_sync(torch.tensor(False), "bad targets")
