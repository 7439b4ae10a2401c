"""Model adapters: decoder layers, visual-token positions, pixel -> token mapping (by perturbation)."""

import os

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.models.qwen2_vl import check_video_pairs, video_geometry_frames  # noqa: E402
from gasp_plugin.models.registry import (  # noqa: E402
    FrameLayout,
    get_adapter,
    register_adapter,
    supported_model_types,
)
from gasp_plugin.models.tiny import TINY_MODEL_TYPES, build_tiny_model  # noqa: E402


ANYRES = ("llava_next_video", "llava_onevision")  # base view + tiles / newlines per image


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def tiny(request):
    model, processor = build_tiny_model(request.param, image_size=112)
    return request.param, model, processor, get_adapter(model)


def _changed_tokens(model_type, processor, adapter, frame, x, y):
    """Token(s) of the frame whose processor input changes most when pixel (x, y) changes."""
    ip = processor.image_processor
    base = ip(images=[frame], return_tensors="pt")["pixel_values"]
    bumped = frame.copy()
    bumped[y, x] = 255 - bumped[y, x]
    diff = (ip(images=[bumped], return_tensors="pt")["pixel_values"] - base).abs()
    if model_type.startswith("qwen"):
        # rows are patches, grouped merge*merge per LLM token (the merger's input order)
        per_token = diff.sum(-1).reshape(-1, ip.merge_size**2).sum(-1)
    else:
        p = adapter.patch
        _, _, hh, ww = diff.shape
        per_token = diff[0].sum(0).reshape(hh // p, p, ww // p, p).sum((1, 3)).flatten()
    return per_token


@pytest.mark.parametrize("hw", [(360, 540), (200, 150)])
def test_pixel_to_token_matches_single_pixel_perturbation(tiny, hw):
    model_type, _, processor, adapter = tiny
    if model_type in ANYRES:
        pytest.skip("several views per image: probed through the vision path in test_families_mapping.py")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    layout = adapter.frame_layout(processor, hw)
    checked = 0
    for _ in range(150):
        x, y = int(rng.integers(0, hw[1])), int(rng.integers(0, hw[0]))
        # skip pixels whose footprint straddles a cell edge after resampling (ambiguous by design)
        ux = (x + 0.5) * layout.resized_hw[1] / hw[1] - layout.crop_yx[1]
        uy = (y + 0.5) * layout.resized_hw[0] / hw[0] - layout.crop_yx[0]
        margin = 2.5 * max(layout.resized_hw[0] / hw[0], 1.0)
        near_edge = min(ux % layout.cell, -ux % layout.cell, uy % layout.cell, -uy % layout.cell) < margin
        tok = int(layout.pixels_to_tokens(torch.tensor([float(x), float(y)])))
        per_token = _changed_tokens(model_type, processor, adapter, frame, x, y)
        if tok == -1:
            # cropped away: with a crop margin, its change must not reach the vision input at all
            if not near_edge:
                assert per_token.max() < 1e-6, (x, y)
            continue
        if near_edge:
            continue
        assert int(per_token.argmax()) == tok, (x, y, tok)
        checked += 1
    assert checked >= 20, checked


def test_identity_resize_matches_analytic_formula():
    # 112 x 112 Qwen frame: no resize, cell 28, 4 x 4 tokens
    layout = FrameLayout((112, 112), (112, 112), (0, 0), 28, (4, 4))
    ys, xs = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
    tok = layout.pixels_to_tokens(torch.stack([xs, ys], -1))
    assert torch.equal(tok, (ys.long() // 28) * 4 + xs.long() // 28)
    out = layout.pixels_to_tokens(torch.tensor([[-1.0, 5.0], [112.0, 5.0], [float("nan"), 1.0]]))
    assert out.tolist() == [-1, -1, -1]


def test_frame_token_positions_hold_image_tokens_in_frame_order(tiny):
    model_type, model, processor, adapter = tiny
    frames = [np.full((112, 140, 3), 40 * i, np.uint8) for i in range(3)]
    inputs = adapter.build_frame_inputs(processor, frames)
    pos = adapter.frame_token_positions(inputs)
    layout = adapter.frame_layout(processor, (112, 140))
    assert pos.shape == (1, 3, layout.num_tokens)
    assert adapter.frame_grids(inputs) == [[layout.grid_hw] * 3]
    ids = inputs["input_ids"][0]
    assert bool((ids[pos[0].flatten()] == model.config.image_token_id).all())
    left_out = int((ids == model.config.image_token_id).sum()) - pos.numel()
    if model_type in ANYRES:  # tiles and newline tokens: counted in test_families.py
        assert left_out >= 3
    else:
        assert left_out == (3 if adapter_has_cls(adapter) else 0)
    assert bool((pos[0].flatten().diff() > 0).all())
    if model_type.startswith("qwen"):
        assert torch.equal(inputs["mm_token_type_ids"][0].bool(), ids == model.config.image_token_id)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[1] == ids.numel()


def adapter_has_cls(adapter):
    return bool(getattr(adapter, "has_cls", False))


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_video_groups_pair_consecutive_frames(model_type):
    model, processor = build_tiny_model(model_type, image_size=112)
    adapter = get_adapter(model)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(4)]
    video = adapter.build_video_inputs(processor, frames)
    images = adapter.build_frame_inputs(processor, frames)
    tps = model.config.vision_config.temporal_patch_size
    p = processor.image_processor.patch_size
    vid = video["pixel_values_videos"].reshape(2, -1, 3, tps, p, p)
    img = images["pixel_values"].reshape(4, -1, 3, tps, p, p)
    for g in range(2):
        for t in range(tps):
            assert torch.equal(vid[g, :, :, t], img[g * tps + t, :, :, 0])
    pos = adapter.frame_token_positions(video)
    assert pos.shape == (1, 2, 16)
    assert torch.equal(video["mm_token_type_ids"][0] == 2, video["input_ids"][0] == model.config.video_token_id)
    with torch.no_grad():
        model(**video)
    assert video_geometry_frames(4, tps) == [0, 2]
    with pytest.raises(ValueError, match="multiple of temporal_patch_size"):
        adapter.build_video_inputs(processor, frames[:3])
    with pytest.raises(ValueError, match="anchor's temporal group"):
        check_video_pairs(0, [0, 2], tps)
    with pytest.raises(ValueError, match="second frame of temporal group"):
        check_video_pairs(0, [3], tps)
    assert adapter.video_geometry_rows(4, 2) == [0, 2]
    with pytest.raises(ValueError, match="second frame of temporal group"):
        adapter.video_geometry_rows(4, 1)
    with pytest.raises(ValueError, match="multiple of temporal_patch_size"):
        adapter.video_geometry_rows(5, 0)


def test_family_without_video_input_says_so(tiny):
    model_type, _, processor, adapter = tiny
    if model_type != "llava":
        pytest.skip("every other family has video input")
    frames = [np.zeros((112, 112, 3), np.uint8)] * 2
    with pytest.raises(ValueError, match=r"LlavaAdapter \(model_type 'llava'\) has no video input; use as_video=False"):
        adapter.video_geometry_rows(2, 0)
    with pytest.raises(ValueError, match="has no video input"):
        adapter.build_video_inputs(processor, frames)


class _Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.module = inner
        self.config = inner.config


def test_decoder_layers_under_peft_and_wrapper(tiny):
    from peft import LoraConfig, get_peft_model

    _, model, _, adapter = tiny
    plain = adapter.decoder_layers(model)
    n = model.config.text_config.num_hidden_layers
    assert [name.rsplit(".", 1)[-1] for name, _ in plain] == [str(i) for i in range(n)]
    wrapped = adapter.decoder_layers(_Wrapper(model))
    assert [m for _, m in wrapped] == [m for _, m in plain]
    assert wrapped[0][0].startswith("module.")
    q, k = adapter.attention_projections(plain[0][1])
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert getattr(q, "proj", q).out_features == text.num_attention_heads * head_dim  # Qwen3-VL: with its q_norm
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=r".*language_model\.layers\.\d+\.self_attn\.(q|k)_proj")
    )
    try:
        layers = adapter.decoder_layers(peft_model)
        assert layers[0][0].startswith("base_model.model.")
        assert len(layers) == n
        assert get_adapter(peft_model).config.model_type == model.config.model_type
        q, _ = adapter.attention_projections(layers[0][1])
        assert hasattr(getattr(q, "proj", q), "lora_A")
    finally:
        peft_model.unload()


def test_unsupported_model_lists_supported():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match=r"'gpt2' is not supported.*llava.*qwen2_5_vl.*qwen2_vl"):
        get_adapter(GPT2Config())
    assert {"llava", "qwen2_vl", "qwen2_5_vl"} <= set(supported_model_types())


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="already registered"):
        register_adapter("llava")(type("Other", (), {}))


def test_bad_frames_name_the_frame(tiny):
    _, _, processor, adapter = tiny
    with pytest.raises(ValueError, match="frame 1 must be uint8"):
        adapter.build_frame_inputs(processor, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="no frames"):
        adapter.build_frame_inputs(processor, [])
