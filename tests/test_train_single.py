"""In-process training pieces: non-finite losses skipped and counted, clear errors for bad recipes."""

import pytest
import torch

from gasp_plugin.recipe import load_recipe
from gasp_plugin.train.assemble import resolve_attention
from gasp_plugin.train.launch import train


def test_model_path_not_local_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"not a local checkpoint folder.*model.path=DIR.*tiny_cpu"):
        train("qwen2vl_gasp", ["model.path=Qwen/Qwen2.5-VL-7B-Instruct", "training.deepspeed=null",
                               f"training.output_dir={tmp_path}"])


def test_attention_falls_back_to_sdpa_without_flash_attn():
    expected = "flash_attention_2" if torch.cuda.is_available() else "sdpa"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        expected = "sdpa"
    assert resolve_attention("flash_attention_2") == expected
    assert resolve_attention("eager") == "eager"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from gasp_plugin.train.assemble import build_run

    out = tmp_path_factory.mktemp("single")
    recipe = load_recipe("tiny_cpu", [
        f"training.output_dir={out}", "training.max_steps=4", "training.weight_decay=0.0",
        "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "lora.enabled=true", "lora.r=4", "gasp.embed_dim=16",
        "model.train_vision=false", "model.tiny.image_size=112",
        "data.geometry.synthetic.count=1", "data.geometry.synthetic.config={height: 112, width: 112, num_frames: 12}",
        "data.geometry.min_frames=3", "data.geometry.max_frames=3", "data.instruct.synthetic.count=4",
        "data.geometry_ratio=1.0",
    ])
    return build_run(recipe, deepspeed_json=None, progress=False)


def _geometry_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["gasp_kind"] == "geometry"
    return batch


def test_nan_model_loss_contributes_no_gradient_and_is_counted(run):
    trainer = run.trainer
    model = trainer.model
    batch = _geometry_batch(trainer)
    batch["pixel_values"] = torch.full_like(batch["pixel_values"], float("nan"))
    model.zero_grad()
    before = trainer.gasp_counters["skipped_nonfinite"]
    loss = trainer.compute_loss(model, dict(batch))
    assert torch.isfinite(loss) and float(loss.detach()) == 0.0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    assert trainer.gasp_counters["skipped_nonfinite"] == before + 1


def test_nan_gasp_term_is_dropped_heads_still_touched(run):
    trainer = run.trainer
    model = trainer.model
    batch = _geometry_batch(trainer)
    t = batch["gasp_targets"]
    t.token_depth[...] = float("inf")  # poisons the depth term only
    batch["labels"] = batch["input_ids"].clone()  # a finite LM loss to keep
    model.zero_grad()
    before = trainer.gasp_counters["skipped_nonfinite"]
    loss = trainer.compute_loss(model, dict(batch))
    assert torch.isfinite(loss)
    loss.backward()
    head_grads = [p.grad for p in trainer.gasp_handle.heads.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and torch.count_nonzero(g) == 0 for g in head_grads)
    lora = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(torch.isfinite(g).all() for g in lora) and any(torch.count_nonzero(g) for g in lora)
    assert trainer.gasp_counters["skipped_nonfinite"] == before + 1


def test_head_param_group_has_scaled_lr(run):
    trainer = run.trainer
    opt = trainer.create_optimizer()
    head_ids = {id(p) for p in trainer.gasp_handle.heads.parameters()}
    groups = [g for g in opt.param_groups if any(id(p) in head_ids for p in g["params"])]
    assert len(groups) == 1 and all(id(p) in head_ids for p in groups[0]["params"])
    assert groups[0]["lr"] == pytest.approx(trainer.args.learning_rate * 4.0)
    others = [g for g in opt.param_groups if g is not groups[0]]
    assert others and all(g.get("lr", trainer.args.learning_rate) == trainer.args.learning_rate for g in others)
