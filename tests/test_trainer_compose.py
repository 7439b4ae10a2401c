"""GaspTrainerMixin delegates to the Trainer it is mixed into (as TRL's trainers do): a parent that
changes the loss, a ``compute_loss_func`` and a parent that patches ``create_optimizer`` all keep
working, and GASP only adds its terms and the heads' parameter group."""

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments

from gasp_plugin.core.attach import attach_gasp
from gasp_plugin.core.config import GaspConfig
from gasp_plugin.core.targets import GaspTargets
from gasp_plugin.integrations.common import trainer_class
from gasp_plugin.models.registry import get_adapter
from gasp_plugin.models.tiny import build_tiny_model

LR, SCALE = 1e-3, 4.0


class TripledLoss(Trainer):
    """A parent that changes the loss (like a framework's own loss type) and counts its calls."""

    calls = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        TripledLoss.calls += 1
        return (3.0 * loss, outputs) if return_outputs else 3.0 * loss


class PatchedOptimizer(Trainer):
    """A parent whose create_optimizer builds its own optimizer (like LoRA+ or a repository patch)."""

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.SGD([{"params": params, "tag": "upstream"}], lr=self.args.learning_rate)
        return super().create_optimizer(model)


@pytest.fixture()
def setup(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, processor = build_tiny_model("qwen2_vl", image_size=112, num_layers=2)
    handle = attach_gasp(model, GaspConfig(embed_dim=16))
    model = get_peft_model(model, LoraConfig(r=4, target_modules=r".*language_model\.layers\.\d+\.self_attn\.q_proj"))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=LR, report_to="none", use_cpu=True,
                             disable_tqdm=True)
    return model, processor, handle, args


def _batches(model, processor):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    adapter = get_adapter(model)
    inputs = adapter.build_frame_inputs(processor, frames)
    pos = adapter.frame_token_positions(inputs)
    n, gen = pos.shape[-1], torch.Generator().manual_seed(0)
    targets = GaspTargets(pos, torch.tensor([0]), torch.randint(0, n, (1, 5), generator=gen), torch.tensor([[1, 2]]),
                          torch.randint(0, n, (1, 2, 5), generator=gen), torch.ones(1, 2, 5, dtype=torch.bool),
                          torch.rand(1, 2, 5, generator=gen) + 1, torch.rand(1, 2, n, generator=gen) + 1)
    ids = processor.tokenizer("How many chairs are there? Two.", return_tensors="pt")["input_ids"]
    instruct = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
                "gasp_kind": "instruct", "gasp_skipped": 0}
    geometry = {**inputs, "gasp_targets": targets, "gasp_kind": "geometry", "gasp_skipped": 0}
    return instruct, geometry


def test_compute_loss_delegates_to_a_parent_that_changes_the_loss(setup):
    model, processor, handle, args = setup
    trainer = trainer_class(TripledLoss)(model=model, args=args, gasp_handle=handle, head_lr_scale=SCALE)
    instruct, geometry = _batches(model, processor)
    model.train()
    with torch.no_grad():
        lm = model(**{k: v for k, v in instruct.items() if not k.startswith("gasp_")}).loss
    TripledLoss.calls = 0
    loss = trainer.compute_loss(model, dict(instruct))
    assert TripledLoss.calls == 1
    torch.testing.assert_close(loss.detach(), 3.0 * lm)
    # a geometry batch has no LM target: the forward runs alone and the loss is the GASP total
    loss = trainer.compute_loss(model, dict(geometry))
    assert TripledLoss.calls == 1
    model(**{k: v for k, v in geometry.items() if not k.startswith("gasp_")})
    with torch.no_grad():
        expected = handle.compute_loss(geometry["gasp_targets"]).total
    torch.testing.assert_close(loss.detach(), expected)
    # with labels, the parent's (tripled) LM loss plus the GASP terms
    labelled = {**geometry, "labels": geometry["input_ids"].clone()}
    loss = trainer.compute_loss(model, dict(labelled))
    assert TripledLoss.calls == 2
    logged = trainer._reduced_means()
    assert {"lm", "corr", "depth", "corr/layer_0", "depth/layer_1"} <= set(logged)


def test_compute_loss_func_is_kept(setup):
    model, processor, handle, args = setup
    seen = []

    def halved(outputs, labels, num_items_in_batch=None):
        seen.append(labels.shape)
        return 0.5 * outputs.loss if outputs.loss is not None else outputs.logits.sum() * 0

    trainer = trainer_class(Trainer)(model=model, args=args, gasp_handle=handle, compute_loss_func=halved)
    instruct, _ = _batches(model, processor)
    model.train()
    loss = trainer.compute_loss(model, dict(instruct))
    assert seen and torch.isfinite(loss)


@pytest.mark.parametrize("loss_func,explicit,expected", [
    (None, None, 1.0),  # the Trainer divides the summed loss by the accumulation steps itself
    ("halved", None, 1 / 4),  # it does not (compute_loss_func): the GASP terms are divided here
    (None, True, 1 / 4), ("halved", False, 1.0),  # a framework's explicit loss_is_scaled_for_ga wins
])
def test_gasp_terms_stay_a_mean_over_accumulated_micro_batches(setup, tmp_path, loss_func, explicit, expected):
    model, processor, handle, _ = setup
    args = TrainingArguments(output_dir=str(tmp_path), gradient_accumulation_steps=4, report_to="none",
                             use_cpu=True, disable_tqdm=True)
    func = (lambda outputs, labels, num_items_in_batch=None: outputs.loss) if loss_func else None
    trainer = trainer_class(Trainer)(model=model, args=args, gasp_handle=handle, compute_loss_func=func)
    if explicit is not None:
        trainer.loss_is_scaled_for_ga = explicit
    assert trainer._gasp_scale(num_items_in_batch=None) == pytest.approx(expected)
    _, geometry = _batches(model, processor)
    model.train()
    loss = trainer.compute_loss(model, dict(geometry))  # no labels: the loss is the GASP total alone
    model(**{k: v for k, v in geometry.items() if not k.startswith("gasp_")})
    with torch.no_grad():
        total = handle.compute_loss(geometry["gasp_targets"]).total
    torch.testing.assert_close(loss.detach(), expected * total)
    assert trainer._reduced_means()["corr"] > 0  # logged unscaled


def test_create_optimizer_delegates_and_adds_the_heads_group(setup):
    model, processor, handle, args = setup
    trainer = trainer_class(PatchedOptimizer)(model=model, args=args, gasp_handle=handle, head_lr_scale=SCALE)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)  # the parent's optimizer, not ours
    upstream, heads = optimizer.param_groups
    head_ids = {id(p) for p in handle.heads.parameters()}
    assert upstream["tag"] == "upstream" and not head_ids & {id(p) for p in upstream["params"]}
    assert {id(p) for p in heads["params"]} == head_ids and heads["lr"] == pytest.approx(LR * SCALE)
    assert all(p.requires_grad for p in handle.heads.parameters())  # hidden only while the parent built


def test_default_optimizer_groups(setup):
    model, processor, handle, args = setup
    trainer = trainer_class(Trainer)(model=model, args=args, gasp_handle=handle, head_lr_scale=SCALE)
    groups = trainer.create_optimizer().param_groups
    assert groups[-1]["lr"] == pytest.approx(LR * SCALE) and all(g["lr"] == pytest.approx(LR) for g in groups[:-1])
    in_model_groups = {id(p) for g in groups[:-1] for p in g["params"]}
    assert in_model_groups and not in_model_groups & {id(p) for p in handle.heads.parameters()}
    lora = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    assert lora == in_model_groups


def test_clip_summary_counts_tokens_cuts_and_refusals(setup):
    model, processor, handle, args = setup
    trainer = trainer_class(Trainer)(model=model, args=args, gasp_handle=handle)
    assert "none trained on" in trainer.clip_summary()
    trace = [{"tokens": 100, "frames": 3, "drawn_frames": 5, "pairs": 10},
             {"tokens": 300, "frames": 4, "drawn_frames": 4, "pairs": 30}]
    trainer._count_batch({"gasp_kind": "geometry", "gasp_trace": trace, "gasp_skipped": 1,
                          "gasp_skip_reasons": ["token budget: clip 'x' ...", "no visible tracks"]})
    assert trainer.clip_summary() == ("GASP geometry clips (this rank): 2, tokens per clip mean 200 max 300, "
                                      "supervised pairs per clip 20; cut to the token budget: 1, refused by it: 1")
