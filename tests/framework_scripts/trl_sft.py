"""A TRL user's GASP run: ``GaspSFTTrainer.train()`` on a tiny Qwen2-VL saved to disk, LoRA via PEFT.

Run by tests/test_framework_trl.py inside the TRL venv (tests/frameworks.py), one run per process,
alone or under ``torchrun --nproc_per_node 2`` with ``--deepspeed``. Writes ``result.json`` in
``--out`` (rank 0): the log history, the GASP counters, which LoRA tensors of the LLM moved, the
files saved, and the largest logit difference between the trained model and the saved adapter
loaded with plain transformers + PEFT. Which LoRA tensors of the LLM moved is recorded over the
steps before the first instruction batch, so it is what the GASP loss alone moved.

    python trl_sft.py --model /tmp/tiny-qwen2-vl --scene .../hololens-000 --out /tmp/run --ratio 1.0
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

LLM_LORA = "language_model.layers."  # LoRA tensors of the LLM (not of the vision tower)
ANSWERS = ["The chair is left of the table.", "Two.", "About two metres.", "The lamp is behind the sofa."]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="tiny Qwen2-VL folder (save_tiny_model)")
    p.add_argument("--scene", required=True, help="posed RGB-D scene folder")
    p.add_argument("--out", required=True)
    p.add_argument("--ratio", type=float, default=0.5, help="geometry ratio")
    p.add_argument("--max-steps", type=int, default=4)
    p.add_argument("--samples", type=int, default=8, help="instruction samples")
    p.add_argument("--checkpointing", choices=["default", "reentrant", "off"], default="default",
                   help="default: SFTConfig's (on, transformers' default kind)")
    p.add_argument("--target-modules", default="all-linear",
                   help='LoRA targets: "all-linear" (the heads must be left alone) or comma-separated names')
    p.add_argument("--deepspeed", default=None, help="DeepSpeed json (run under torchrun)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--preflight", action="store_true",
                   help="first check what GaspSFTTrainer refuses (packing, padding_free, a tokenizer-only processor)")
    return p.parse_args()


def conversations(n: int, seed: int):
    """``n`` one-image conversations (TRL's conversational vision format: messages + images)."""
    from datasets import Dataset
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
        rows.append({"images": [image], "messages": [
            {"role": "user", "content": f"Question {i}: where is the chair?"},
            {"role": "assistant", "content": ANSWERS[i % len(ANSWERS)]},
        ]})
    return Dataset.from_list(rows)


def gathered(params):
    """Whole values of ``params`` inside the block: under DeepSpeed ZeRO-3 each rank holds a shard,
    so every rank must enter (a collective); otherwise nothing to do."""
    import contextlib

    params = list(params)
    if not any(hasattr(p, "ds_id") for p in params):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def llm_lora(model) -> dict[str, torch.Tensor]:
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n and LLM_LORA in n]
    with gathered(p for _, p in named):
        return {n: p.detach().float().clone() for n, p in named}


def heads_state(trainer) -> dict[str, torch.Tensor]:
    heads = trainer.gasp_handle.heads
    with gathered(heads.parameters()):
        return {k: v.detach().cpu().clone() for k, v in heads.state_dict().items()}


class LoraWatch:
    """Which LLM LoRA tensors moved while every step so far was a geometry step (the GASP loss alone)."""

    def __init__(self, trainer):
        self.trainer, self.before, self.moved, self.steps = trainer, {}, [], 0

    def callback(self):
        from transformers import TrainerCallback

        watch = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                watch.before = llm_lora(watch.trainer.model)

            def on_step_end(self, args, state, control, **kwargs):
                if watch.trainer.gasp_counters["instruct_batches"] == 0:
                    now = llm_lora(watch.trainer.model)
                    watch.moved = sorted(n for n in watch.before if not torch.equal(watch.before[n], now[n]))
                    watch.steps = state.global_step

        return Callback()


def probe_batch(processor):
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(99).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    messages = [[{"role": "user", "content": [{"type": "image", "image": image},
                                              {"type": "text", "text": "Where is the chair?"}]}]]
    return dict(processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                              add_generation_prompt=True))


def preflight(model_dir: str, sft_kwargs: dict, dataset, gasp) -> dict:
    """What GaspSFTTrainer refuses, and that a refused construction leaves the model without heads."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    from gasp_plugin.constants import HEADS_ATTR
    from gasp_plugin.integrations.trl import GaspArguments, GaspSFTTrainer, make_sft_trainer

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    found = {}
    cases = {"packing": ({"packing": True}, processor), "padding_free": ({"padding_free": True}, processor),
             "tokenizer_only": ({}, processor.tokenizer)}
    for name, (extra, processing) in cases.items():
        try:
            GaspSFTTrainer(model=model, args=SFTConfig(**sft_kwargs, **extra), train_dataset=dataset,
                           processing_class=processing, gasp_args=gasp)
            found[name] = None
        except ValueError as err:
            found[name] = str(err)
        found[f"{name}_left_heads"] = hasattr(model, HEADS_ATTR)
    off = make_sft_trainer(GaspArguments(), model=model, args=SFTConfig(**sft_kwargs), train_dataset=dataset,
                           processing_class=processor)
    found["off_is_plain_sft"] = type(off) is SFTTrainer
    return found


def main() -> None:
    a = parse()
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig

    from gasp_plugin.constants import HEADS_FILE
    from gasp_plugin.integrations.trl import GaspArguments, GaspSFTTrainer

    start = time.monotonic()
    out = Path(a.out)
    model = AutoModelForImageTextToText.from_pretrained(a.model)
    processor = AutoProcessor.from_pretrained(a.model)
    targets = a.target_modules if a.target_modules == "all-linear" else a.target_modules.split(",")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
    checkpointing = {"default": {}, "off": {"activation_checkpointing": False},
                     "reentrant": {"activation_checkpointing_kwargs": {"use_reentrant": True}}}[a.checkpointing]
    sft = dict(output_dir=str(out), max_steps=a.max_steps, per_device_train_batch_size=2, learning_rate=1e-2,
               logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=a.seed,
               disable_tqdm=True, deepspeed=a.deepspeed)
    gasp = GaspArguments(gasp_geometry_data=a.scene, gasp_ratio=a.ratio, gasp_min_frames=2, gasp_max_frames=3,
                         gasp_window=3, gasp_grid="6", gasp_keep=1.0, gasp_embed_dim=16)
    dataset = conversations(a.samples, a.seed)
    refused = preflight(a.model, sft, dataset, gasp) if a.preflight else {}
    trainer = GaspSFTTrainer(model=model, args=SFTConfig(**sft, **checkpointing), train_dataset=dataset,
                             processing_class=processor, peft_config=lora, gasp_args=gasp)
    heads_before = heads_state(trainer)
    watch = LoraWatch(trainer)
    trainer.add_callback(watch.callback())
    built = time.monotonic()
    trainer.train()
    trained = time.monotonic()
    trainer.save_model(str(out))
    batch = probe_batch(processor)
    with torch.no_grad():  # every rank: under ZeRO-3 the forward gathers each layer's shards
        expected = trainer.model.eval()(**batch).logits
    heads_after = heads_state(trainer)
    if not trainer.is_world_process_zero():
        return

    from safetensors.torch import load_file

    adapter = load_file(str(out / "adapter_model.safetensors"))
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()  # the plain load below is one process's, not a ZeRO-3 partitioned one
    with torch.no_grad():
        plain = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(a.model), str(out)).eval()
        got = plain(**batch).logits
    result = {
        "log_history": trainer.state.log_history,
        "counters": dict(trainer.gasp_counters),
        "global_step": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        "deepspeed_zero_stage": (trainer.accelerator.state.deepspeed_plugin.zero_stage
                                 if trainer.is_deepspeed_enabled else None),
        "gasp_max_tokens": trainer.gasp_args.gasp_max_tokens,
        "refused": refused,
        "checkpointing": {"on": bool(trainer.model.get_base_model().is_activation_checkpointing),
                          "kwargs": trainer.args.activation_checkpointing_kwargs},  # what the Trainer reads
        "llm_lora_tensors": len(watch.before),
        "geometry_prefix_steps": watch.steps,  # optimizer steps before the first instruction batch
        "llm_lora_moved_by_gasp_alone": watch.moved,
        "heads_moved": any(not torch.equal(heads_before[k], heads_after[k]) for k in heads_before),
        "heads_shapes_equal": all(heads_before[k].shape == heads_after[k].shape for k in heads_before),
        "heads_file": (out / HEADS_FILE).is_file(),
        "heads_keys": sorted(load_file(str(out / HEADS_FILE))) if (out / HEADS_FILE).is_file() else [],
        "adapter_gasp_keys": sorted(k for k in adapter if "gasp" in k),
        "adapter_lora_keys": sum("lora_" in k for k in adapter),
        "max_logit_diff": float((got - expected).abs().max()),
        "clip_summary": trainer.clip_summary(),
        "seconds": {"build": round(built - start, 1), "train": round(trained - built, 1),
                    "check": round(time.monotonic() - trained, 1)},
    }
    (out / "result.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
