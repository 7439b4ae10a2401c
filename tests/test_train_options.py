"""Training options: model.train_vision (vision encoder and projector train in full), the loss read-out."""

import pytest

from gasp_plugin.core.attach import attach_gasp
from gasp_plugin.core.config import GaspConfig
from gasp_plugin.models.registry import get_adapter
from gasp_plugin.models.tiny import build_tiny_model
from gasp_plugin.train.assemble import apply_lora
from gasp_plugin.recipe import load_recipe


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model_type", ["qwen2_vl", "llava"])
@pytest.mark.parametrize("lora", [True, False])
def test_train_vision(model_type, lora):
    model, _ = build_tiny_model(model_type)
    adapter = get_adapter(model)
    vision = {n for n, _ in adapter.vision_parameters(model)}
    handle = attach_gasp(model, GaspConfig(embed_dim=8))
    recipe = load_recipe("tiny_cpu", [f"lora.enabled={str(lora).lower()}", "model.train_vision=true"])
    wrapped = apply_lora(model, recipe, handle, adapter)
    trainable = _trainable(wrapped)
    if lora:  # PEFT trains a full copy of each vision module (modules_to_save) beside the LoRA weights
        assert any(".visual." in n or ".vision_tower." in n for n in trainable if "modules_to_save" in n)
        assert all("lora_" in n or "modules_to_save" in n or "gasp_heads" in n for n in trainable)
    else:
        assert vision <= trainable
        assert all(n in vision or "language_model" in n or "gasp_heads" in n for n in trainable)


def test_vision_frozen_by_default():
    model, _ = build_tiny_model("qwen2_vl")
    adapter = get_adapter(model)
    handle = attach_gasp(model, GaspConfig(embed_dim=8))
    wrapped = apply_lora(model, load_recipe("tiny_cpu", ["lora.enabled=false", "model.train_vision=false"]),
                         handle, adapter)
    assert not any(n in _trainable(wrapped) for n, _ in adapter.vision_parameters(wrapped))


def test_train_vision_must_be_bool():
    with pytest.raises(Exception, match="train_vision"):
        load_recipe("tiny_cpu", ["model.train_vision=maybe"])


def test_loss_readout_line():
    from gasp_plugin.train.progress import format_readout

    line = format_readout(100, {"loss": 1.9612, "lm": 3.3, "corr": 1.225, "depth": 0.03706, "qk": 1.281,
                                "corr/layer_0": 1.27, "learning_rate": 7.553e-4, "skipped_samples": 0.0})
    assert line == "step 100  loss 1.961  lm 3.3  corr 1.225  depth 0.03706  qk 1.281  lr 0.0007553"
    assert "skipped 2" in format_readout(5, {"loss": 1.0, "skipped_samples": 2.0})


class _Clips:
    """A sampler over one real synthetic clip whose even indices have every track hidden."""

    def __init__(self, clip, tracks):
        self.clip, self.tracks = clip, tracks

    def sample(self, index):
        import dataclasses

        import torch

        if index % 2:
            return self.clip, self.tracks
        return self.clip, dataclasses.replace(self.tracks, visible=torch.zeros_like(self.tracks.visible))


def test_clip_without_visible_tracks_is_skipped_and_counted():
    from gasp_plugin.data import load_clip
    from gasp_plugin.data.instruct import BadSample
    from gasp_plugin.data.synthetic import SyntheticSceneConfig, make_synthetic_scene
    from gasp_plugin.geometry.tracks import tracks_for_clip
    from gasp_plugin.train.assemble import geometry_examples
    from gasp_plugin.train.interleave import GEOMETRY, INSTRUCT, InterleavedDataset, InterleavePlan

    model, processor = build_tiny_model("qwen2_vl", image_size=112)
    scene = make_synthetic_scene(SyntheticSceneConfig(height=112, width=112, num_frames=4), seed=3)
    clip = load_clip(scene, [0, 1, 2], anchor_row=0)
    source = geometry_examples(_Clips(clip, tracks_for_clip(clip, grid=4, keep=1.0)), processor, get_adapter(model))
    assert source(1)["gasp_targets"].num_visible > 0
    with pytest.raises(BadSample, match=r"frames \[0, 1, 2\]: no visible tracks"):
        source(0)
    plan = InterleavePlan(seed=0, geometry_ratio=1.0, world_size=1, batch_size=1, num_steps=4)
    ds = InterleavedDataset(plan, {GEOMETRY: source, INSTRUCT: lambda i: {}})
    items = [ds[i] for i in range(len(ds))]
    assert all(it["sample"]["gasp_targets"].num_visible > 0 for it in items)  # never used
    skipped = sum(it["skipped"] for it in items)
    assert skipped >= 1 and all("no visible tracks" in r for it in items for r in it["reasons"])
