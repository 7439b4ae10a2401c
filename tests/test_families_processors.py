"""The new families' full transformers processors (video processors need torchvision) against
what the adapters build without them. Skipped where torchvision is missing (the main venv); run
under a venv with torch 2.14.1 + torchvision 0.29.1 (see STACK.md):

    PYTHONPATH=. <that venv>/bin/python -m pytest -q tests/test_families_processors.py
"""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("torchvision")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.models.processing import ProcessorParts  # noqa: E402
from gasp_plugin.models.registry import get_adapter  # noqa: E402
from gasp_plugin.models.tiny import build_tiny_model  # noqa: E402

from test_families_mapping import check_mapping  # noqa: E402

FAMILIES = {"llava_next_video": 112, "llava_onevision": 130, "qwen3_vl": 128}
SIZES = [(360, 540), (200, 150), (720, 1280)]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model, processor = build_tiny_model(request.param, image_size=FAMILIES[request.param], num_layers=1)
    assert not isinstance(processor, ProcessorParts)
    video = getattr(processor, "video_processor", None)
    parts = ProcessorParts(processor.image_processor, processor.tokenizer, processor.chat_template,
                           type(processor).__name__, model.config, video.to_dict() if video is not None else None)
    return request.param, model, processor, parts, get_adapter(model)


def _frames(hw, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("hw", SIZES)
def test_images_match_the_full_processor(family, hw):
    """Image placeholders expanded by the adapter (no full processor) = the processor's own."""
    _, _, processor, parts, adapter = family
    frames = _frames(hw, 3)
    full, own = adapter.build_frame_inputs(processor, frames), adapter.build_frame_inputs(parts, frames)
    assert torch.equal(full["input_ids"], own["input_ids"])
    for key in ("pixel_values", "image_sizes", "batch_num_images", "image_grid_thw"):
        if key in full:
            assert torch.equal(torch.as_tensor(full[key]), torch.as_tensor(own[key])), key


@pytest.mark.parametrize("hw", SIZES)
def test_video_matches_the_video_processor(family, hw):
    """LLaVA families: the real video processor's tokens equal the adapter's, its pixels differ
    only by resampling (torchvision vs PIL), and the single-pixel probes hold through it. Qwen3-VL:
    the adapter builds video from the image processor always; its tokens (timestamps included)
    equal the processor's for the same grid."""
    model_type, model, processor, parts, adapter = family
    frames = _frames(hw, 4)
    own = adapter.build_video_inputs(parts, frames)
    if model_type == "qwen3_vl":
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}],
            tokenize=False)
        # the video processor's pixel budget covers all frames; the image processor's one frame
        size = processor.image_processor.size
        budget = {k: int(getattr(size, k)) * len(frames) for k in ("shortest_edge", "longest_edge")}
        real = processor(text=[text], videos=[np.stack(frames)], do_sample_frames=False, return_tensors="pt",
                         size=budget, cap_pixels_per_frame=False)
        assert torch.equal(real["video_grid_thw"], own["video_grid_thw"])
        assert torch.equal(real["input_ids"], own["input_ids"])
        assert torch.equal(real["mm_token_type_ids"], own["mm_token_type_ids"])
        return
    full = adapter.build_video_inputs(processor, frames)
    assert torch.equal(full["input_ids"], own["input_ids"])
    assert full["pixel_values_videos"].shape == own["pixel_values_videos"].shape
    assert (full["pixel_values_videos"] - own["pixel_values_videos"]).abs().mean() < 0.05
    assert check_mapping(model, processor, adapter, hw, as_video=True, rounds=2) >= 4


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_checkpoint_saved_without_torchvision_loads_the_full_processor(model_type, tmp_path, monkeypatch):
    """A tiny checkpoint written where torchvision is missing (processor parts, with the full
    processor's settings and the video processor config) loads as the full processor here, and
    expands images as the parts do."""
    from gasp_plugin.models import tiny
    from gasp_plugin.models.processing import load_processor

    monkeypatch.setattr(tiny, "_torchvision", lambda: False)
    size = FAMILIES[model_type]
    path = tiny.save_tiny_model(model_type, tmp_path / "ckpt", image_size=size, num_layers=1)
    model, parts = tiny.build_tiny_model(model_type, image_size=size, num_layers=1)
    assert isinstance(parts, ProcessorParts)
    full = load_processor(path)
    assert not isinstance(full, ProcessorParts) and full.video_processor is not None
    adapter = get_adapter(model)
    frames = _frames((200, 300), 2)
    assert torch.equal(adapter.build_frame_inputs(full, frames)["input_ids"],
                       adapter.build_frame_inputs(parts, frames)["input_ids"])
