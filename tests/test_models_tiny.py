"""Tiny random-weight VLM checkpoints: offline round trip through from_pretrained."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gasp_plugin.models.processing import ProcessorParts, load_processor  # noqa: E402
from gasp_plugin.models.tiny import TINY_MODEL_TYPES, build_tiny_model, save_tiny_model  # noqa: E402


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def saved(request, tmp_path_factory):
    path = save_tiny_model(request.param, tmp_path_factory.mktemp(request.param), seed=3)
    return request.param, path


def test_checkpoint_reloads_offline_with_same_weights(saved):
    from transformers import AutoModelForImageTextToText

    model_type, path = saved
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.model_type == model_type
    ref, _ = build_tiny_model(model_type, seed=3)
    ref_sd = ref.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ref_sd[key], rtol=0, atol=0, msg=key)


def test_seed_changes_weights():
    a, _ = build_tiny_model("qwen2_vl", seed=0)
    b, _ = build_tiny_model("qwen2_vl", seed=1)
    wa = a.model.language_model.layers[0].self_attn.q_proj.weight
    wb = b.model.language_model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(wa, wb)


def test_special_token_ids_come_from_tokenizer(saved):
    from transformers import AutoConfig

    model_type, path = saved
    config = AutoConfig.from_pretrained(path)
    processor = load_processor(path)
    tok = processor.tokenizer
    if model_type.startswith("qwen"):
        assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
        assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
        assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
        assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
        for special in ("<|im_start|>", "<|im_end|>"):
            assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
    else:
        assert config.image_token_id == tok.convert_tokens_to_ids("<image>")
        if getattr(config, "video_token_id", None) is not None:
            assert config.video_token_id == tok.convert_tokens_to_ids("<video>") != tok.unk_token_id
    assert config.text_config.vocab_size == len(tok)
    text = "How far is the chair from the door?"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_chat_template_places_one_placeholder_per_image(saved):
    model_type, path = saved
    processor = load_processor(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    placeholder = "<|image_pad|>" if model_type.startswith("qwen") else "<image>"
    assert text.count(placeholder) == 2


def test_processor_grid_at_224(saved):
    from transformers import AutoConfig

    from gasp_plugin.models.registry import get_adapter

    model_type, path = saved
    processor = load_processor(path)
    config = AutoConfig.from_pretrained(path)
    layout = get_adapter(config).frame_layout(processor, (224, 224))
    frame = np.zeros((224, 224, 3), dtype=np.uint8)
    out = processor.image_processor(images=[frame], return_tensors="pt")
    if model_type.startswith("qwen"):
        merge = processor.image_processor.merge_size
        grid = out["image_grid_thw"][0].tolist()
        assert [grid[0], grid[1] // merge, grid[2] // merge] == [1, *layout.grid_hw]
        assert layout.cell == config.vision_config.patch_size * merge  # 28 px Qwen2-VL, 32 px Qwen3-VL
    else:  # the tower's 224 px input (LLaVA-NeXT families: the base view, first of the views)
        assert tuple(out["pixel_values"].shape[-3:]) == (3, 224, 224)
        assert layout.grid_hw == (16, 16)


def test_processor_fallback_is_parts_or_full(saved):
    model_type, path = saved
    processor = load_processor(path)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        torchvision = None
    if model_type != "llava" and torchvision is None:
        # every family with a video processor: image processor and tokenizer only
        assert isinstance(processor, ProcessorParts)
        assert type(processor.image_processor).__name__.endswith("ImageProcessorPil")
        assert processor.processor_class.endswith("Processor")
    else:  # LLaVA, or any family with torchvision: the model's own full processor
        assert not isinstance(processor, ProcessorParts)
        assert type(processor).__name__.endswith("Processor")


def test_unknown_family_lists_known():
    with pytest.raises(ValueError, match="known: .*llava.*qwen2_vl"):
        build_tiny_model("gpt2")


def test_bad_sizes_name_the_field():
    with pytest.raises(ValueError, match="hidden_size .* divisible by num_heads"):
        build_tiny_model("qwen2_vl", hidden_size=66, num_heads=4)
