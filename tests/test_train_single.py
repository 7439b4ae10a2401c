"""In-process training pieces: non-finite losses skipped and counted, clear errors for bad recipes,
and a library call that leaves the process (environment, logging) as it found it."""

import contextlib
import logging
import os
from unittest import mock

import pytest
import torch

from gasp_plugin.recipe import load_recipe
from gasp_plugin.train.assemble import resolve_attention
from gasp_plugin.train.launch import setup_process, train

SMALL = [
    "training.max_steps=1", "model.tiny.hidden_size=64", "model.tiny.num_layers=2", "model.tiny.image_size=112",
    "gasp.embed_dim=16", "model.train_vision=false", "data.geometry.synthetic.count=1",
    "data.geometry.synthetic.config={height: 112, width: 112, num_frames: 12}",
    "data.geometry.min_frames=3", "data.geometry.max_frames=3", "data.instruct.synthetic.count=4",
]


@contextlib.contextmanager
def bare_root_logger():
    """The root logger without pytest's capture handlers (as in a plain process), restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        yield root
    finally:
        root.handlers, root.level = handlers, level


# what `gasp train` sets up for its process (setup_process); train() itself sets none of them
PROCESS_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT")


def test_train_in_process_leaves_environment_and_logging_alone(tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # the hub's offline mode was read at import
        monkeypatch.delenv(name, raising=False)
    env = dict(os.environ)
    with bare_root_logger() as root:
        level = root.level
        result = train("tiny_cpu", [f"training.output_dir={tmp_path}", *SMALL], progress=False)
        assert root.handlers == [] and root.level == level
    assert result.final_step == 1
    # (torch and deepspeed add variables of their own when first imported: not compared)
    assert {k: os.environ.get(k) for k in env} == env
    assert {k: os.environ.get(k) for k in PROCESS_VARS} == {k: env.get(k) for k in PROCESS_VARS}


def test_deepspeed_in_process_without_distributed_env_says_call_setup_process(tmp_path, monkeypatch):
    import gasp_plugin.train.assemble as assemble

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(assemble, "build_run", lambda *a, **k: pytest.fail("reached build_run"))
    env = dict(os.environ)
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE is not set.*setup_process\(deepspeed=True\)"):
        train("tiny_cpu", [f"training.output_dir={tmp_path}", "training.deepspeed=ds_zero2.json"])
    assert dict(os.environ) == env


def test_setup_process_sets_what_the_command_line_needs():
    before = dict(os.environ)
    with mock.patch.dict(os.environ), bare_root_logger() as root:  # both restored after
        for name in PROCESS_VARS:
            os.environ.pop(name, None)
        setup_process(local_rank=1)
        assert len(root.handlers) == 1 and root.level == logging.INFO
        assert (os.environ["HF_HUB_OFFLINE"], os.environ["TRANSFORMERS_OFFLINE"], os.environ["LOCAL_RANK"]) == ("1", "1", "1")
        assert "WORLD_SIZE" not in os.environ
        setup_process(deepspeed=True)
        assert len(root.handlers) == 1
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_ADDR"]) == ("0", "1", "127.0.0.1")
        assert int(os.environ["MASTER_PORT"]) > 0
    assert dict(os.environ) == before


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
