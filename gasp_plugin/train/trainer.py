"""``GaspTrainer``: the Hugging Face Trainer with GASP terms, head learning rate and head saving.

``compute_loss`` = the model's LM loss + the GASP terms on geometry steps; on instruction steps the
heads get a zero-weighted term (every rank runs the same modules each step, which ZeRO-3 needs).
Batch metadata (``gasp_kind``, ``gasp_targets``, skip counts, trace) comes from
:class:`gasp_plugin.train.interleave.InterleavedCollator` and is popped before the forward pass.

Logging: ``lm``, ``corr``, ``depth`` and per-layer terms are accumulated as detached tensors on
the device and reduced across ranks only at logging steps (no extra synchronisation per step).

Non-finite losses: if only the GASP part is NaN/inf the step keeps the model's LM loss (heads touched
with weight 0); if there is no finite LM loss, the loss is replaced by a zero-weighted touch of every
trainable parameter, so that micro-batch contributes a zero gradient to every parameter. Both are counted
(``skipped_nonfinite``) and excluded from the logged losses.

Saving: the model is saved the way the stock Trainer saves it (a PEFT adapter, or full weights),
minus the heads, so plain transformers/PEFT load it with no gasp code; the heads go to
``gasp_heads.safetensors`` (keys relative to the heads module) beside it. Under ZeRO-3 the state
dict the Trainer gathers is split, so both are written once, by the main process.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import torch
from transformers import Trainer

from gasp_plugin.train.interleave import GEOMETRY

__all__ = ["GaspTrainerMixin", "GaspTrainer", "HEADS_FILE", "split_head_state"]

HEADS_FILE = "gasp_heads.safetensors"
_META_KEYS = ("gasp_kind", "gasp_skipped", "gasp_skip_reasons", "gasp_trace", "gasp_targets")


def split_head_state(state: dict, prefix: str) -> tuple[dict, dict]:
    """``(model_state_without_heads, head_state)``; head keys lose ``prefix`` (``'...gasp_heads.'``)."""
    model_state, heads = {}, {}
    for key, value in state.items():
        if key.startswith(prefix):
            heads[key[len(prefix):]] = value
        else:
            model_state[key] = value
    return model_state, heads


def _module_prefix(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, sub in model.named_modules():
        if sub is module:
            return f"{name}." if name else ""
    raise ValueError("the GASP heads are not a submodule of the trained model")


def _zero_touch(params) -> torch.Tensor:
    """A zero that depends on every parameter (gradient 0 for each)."""
    return sum((p.sum() * 0.0 for p in params), torch.zeros(()))


class GaspTrainerMixin:
    """Mix into a ``transformers.Trainer`` subclass: ``class MyTrainer(GaspTrainerMixin, Trainer)``.

    Args (keyword, besides the Trainer's):
        gasp_handle: the handle :func:`gasp_plugin.core.attach.attach_gasp` returned.
        head_lr_scale: heads train at ``learning_rate * head_lr_scale`` (paper: 4).
        trace_dir: if set, each rank appends what it trained on to ``data_trace_rank{r}.jsonl``.
    """

    def __init__(self, *args, gasp_handle=None, head_lr_scale: float = 4.0, trace_dir: str | None = None, **kwargs):
        if gasp_handle is None:
            raise ValueError("GaspTrainer needs gasp_handle=attach_gasp(model, config)")
        super().__init__(*args, **kwargs)
        self.gasp_handle = gasp_handle
        self.head_lr_scale = float(head_lr_scale)
        self.trace_dir = trace_dir
        self.model_accepts_loss_kwargs = False  # LM loss is a per-batch mean, like the GASP terms
        self.gasp_counters: Counter = Counter()
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: Counter = Counter()

    # ---- loss ----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        meta = {k: inputs.pop(k) for k in _META_KEYS if k in inputs}
        self._count_batch(meta)
        outputs = model(**inputs)
        lm = outputs.loss if getattr(outputs, "loss", None) is not None else None
        gasp_out = None
        if meta.get("gasp_kind") == GEOMETRY:
            gasp_out = self.gasp_handle.compute_loss(meta["gasp_targets"].to(self.args.device))
            extra = gasp_out.total
        else:
            extra = self.gasp_handle.zero_loss()
        loss, lm_ok, gasp_ok = self._finite_loss(lm, extra)
        self._record(lm if lm_ok else None, gasp_out if gasp_ok else None)
        if loss is None:
            loss = self._skip_loss(model)
        return (loss, outputs) if return_outputs else loss

    def _finite_loss(self, lm, extra):
        """``(loss, lm_ok, gasp_ok)``: ``lm + extra`` if finite (one host sync per step); else
        ``lm + heads*0`` if only the GASP part is not; else ``(None, False, False)``."""
        lm_value = lm if lm is not None else torch.zeros((), device=extra.device)
        total = lm_value.float() + extra.float()
        if bool(torch.isfinite(total)):
            return total, lm is not None, True
        self.gasp_counters["skipped_nonfinite"] += 1
        if lm is not None and bool(torch.isfinite(lm)):
            return lm.float() + self.gasp_handle.zero_loss().float(), True, False
        return None, False, False

    def _skip_loss(self, model) -> torch.Tensor:
        params = [p for p in model.parameters() if p.requires_grad]
        return _zero_touch(params).to(self.args.device)

    def _count_batch(self, meta: dict) -> None:
        kind = meta.get("gasp_kind", "instruct")
        self.gasp_counters[f"{kind}_batches"] += 1
        self.gasp_counters["skipped_samples"] += int(meta.get("gasp_skipped", 0))
        if self.trace_dir and meta.get("gasp_trace") is not None:
            rank = self.args.process_index
            path = Path(self.trace_dir) / f"data_trace_rank{rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                for item in meta["gasp_trace"]:
                    f.write(json.dumps({"global_step": self.state.global_step, **item}) + "\n")

    def _record(self, lm, gasp_out) -> None:
        """Accumulate the finite parts of this step (``None`` = nothing to record) for logging."""
        values = {}
        if lm is not None:
            values["lm"] = lm.detach().float()
        if gasp_out is not None:
            values["corr"] = gasp_out.corr.detach().float()
            values["depth"] = gasp_out.depth.detach().float()
            if gasp_out.qk is not None:
                values["qk"] = gasp_out.qk.detach().float()
            for layer, parts in gasp_out.per_layer.items():
                for term, value in parts.items():
                    values[f"{term}/layer_{layer}"] = value.detach().float()
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] += 1

    # ---- logging -------------------------------------------------------------------------------

    def log(self, logs: dict, start_time=None) -> None:
        if self._sums or self._counts or self.args.world_size > 1:
            logs.update(self._reduced_means())
        logs.update({k: float(v) for k, v in self.gasp_counters.items()})
        super().log(logs, start_time)

    def _reduced_means(self) -> dict:
        """Means since the last log, summed over ranks (one all-reduce, at logging steps only)."""
        keys = sorted(self._counts)
        if self.args.world_size > 1:
            keys = self._all_keys(keys)
        if not keys:
            return {}
        device = self.args.device
        sums = torch.stack([torch.as_tensor(self._sums.get(k, 0.0), device=device).float() for k in keys])
        counts = torch.tensor([float(self._counts.get(k, 0)) for k in keys], device=device)
        packed = torch.cat([sums, counts])
        if self.args.world_size > 1:
            torch.distributed.all_reduce(packed)
        sums, counts = packed[: len(keys)], packed[len(keys):]
        self._sums, self._counts = {}, Counter()
        return {k: round(float(s / c), 6) for k, s, c in zip(keys, sums.tolist(), counts.tolist()) if c > 0}

    def _all_keys(self, keys: list[str]) -> list[str]:
        gathered = [None] * self.args.world_size
        torch.distributed.all_gather_object(gathered, keys)
        return sorted({k for ks in gathered for k in ks})

    def _get_train_sampler(self, train_dataset=None):
        # InterleavedDataset indices encode (step, rank, sample): they must be read in order
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    # ---- optimizer -----------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        head_ids = {id(p) for p in self.gasp_handle.heads.parameters()}
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = {"heads": [], "decay": [], "no_decay": []}
        for name, p in opt_model.named_parameters():
            if not p.requires_grad:
                continue
            key = "heads" if id(p) in head_ids else "decay" if name in decay else "no_decay"
            groups[key].append(p)
        if not groups["heads"]:
            raise ValueError("no trainable GASP head parameters: were the heads frozen (e.g. by PEFT)?")
        lr, wd = self.args.learning_rate, self.args.weight_decay
        # the model's groups first: the Trainer logs the first group's learning rate
        param_groups = [
            {"params": groups["decay"], "weight_decay": wd},
            {"params": groups["no_decay"], "weight_decay": 0.0},
            {"params": groups["heads"], "lr": lr * self.head_lr_scale, "weight_decay": wd},
        ]
        param_groups = [g for g in param_groups if g["params"]]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # ---- saving / loading ----------------------------------------------------------------------

    def _heads_prefix(self) -> str:
        return _module_prefix(self.model, self.gasp_handle.heads)

    def _save(self, output_dir=None, state_dict=None):
        from gasp_plugin.core.attach import write_heads_file

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.model.state_dict()
        model_state, heads = split_head_state(state_dict, self._heads_prefix())
        super()._save(output_dir, state_dict=model_state)
        if self.args.should_save:
            if not heads:
                raise RuntimeError("the state dict to save has no GASP head weights")
            write_heads_file(heads, self.gasp_handle.heads, os.path.join(output_dir, HEADS_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.is_deepspeed_enabled:
            return  # the DeepSpeed engine checkpoint holds the heads with the rest of the module
        from safetensors.torch import load_file

        path = os.path.join(resume_from_checkpoint, HEADS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: cannot resume the GASP heads from this checkpoint")
        self.gasp_handle.heads.load_state_dict(load_file(path))


class GaspTrainer(GaspTrainerMixin, Trainer):
    """``transformers.Trainer`` with GASP; see :class:`GaspTrainerMixin` and the module docstring."""

    pass
