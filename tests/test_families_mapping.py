"""Pixel -> token mappings of LLaVA-NeXT-Video, LLaVA-OneVision and Qwen3-VL, checked through each
model's real vision path: one pixel block of a frame is inverted, the inputs rebuilt by the
adapter (the family's processor), the vision tower, projector and pooling run, and the token the
layout names must be the one of that frame whose embedding (as the first LLM layer receives it)
changes most. Frame sizes wide, tall and square; images and video frames.
"""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.models.registry import get_adapter  # noqa: E402
from gasp_plugin.models.tiny import build_tiny_model  # noqa: E402

# tiny towers: LLaVA-NeXT-Video 112 px (8x8 patches, 4x4 pooled), OneVision 130 px (9x9 patches
# covering 126 px, 5x5 pooled: an odd grid and an unread border as at 384 px), Qwen3-VL 32 px cells
FAMILIES = {"llava_next_video": 112, "llava_onevision": 130, "qwen3_vl": 128}
SIZES = [(360, 540), (200, 150), (96, 96), (720, 1280)]


class _Stop(Exception):
    pass


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model, processor = build_tiny_model(request.param, image_size=FAMILIES[request.param], num_layers=2)
    return request.param, model, processor, get_adapter(model)


def first_layer_inputs(model, adapter, inputs) -> torch.Tensor:
    """``[b, L, d]`` what decoder layer 0 receives (the LLM's input embeddings); the LLM is not run."""
    layer = adapter.decoder_layers(model)[0][1]
    seen = {}

    def hook(_module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        raise _Stop

    handle = layer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["x"]


def frame_embeddings(model, adapter, inputs) -> torch.Tensor:
    """``[f, n, d]`` the supervised tokens of each frame of row 0, as the LLM receives them."""
    x = first_layer_inputs(model, adapter, inputs)[0]
    pos = adapter.frame_token_positions(inputs)[0]  # [f, n]
    assert bool((pos >= 0).all())
    return x[pos]


def probe_pixels(layout) -> list[tuple[int, int, int]]:
    """``(x, y, token)`` per token whose probe pixel lies in the frame: the centre of the patch
    that feeds the token most and its neighbours least (with ``token_of_patch``, the bilinear
    weights computed here independently: sample point ``(j + 0.5) * n_in / n_out - 0.5``), or the
    cell centre."""
    gh, gw = layout.grid_hw

    def centres(axis, g):
        if layout.token_of_patch is None:
            return [(j + 0.5) * layout.cell for j in range(g)]
        n_in = len(layout.token_of_patch[axis])
        src = [min(max((j + 0.5) * n_in / g - 0.5, 0), n_in - 1) for j in range(g)]
        w = np.clip(1 - np.abs(np.arange(n_in)[:, None] - np.array(src)[None]), 0, None)  # [n_in, g]
        out = []
        for j in range(g):
            others = np.delete(w, j, axis=1).max(1) if g > 1 else 0
            out.append((int(np.argmax(w[:, j] - others)) + 0.5) * layout.cell)
        return out

    ys = layout._to_original(np.array(centres(0, gh)), 0)
    xs = layout._to_original(np.array(centres(1, gw)), 1)
    h, w = layout.orig_hw
    out = []
    for r in range(gh):
        for c in range(gw):
            x, y = int(round(xs[c])), int(round(ys[r]))
            if 0 <= x < w and 0 <= y < h:
                out.append((x, y, r * gw + c))
    return out


def check_mapping(model, processor, adapter, hw, as_video, rounds=4, seed=0) -> int:
    """Invert a block around one probe pixel in every geometry frame at once (the frames reach
    the tower separately), ``rounds`` times; returns the number of probes."""
    rng = np.random.default_rng(seed)
    num = 4 if as_video else 2
    frames = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(num)]
    build = adapter.build_video_inputs if as_video else adapter.build_frame_inputs
    layout = (adapter.video_frame_layout if as_video else adapter.frame_layout)(processor, hw)
    rows = adapter.video_geometry_rows(num, 0) if as_video else list(range(num))
    inputs = build(processor, frames)
    adapter.check_layouts(inputs, [layout] * len(rows))
    base = frame_embeddings(model, adapter, inputs)  # [f, n, d]
    assert base.shape[:2] == (len(rows), layout.num_tokens)
    pixels = probe_pixels(layout)
    assert len(pixels) >= layout.num_tokens // 3, (hw, layout)
    canvas = layout.padded_hw or layout.orig_hw
    scale = max(canvas[0] / layout.resized_hw[0], canvas[1] / layout.resized_hw[1], 1.0)
    r = int(np.ceil(scale / 2)) - 1 if scale > 1.5 else 0  # one resized pixel's footprint
    probes = 0
    for _ in range(rounds):
        bumped = [fr.copy() for fr in frames]
        expected = []
        for row in rows:
            x, y, token = pixels[int(rng.integers(len(pixels)))]
            assert int(layout.pixels_to_tokens(torch.tensor([float(x), float(y)]))) == token
            block = (slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1))
            bumped[row][block] = 255 - bumped[row][block]
            expected.append(token)
        after = build(processor, bumped)
        assert torch.equal(after["input_ids"], inputs["input_ids"])
        change = (frame_embeddings(model, adapter, after) - base).norm(dim=-1)  # [f, n]
        assert change.argmax(-1).tolist() == expected, (hw, as_video, change.max(-1))
        probes += len(rows)
    return probes


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("as_video", [False, True], ids=["images", "video"])
def test_single_pixel_probes_through_the_vision_path(family, hw, as_video):
    _, model, processor, adapter = family
    assert check_mapping(model, processor, adapter, hw, as_video) >= 8


def test_pixels_outside_every_token_change_nothing_supervised():
    """OneVision's tower reads 9 x 14 = 126 of its 130 input pixels per side: frame pixels in the
    unread border map to -1, and inverting them leaves every supervised token as it was."""
    model, processor = build_tiny_model("llava_onevision", image_size=130, num_layers=1)
    adapter = get_adapter(model)
    hw = (130, 130)  # square: no pad, no resize; columns and rows 126..129 are read by no patch
    layout = adapter.frame_layout(processor, hw)
    assert layout.grid_hw == (9, 9)
    assert layout.pixels_to_tokens(torch.tensor([[127.0, 5.0], [5.0, 129.0], [125.0, 125.0]])).tolist() == [-1, -1, 80]
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(2)]
    base = frame_embeddings(model, adapter, adapter.build_frame_inputs(processor, frames))
    bumped = [fr.copy() for fr in frames]
    bumped[0][:, 127:] = 255 - bumped[0][:, 127:]
    after = frame_embeddings(model, adapter, adapter.build_frame_inputs(processor, bumped))
    torch.testing.assert_close(after, base, rtol=0, atol=0)


def test_video_layout_tables_follow_the_model_pooling():
    """The OneVision video table is the argmax of the pooling's own weights: each patch feeds its
    table token most (checked on the model's apply_pooling with one-hot features)."""
    model, processor = build_tiny_model("llava_onevision", image_size=130, num_layers=1)
    adapter = get_adapter(model)
    layout = adapter.video_frame_layout(processor, (200, 300))
    n = len(layout.token_of_patch[1])
    gh, gw = layout.grid_hw
    d = model.config.text_config.hidden_size
    for p in range(n):
        feats = torch.zeros(1, n * n, d)
        feats[0, p * n + p, 0] = 1.0  # patch (p, p)
        pooled = model.model.apply_pooling(feats)[0, :, 0].reshape(gh, gw)
        row, col = divmod(int(pooled.argmax()), gw)
        assert (row, col) == (layout.token_of_patch[0][p], layout.token_of_patch[1][p])
