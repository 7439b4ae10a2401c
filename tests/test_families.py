"""LLaVA-NeXT-Video, LLaVA-OneVision and Qwen3-VL through GASP: visual-token positions (newline
and tile tokens left out), geometry examples as images and as video, batches with padding, the
loss, q/k capture with grouped-query attention, DeepStack, instruction data without the full
processor, and the probe."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.core.attach import attach_gasp  # noqa: E402
from gasp_plugin.core.batch import TARGETS_KEY, GeometryCollator, build_geometry_example  # noqa: E402
from gasp_plugin.core.config import GaspConfig  # noqa: E402
from gasp_plugin.models.registry import get_adapter  # noqa: E402
from gasp_plugin.models.tiny import build_tiny_model, save_tiny_model  # noqa: E402

from test_families_mapping import first_layer_inputs  # noqa: E402

FAMILIES = {"llava_next_video": 112, "llava_onevision": 130, "qwen3_vl": 128, "qwen3_vl_moe": 128}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model, processor = build_tiny_model(request.param, image_size=FAMILIES[request.param], num_layers=2)
    return request.param, model, processor, get_adapter(model)


@pytest.fixture(scope="module")
def scene():
    from gasp_plugin.assets import asset_path
    from gasp_plugin.data.scene import open_scene

    return open_scene(asset_path("hololens-000"))


def _clip(scene, frame_ids, anchor_row=0):
    from gasp_plugin.data.clips import load_clip
    from gasp_plugin.geometry.tracks import tracks_for_clip

    clip = load_clip(scene, frame_ids, anchor_row=anchor_row)
    return clip, tracks_for_clip(clip, grid=8, keep=1.0)


def _forward_keys(batch):
    return {k: v for k, v in batch.items() if k != TARGETS_KEY}


def test_registered_and_geometry_form():
    from gasp_plugin.models.registry import supported_model_types

    assert {"llava_next_video", "llava_onevision", "qwen3_vl", "qwen3_vl_moe"} <= set(supported_model_types())
    for model_type, as_video in (("llava_next_video", True), ("llava_onevision", False), ("qwen3_vl", False)):
        model, _ = build_tiny_model(model_type, image_size=FAMILIES[model_type], num_layers=1)
        assert get_adapter(model).geometry_as_video is as_video  # the paper trains LLaVA-NeXT-Video on video


def test_newline_and_tile_tokens_are_not_targets(family):
    """Positions hold the base views (images) / pooled frames (video) only: no position holds the
    image_newline embedding, and every newline and tile token is a visual token left out."""
    model_type, model, processor, adapter = family
    if model_type.startswith("qwen3_vl"):
        pytest.skip("Qwen3-VL has no newline or tile tokens")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (180, 300, 3), dtype=np.uint8) for _ in range(3)]
    newline = model.model.image_newline.detach()
    for inputs in (adapter.build_frame_inputs(processor, frames), adapter.build_video_inputs(processor, frames)):
        x = first_layer_inputs(model, adapter, inputs)[0]
        is_newline = (x == newline).all(-1)
        pos = adapter.frame_token_positions(inputs)[0]
        grid = adapter.frame_grids(inputs)[0][0]
        assert pos.shape == (3, grid[0] * grid[1])
        assert not is_newline[pos.flatten()].any()
        visual = adapter.visual_token_mask(inputs)[0]
        left_out = visual.clone()
        left_out[pos.flatten()] = False
        assert bool(visual[is_newline].all())
        if "pixel_values_videos" in inputs:
            assert int(is_newline.sum()) == (1 if model_type == "llava_onevision" else 0)
            assert int(left_out.sum()) == int(is_newline.sum())
        elif model_type == "llava_onevision":  # one padded view per frame, then one newline
            assert int(is_newline.sum()) == 3 and int(left_out.sum()) == 3
        else:  # base view, then the unpadded tile grid with a newline per row
            from gasp_plugin.models.llava_next import anyres_tile_grid

            rows, cols = anyres_tile_grid((180, 300), model.config.image_grid_pinpoints, adapter.tile, adapter.side)
            assert int(is_newline.sum()) == 3 * rows and int(left_out.sum()) == 3 * rows * (cols + 1)


def test_onevision_single_image_is_refused(family):
    model_type, _, processor, adapter = family
    if model_type != "llava_onevision":
        pytest.skip("OneVision only")
    with pytest.raises(ValueError, match="tiles a lone image.*at least 2 frames"):
        adapter.build_frame_inputs(processor, [np.zeros((64, 64, 3), np.uint8)])


@pytest.mark.parametrize("as_video", [False, True], ids=["images", "video"])
def test_examples_batch_with_padding_and_loss(family, scene, as_video):
    """Two clips of the real scene (different lengths, or prompts for equal-length videos) collated
    with right padding: each row's targets index the tokens its single example has, and the
    batch loss is the pair-weighted mean of the single ones."""
    model_type, model, processor, adapter = family
    video_frames = 4 if model_type.startswith("qwen3_vl") else 3
    if as_video:
        clips = [_clip(scene, [0, 2, 4, 6][:video_frames]), _clip(scene, [1, 3, 5, 7][:video_frames])]
        prompts = ["Describe the video.", "Where does the camera move in this video, and what is seen?"]
    else:
        clips = [_clip(scene, [2, 4, 6], anchor_row=1), _clip(scene, [3, 5])]
        prompts = ["Describe the frames."] * 2
    examples = [build_geometry_example(c, t, processor, adapter, prompt=p, as_video=as_video)
                for (c, t), p in zip(clips, prompts)]
    assert all(("pixel_values_videos" in ex) is as_video for ex in examples)
    lengths = [ex["input_ids"].shape[1] for ex in examples]
    assert lengths[0] != lengths[1]
    batch = GeometryCollator(processor)(examples)
    tg = batch[TARGETS_KEY]
    assert tg.num_visible > 0
    x = first_layer_inputs(model, adapter, _forward_keys(batch))
    for row, ex in enumerate(examples):
        single = first_layer_inputs(model, adapter, _forward_keys(ex))[0]
        pos = ex[TARGETS_KEY].token_positions[0]
        got = tg.token_positions[row, : pos.shape[0], : pos.shape[1]]
        assert torch.equal(got, pos)
        torch.testing.assert_close(x[row][pos[pos >= 0]], single[pos[pos >= 0]], rtol=1e-4, atol=1e-5)
    handle = attach_gasp(model, GaspConfig(embed_dim=8, qk_weight=1.0))
    try:
        model(**_forward_keys(batch))
        out = handle.compute_loss(tg)
        assert torch.isfinite(out.total) and out.num_pairs == tg.num_visible and torch.isfinite(out.qk)
        parts, weights = [], []  # per example: (corr, depth) and their pair counts
        for ex in examples:
            model(**_forward_keys(ex))
            alone = handle.compute_loss(ex[TARGETS_KEY])
            parts.append(torch.stack([alone.corr, alone.depth]))
            weights.append(torch.tensor([float(alone.num_pairs), float(alone.num_depth_pairs)]))
        parts, weights = torch.stack(parts), torch.stack(weights)  # [2 examples, 2 terms]
        want = (parts * weights).sum(0) / weights.sum(0)
        torch.testing.assert_close(torch.stack([out.corr, out.depth]), want, rtol=1e-4, atol=1e-5)
    finally:
        handle.detach()


def test_video_geometry_rows(family):
    model_type, _, _, adapter = family
    if model_type.startswith("qwen3_vl"):
        assert adapter.video_geometry_rows(4, 2) == [0, 2]  # temporal groups of two frames, as Qwen2-VL
        with pytest.raises(ValueError, match="second frame of temporal group"):
            adapter.video_geometry_rows(4, 1)
    else:
        assert adapter.video_geometry_rows(3, 1) == [0, 1, 2]  # every frame is a token frame
        with pytest.raises(ValueError, match="needs >= 2 frames"):
            adapter.video_geometry_rows(1, 0)


def test_qk_capture_is_what_attention_compares(family):
    """Captured q / k are the attention's own pre-RoPE queries and keys at the visual tokens (for
    Qwen3-VL after its per-head q_norm / k_norm); keys have fewer heads (grouped-query attention)."""
    from gasp_plugin.core.capture import VisualCapture, span_index

    model_type, model, processor, adapter = family
    text = model.config.text_config
    assert text.num_key_value_heads < text.num_attention_heads
    frames = [np.random.default_rng(i).integers(0, 256, (120, 160, 3), dtype=np.uint8) for i in range(2)]
    inputs = adapter.build_frame_inputs(processor, frames)
    layer = adapter.decoder_layers(model)[1][1]
    seen = {}
    attn = layer.self_attn
    head_dim = getattr(attn, "head_dim", text.hidden_size // text.num_attention_heads)

    def grab(name, module):
        def hook(_m, _a, out):  # the model's own call comes first; the capture's recomputation after
            seen.setdefault(name, out.detach())
        return module.register_forward_hook(hook)

    norms = (attn.q_norm, attn.k_norm) if model_type.startswith("qwen3_vl") else (attn.q_proj, attn.k_proj)
    hooks = [grab("q", norms[0]), grab("k", norms[1])]
    try:
        with VisualCapture(model, adapter, layers=[1], kinds=("q", "k"), detach=True) as cap, torch.no_grad():
            model(**inputs)
            states, (start, end) = cap.take(), cap.span  # q/k are computed when read
    finally:
        for h in hooks:
            h.remove()
    q_ref = seen["q"].reshape(*seen["q"].shape[:2], -1)[:, start:end]
    k_ref = seen["k"].reshape(*seen["k"].shape[:2], -1)[:, start:end]
    # a few rows (the q/k term's anchor queries): projected from those input rows alone, before
    # the whole span is ever projected, through this family's own norm and projections
    few = torch.tensor([[3, 0, end - start - 1]])
    rows = states["q"][1].rows(*span_index(few + start, start))
    assert states["q"][1]._full is None  # the rows path, not rows of the projected span
    torch.testing.assert_close(rows, q_ref[:, few[0]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(states["q"][1].full(), q_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(states["k"][1].full(), k_ref, rtol=1e-5, atol=1e-6)
    assert states["k"][1].full().shape[-1] == text.num_key_value_heads * head_dim


def test_qwen3_deepstack_capture():
    """DeepStack adds vision features after the first decoder layers, outside them: the captured
    hidden state of layer i is the layer's own output (what the model returns as hidden_states[i + 1]); the next
    layer's input, from which its q/k are recomputed, carries the added features at the visual
    positions only."""
    from gasp_plugin.core.capture import VisualCapture

    model, processor = build_tiny_model("qwen3_vl", image_size=128, num_layers=3)
    adapter = get_adapter(model)
    assert model.config.vision_config.deepstack_visual_indexes == [0, 1]
    frames = [np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8) for i in range(2)]
    inputs = adapter.build_frame_inputs(processor, frames)
    layers = adapter.decoder_layers(model)
    inputs_of = {}
    hooks = [layers[i][1].register_forward_pre_hook(
        lambda _m, a, kw, i=i: inputs_of.__setitem__(i, (a[0] if a else kw["hidden_states"]).detach()),
        with_kwargs=True) for i in range(3)]
    try:
        with VisualCapture(model, adapter, layers=[0, 1, 2], kinds=("hidden",), detach=True) as cap, torch.no_grad():
            out = model(**inputs, output_hidden_states=True)
        hidden, (start, end) = cap.take()["hidden"], cap.span
    finally:
        for h in hooks:
            h.remove()
    visual = adapter.visual_token_mask(inputs)[0, start:end]
    for i in (0, 1):  # hidden_states: embeddings, each layer's output, the last after the final norm
        torch.testing.assert_close(hidden[i], out.hidden_states[i + 1][:, start:end], rtol=0, atol=0)
    final_norm = adapter.forward_bounds(model)[1]
    torch.testing.assert_close(final_norm(hidden[2]), out.hidden_states[3][:, start:end], rtol=1e-6, atol=1e-6)
    for i in (0, 1):  # DeepStack after layers 0 and 1: the next input differs at visual tokens only
        diff = (inputs_of[i + 1][0, start:end] - hidden[i][0]).abs().amax(-1)
        assert bool((diff[visual] > 0).all()) and bool((diff[~visual] == 0).all())


def test_instruction_data_without_the_full_processor(family, tmp_path):
    """A saved checkpoint of each family loads as ProcessorParts without torchvision; instruction
    samples expand their image tokens by the adapter (the model config the parts carry) and the
    model accepts the result."""
    from gasp_plugin.data.instruct import encode_conversation
    from gasp_plugin.models.processing import ProcessorParts, load_processor

    model_type, model, _, _ = family
    path = save_tiny_model(model_type, tmp_path / model_type, image_size=FAMILIES[model_type], num_layers=2)
    processor = load_processor(path)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert isinstance(processor, ProcessorParts) and processor.model_config.model_type == model_type
    rng = np.random.default_rng(0)
    for n_images in (1, 2):
        images = [rng.integers(0, 256, (100, 140, 3), dtype=np.uint8) for _ in range(n_images)]
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": "What is here?"}]
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": "A room."}]}]
        out = encode_conversation(processor, messages, images, image_token_id=model.config.image_token_id,
                                  video_token_id=model.config.video_token_id)
        batch = {k: (v[None] if k in ("input_ids", "attention_mask", "labels", "mm_token_type_ids") else v)
                 for k, v in out.items()}
        if not model_type.startswith("qwen3_vl"):
            batch.pop("mm_token_type_ids")
        with torch.no_grad():
            loss = model(**batch).loss
        assert torch.isfinite(loss)


def test_probe_runs(family, scene):
    from gasp_plugin.probe.runner import run_probe

    model_type, model, processor, adapter = family
    report = run_probe(model, processor, [scene], max_gap=2, pairs_per_gap=1, progress=False)
    assert report.token_grids == [adapter.frame_layout(processor, scene.image(0).shape[:2]).grid_hw]
    st = report.stats["qk"][0]
    assert st.num_queries > 0


def test_family_recipes():
    """The shipped recipes of the three families: their checkpoints, the paper's LoRA rank for
    LLaVA-NeXT-Video, both query grids and a token budget that holds max_frames frames."""
    from gasp_plugin.recipe import load_recipe

    per_frame = {"llava_video_gasp": 144, "llava_onevision_gasp": 730, "qwen3vl_gasp": 198}  # 336 / 384 / 448 px
    for name, (path, rank) in {"llava_video_gasp": ("LLaVA-NeXT-Video-7B-hf", 512),
                               "llava_onevision_gasp": ("llava-onevision-qwen2-7b-ov-hf", 128),
                               "qwen3vl_gasp": ("Qwen3-VL-8B-Instruct", 128)}.items():
        r = load_recipe(name)
        g = r.data.geometry
        assert path in r.model.path and r.lora.r == rank and g.sampling.grid == (8, 24)
        assert g.max_frames * per_frame[name] < g.max_tokens
