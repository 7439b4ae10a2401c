"""Tiny random-weight VLMs built from configs, for tests, the CPU recipe and the probe demo.

Nothing is downloaded: the config, random weights (seeded), a byte-level BPE tokenizer trained
locally on a few sentences with the family's special tokens, the family's chat template and its
PIL image processor are written to a folder that loads offline with
``AutoModelForImageTextToText.from_pretrained(dir)`` and :func:`gasp_plugin.models.processing.load_processor`
(which is ``AutoProcessor.from_pretrained(dir)`` wherever that can load; see
:mod:`gasp_plugin.models.processing` for Qwen-VL without torchvision)::

    from gasp_plugin.models.tiny import save_tiny_model, build_tiny_model
    path = save_tiny_model("qwen2_vl", "/tmp/tiny-qwen", hidden_size=128, num_layers=4)
    model, processor = build_tiny_model("llava")

Every token id in a config is looked up in the tokenizer built here; patch and merge sizes are
read from the vision config when the processor is made.

Size overrides: keyword arguments named ``text_<field>`` go to the text config, ``vision_<field>``
to the vision config, anything else to the top-level config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from gasp_plugin.models.processing import ProcessorParts

__all__ = ["TINY_MODEL_TYPES", "build_tiny_model", "save_tiny_model", "build_tiny_tokenizer"]

_CORPUS = [
    "Describe the frames. What is in the room? The chair is left of the table.",
    "How far is the door from the window? About two metres. Count the objects in the scene.",
    "user assistant system The camera moves to the right and the lamp appears behind the sofa.",
    "A picture of a kitchen, a bedroom and an office. Yes. No. One two three four five six.",
]

_QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_LLAVA_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

_QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tiny_tokenizer(special_tokens: list[str], *, vocab_size: int = 512, **named_tokens: str) -> Any:
    """A byte-level BPE tokenizer (any text encodes; no unknown tokens) with ``special_tokens``.

    ``named_tokens`` sets roles, e.g. ``eos_token="<|im_end|>"``; each must be in ``special_tokens``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    for role, tok in named_tokens.items():
        if tok not in special_tokens:
            raise ValueError(f"{role}={tok!r} is not one of the special tokens {special_tokens}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named_tokens)


def _mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim / 2`` rotary pairs over (t, h, w) like Qwen's 16/24/24 of 64."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _split_overrides(overrides: dict) -> tuple[dict, dict, dict]:
    text, vision, top = {}, {}, {}
    for key, value in overrides.items():
        if key.startswith("text_"):
            text[key[5:]] = value
        elif key.startswith("vision_"):
            vision[key[7:]] = value
        else:
            top[key] = value
    return text, vision, top


@dataclass(frozen=True)
class _Sizes:
    hidden_size: int
    num_layers: int
    num_heads: int
    image_size: int
    vision_depth: int

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "image_size", "vision_depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if (self.hidden_size // self.num_heads) % 4:
            raise ValueError(
                f"head dim hidden_size/num_heads = {self.hidden_size // self.num_heads} must be a "
                "multiple of 4 (rotary sections)"
            )


def _text_kwargs(sizes: _Sizes, tokenizer, text_over: dict) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": sizes.hidden_size,
        "intermediate_size": 2 * sizes.hidden_size,
        "num_hidden_layers": sizes.num_layers,
        "num_attention_heads": sizes.num_heads,
        "num_key_value_heads": sizes.num_heads,
        "max_position_embeddings": 16384,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **text_over,
    }


def _qwen_tokenizer():
    return build_tiny_tokenizer(
        _QWEN_SPECIAL, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def _qwen_text_kwargs(sizes: _Sizes, tokenizer, text_over: dict) -> dict:
    text = {**_text_kwargs(sizes, tokenizer, {}), "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    text.update(text_over)
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    text.setdefault(
        "rope_parameters", {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(head_dim)}
    )
    return text


def _qwen_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _qwen2_vl_config(sizes: _Sizes, tokenizer, overrides: dict):
    from transformers import Qwen2VLConfig

    text_over, vision_over, top = _split_overrides(overrides)
    text = _qwen_text_kwargs(sizes, tokenizer, text_over)
    vision = {
        "depth": sizes.vision_depth,
        "embed_dim": 32,
        "num_heads": 2,
        "mlp_ratio": 2,
        "hidden_size": text["hidden_size"],
        **vision_over,
    }
    return Qwen2VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tokenizer), **top)


def _qwen2_5_vl_config(sizes: _Sizes, tokenizer, overrides: dict):
    from transformers import Qwen2_5_VLConfig

    text_over, vision_over, top = _split_overrides(overrides)
    text = _qwen_text_kwargs(sizes, tokenizer, text_over)
    vision = {
        "depth": sizes.vision_depth,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": text["hidden_size"],
        "fullatt_block_indexes": [sizes.vision_depth - 1],
        **vision_over,
    }
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tokenizer), **top)


def _qwen_processor(config, tokenizer, sizes: _Sizes):
    """Qwen2VLProcessor with the PIL image processor; :class:`ProcessorParts` without torchvision."""
    from transformers import Qwen2VLImageProcessorPil

    vc = config.vision_config
    factor = vc.patch_size * vc.spatial_merge_size
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=factor * factor,
        max_pixels=sizes.image_size * sizes.image_size,
        patch_size=vc.patch_size,
        temporal_patch_size=vc.temporal_patch_size,
        merge_size=vc.spatial_merge_size,
    )
    processor_class = "Qwen2_5_VLProcessor" if config.model_type == "qwen2_5_vl" else "Qwen2VLProcessor"
    try:
        import transformers

        video_processor = transformers.Qwen2VLVideoProcessor(
            size={"shortest_edge": factor * factor, "longest_edge": sizes.image_size**2 * 2},
            patch_size=vc.patch_size,
            temporal_patch_size=vc.temporal_patch_size,
            merge_size=vc.spatial_merge_size,
        )
        cls = getattr(transformers, processor_class)
        return cls(image_processor, tokenizer, video_processor, chat_template=_QWEN_TEMPLATE)
    except ImportError:  # transformers 5.x: Qwen-VL processors need torchvision for video
        return ProcessorParts(image_processor, tokenizer, _QWEN_TEMPLATE, processor_class, config)


def _llava_tokenizer():
    return build_tiny_tokenizer(
        _LLAVA_SPECIAL, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _llava_config(sizes: _Sizes, tokenizer, overrides: dict):
    from transformers import LlavaConfig

    text_over, vision_over, top = _split_overrides(overrides)
    text = {"model_type": "llama", **_text_kwargs(sizes, tokenizer, text_over), "bos_token_id": tokenizer.bos_token_id}
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": sizes.vision_depth,
        "num_attention_heads": 2,
        "image_size": sizes.image_size,
        "patch_size": 14,
        "projection_dim": 32,
        **vision_over,
    }
    n_side = vision["image_size"] // vision["patch_size"]
    return LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=n_side * n_side,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
        **top,
    )


def _llava_processor(config, tokenizer, sizes: _Sizes):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    side = config.vision_config.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=_LLAVA_TEMPLATE,
    )


# -- LLaVA-NeXT-Video, LLaVA-OneVision, Qwen3-VL -------------------------------------------------

_LLAVA_VIDEO_TEMPLATE = _LLAVA_TEMPLATE.replace(
    "{% if c['type'] == 'image' %}<image>\n", "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'video' %}<video>\n"
)
_ONEVISION_TEMPLATE = _QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n").replace(
    "<|vision_start|><|video_pad|><|vision_end|>", "<video>\n"
)


def _saved(video_processor) -> dict:
    """A video processor's settings as its ``video_preprocessor_config.json`` holds them."""
    import json

    return json.loads(video_processor.to_json_string())


def _kv_heads(sizes: _Sizes) -> int:
    """Grouped-query attention in the tiny models of families that have it: half the heads."""
    return sizes.num_heads // 2 if sizes.num_heads % 2 == 0 else sizes.num_heads


def _torchvision() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def _llava_video_tokenizer():
    return build_tiny_tokenizer(
        _LLAVA_SPECIAL + ["<video>"], unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _clip_vision(sizes: _Sizes, vision_over: dict) -> dict:
    return {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": sizes.vision_depth, "num_attention_heads": 2, "image_size": sizes.image_size,
            "patch_size": 14, "projection_dim": 32, **vision_over}


def _llava_next_video_config(sizes: _Sizes, tokenizer, overrides: dict):
    from transformers import LlavaNextVideoConfig

    text_over, vision_over, top = _split_overrides(overrides)
    text = {"model_type": "llama", **_text_kwargs(sizes, tokenizer, {"num_key_value_heads": _kv_heads(sizes), **text_over}),
            "bos_token_id": tokenizer.bos_token_id}
    vision = _clip_vision(sizes, vision_over)
    side, n = vision["image_size"], vision["image_size"] // vision["patch_size"]
    if n % 2:
        raise ValueError(f"image_size {side} gives {n} patches per side; the video pooler (stride 2) and the "
                         "processor's token count agree only for an even number")
    ids = tokenizer.convert_tokens_to_ids
    return LlavaNextVideoConfig(
        text_config=text, vision_config=vision, image_token_index=ids("<image>"), video_token_index=ids("<video>"),
        vision_feature_select_strategy="default", vision_feature_layer=-2, spatial_pool_mode="average",
        spatial_pool_stride=2, image_seq_length=n * n, video_seq_length=(n // 2) ** 2,
        # the released checkpoint's pinpoints (336 px tiles), at this tower's side
        image_grid_pinpoints=[[side, 2 * side], [2 * side, side], [2 * side, 2 * side], [3 * side, side], [side, 3 * side]],
        pad_token_id=tokenizer.pad_token_id, **top,
    )


def _llava_next_video_video_processor(config, sizes: _Sizes):
    from transformers.models.llava_next_video.video_processing_llava_next_video import LlavaNextVideoVideoProcessor

    side = config.vision_config.image_size
    return LlavaNextVideoVideoProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def _llava_next_video_processor(config, tokenizer, sizes: _Sizes):
    """LlavaNextVideoProcessor with the PIL image processor; :class:`ProcessorParts` without torchvision."""
    from transformers import LlavaNextImageProcessorPil

    side = config.vision_config.image_size
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                                 image_grid_pinpoints=config.image_grid_pinpoints)
    kwargs = {"patch_size": config.vision_config.patch_size, "num_additional_image_tokens": 1,  # CLIP's class token
              "vision_feature_select_strategy": config.vision_feature_select_strategy}
    if not _torchvision():
        return ProcessorParts(image_processor, tokenizer, _LLAVA_VIDEO_TEMPLATE, "LlavaNextVideoProcessor", config,
                              _saved(_llava_next_video_video_processor(config, sizes)), kwargs)
    from transformers import LlavaNextVideoProcessor

    return LlavaNextVideoProcessor(video_processor=_llava_next_video_video_processor(config, sizes),
                                   image_processor=image_processor, tokenizer=tokenizer,
                                   chat_template=_LLAVA_VIDEO_TEMPLATE, **kwargs)


def _onevision_tokenizer():
    return build_tiny_tokenizer(
        _QWEN_SPECIAL + ["<image>", "<video>"], eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>"
    )


def _onevision_config(sizes: _Sizes, tokenizer, overrides: dict):
    from transformers import LlavaOnevisionConfig

    text_over, vision_over, top = _split_overrides(overrides)
    text = {"model_type": "qwen2", **_text_kwargs(sizes, tokenizer, {"num_key_value_heads": _kv_heads(sizes), **text_over}),
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": sizes.vision_depth, "num_attention_heads": 2, "image_size": sizes.image_size,
              "patch_size": 14, "vision_use_head": False, **vision_over}
    side = vision["image_size"]
    ids = tokenizer.convert_tokens_to_ids
    return LlavaOnevisionConfig(
        text_config=text, vision_config=vision, image_token_index=ids("<image>"), video_token_index=ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
        # the released checkpoint's pinpoints: 1..6 tiles per side, at this tower's side
        image_grid_pinpoints=[[side * i, side * j] for i in range(1, 7) for j in range(1, 7)],
        pad_token_id=tokenizer.pad_token_id, **top,
    )


def _onevision_video_processor(config, sizes: _Sizes):
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    side = config.vision_config.image_size
    return LlavaOnevisionVideoProcessor(size={"height": side, "width": side})


def _onevision_processor(config, tokenizer, sizes: _Sizes):
    """LlavaOnevisionProcessor with the PIL image processor; :class:`ProcessorParts` without torchvision."""
    from transformers import LlavaOnevisionImageProcessorPil

    side = config.vision_config.image_size
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": side, "width": side},
                                                      image_grid_pinpoints=config.image_grid_pinpoints)
    n = side // config.vision_config.patch_size
    kwargs = {"num_image_tokens": n * n, "vision_feature_select_strategy": config.vision_feature_select_strategy,
              "vision_aspect_ratio": config.vision_aspect_ratio}
    if not _torchvision():
        return ProcessorParts(image_processor, tokenizer, _ONEVISION_TEMPLATE, "LlavaOnevisionProcessor", config,
                              _saved(_onevision_video_processor(config, sizes)), kwargs)
    from transformers import LlavaOnevisionProcessor

    return LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   video_processor=_onevision_video_processor(config, sizes),
                                   chat_template=_ONEVISION_TEMPLATE, **kwargs)


def _qwen3_mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's interleaved (t, h, w) split of ``head_dim / 2`` rotary pairs, scaled from 24/20/20 of 64."""
    half = head_dim // 2
    hw = half * 20 // 64 or 1
    return [half - 2 * hw, hw, hw]


def _qwen3_vl_config(sizes: _Sizes, tokenizer, overrides: dict):
    from transformers import Qwen3VLConfig

    text_over, vision_over, top = _split_overrides(overrides)
    text = {**_text_kwargs(sizes, tokenizer, {}), "num_key_value_heads": _kv_heads(sizes),
            "head_dim": sizes.hidden_size // sizes.num_heads,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"), **text_over}
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 5e6, "mrope_interleaved": True,
                                        "mrope_section": _qwen3_mrope_section(text["head_dim"])})
    # DeepStack: features of the first vision layers go into the first LLM layers (not the last)
    deepstack = list(range(min(sizes.vision_depth, max(1, sizes.num_layers - 1))))
    vision = {"depth": sizes.vision_depth, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
              "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64,
              "out_hidden_size": text["hidden_size"], "deepstack_visual_indexes": deepstack, **vision_over}
    return Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tokenizer), **top)


def _qwen3_vl_moe_config(sizes: _Sizes, tokenizer, overrides: dict):
    """Qwen3-VL-MoE: the Qwen3-VL config with a mixture-of-experts MLP in every decoder layer."""
    from transformers import Qwen3VLMoeConfig

    dense = _qwen3_vl_config(sizes, tokenizer, overrides).to_dict()
    sub = {name: {k: v for k, v in dense[name].items() if k not in ("model_type", "architectures")}
           for name in ("text_config", "vision_config")}
    moe = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": sizes.hidden_size // 2,
           "decoder_sparse_step": 1}
    return Qwen3VLMoeConfig(text_config={**sub["text_config"], **moe}, vision_config=sub["vision_config"],
                            **_qwen_token_ids(tokenizer))


def _qwen3_vl_video_processor(config, sizes: _Sizes):
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    vc = config.vision_config
    factor = vc.patch_size * vc.spatial_merge_size
    return Qwen3VLVideoProcessor(size={"shortest_edge": factor * factor, "longest_edge": sizes.image_size**2 * 2},
                                 patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size,
                                 merge_size=vc.spatial_merge_size)


def _qwen3_vl_processor(config, tokenizer, sizes: _Sizes):
    """Qwen3VLProcessor with Qwen2-VL's PIL image processor (as the released checkpoints);
    :class:`ProcessorParts` without torchvision."""
    from transformers import Qwen2VLImageProcessorPil

    vc = config.vision_config
    factor = vc.patch_size * vc.spatial_merge_size
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=factor * factor, max_pixels=sizes.image_size * sizes.image_size, patch_size=vc.patch_size,
        temporal_patch_size=vc.temporal_patch_size, merge_size=vc.spatial_merge_size,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    if not _torchvision():
        return ProcessorParts(image_processor, tokenizer, _QWEN_TEMPLATE, "Qwen3VLProcessor", config,
                              _saved(_qwen3_vl_video_processor(config, sizes)))
    from transformers import Qwen3VLProcessor

    return Qwen3VLProcessor(image_processor, tokenizer, _qwen3_vl_video_processor(config, sizes),
                            chat_template=_QWEN_TEMPLATE)


@dataclass(frozen=True)
class _Family:
    tokenizer: Callable[[], Any]
    config: Callable[[_Sizes, Any, dict], Any]
    processor: Callable[[Any, Any, _Sizes], Any]


_FAMILIES: dict[str, _Family] = {
    "qwen2_vl": _Family(_qwen_tokenizer, _qwen2_vl_config, _qwen_processor),
    "qwen2_5_vl": _Family(_qwen_tokenizer, _qwen2_5_vl_config, _qwen_processor),
    "llava": _Family(_llava_tokenizer, _llava_config, _llava_processor),
    "llava_next_video": _Family(_llava_video_tokenizer, _llava_next_video_config, _llava_next_video_processor),
    "llava_onevision": _Family(_onevision_tokenizer, _onevision_config, _onevision_processor),
    "qwen3_vl": _Family(_qwen_tokenizer, _qwen3_vl_config, _qwen3_vl_processor),
    "qwen3_vl_moe": _Family(_qwen_tokenizer, _qwen3_vl_moe_config, _qwen3_vl_processor),
}
TINY_MODEL_TYPES = tuple(_FAMILIES)


def _family(model_type: str) -> _Family:
    if model_type not in _FAMILIES:
        raise ValueError(f"no tiny model for model_type={model_type!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[model_type]


def build_tiny_model(
    model_type: str,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    image_size: int = 224,
    vision_depth: int = 2,
    seed: int = 0,
    **overrides,
) -> tuple[Any, Any]:
    """A random-weight ``(model, processor)`` of family ``model_type``, in memory, in eval mode.

    ``image_size`` is the largest frame side the processor keeps (Qwen: max_pixels =
    image_size**2, so 224x224 gives 8x8 merged tokens; LLaVA: the CLIP input side).
    """
    from transformers import AutoModelForImageTextToText

    family = _family(model_type)
    sizes = _Sizes(hidden_size, num_layers, num_heads, image_size, vision_depth)
    tokenizer = family.tokenizer()
    config = family.config(sizes, tokenizer, overrides)
    processor = family.processor(config, tokenizer, sizes)
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    return model.eval(), processor


def save_tiny_model(
    model_type: str,
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    image_size: int = 224,
    vision_depth: int = 2,
    seed: int = 0,
    **overrides,
) -> Path:
    """Write a tiny checkpoint folder (config, safetensors weights, tokenizer, chat template,
    image processor) that loads offline; returns the folder."""
    model, processor = build_tiny_model(
        model_type,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        image_size=image_size,
        vision_depth=vision_depth,
        seed=seed,
        **overrides,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
