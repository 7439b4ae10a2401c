"""``GaspTrainer``: the Hugging Face Trainer with GASP terms, head learning rate and head saving.

:class:`GaspTrainerMixin` *delegates*, as TRL's trainers do, so whatever the Trainer it is mixed
into does (its loss types, metrics, optimizer choices such as LoRA+ or GaLore, upstream patches
of ``create_optimizer``) still happens:

- ``compute_loss``: instruction steps call ``super().compute_loss(...)`` (with the caller's
  ``return_outputs``) and add a zero-weighted touch of the heads (every rank runs the same
  modules each step, which ZeRO-3 needs); geometry steps run the same parent call when the batch has ``labels`` and otherwise run
  the forward alone (there is no LM target), then add the GASP terms.
- ``create_optimizer``: ``super().create_optimizer()`` with the heads hidden from it, then one
  more parameter group for the heads at ``learning_rate * head_lr_scale``.

Batch metadata (:data:`gasp_plugin.train.interleave.META_KEYS` and the GASP targets) comes from
:class:`gasp_plugin.train.interleave.InterleavedCollator` and is popped before the parent sees the
batch. ``model_accepts_loss_kwargs`` is set False: the LM loss and the GASP terms are both
per-micro-batch means, and the Trainer divides each by the accumulation steps. Where the Trainer
does not divide (a ``compute_loss_func``, e.g. ms-swift's ``--loss_type``, normalises the LM loss
over the accumulated batch), the GASP terms are divided by the accumulation steps here instead.

Logging: ``lm``, ``corr``, ``depth`` and per-layer terms are accumulated as detached tensors on
the device and reduced across ranks only at logging steps (no extra synchronisation per step).

Non-finite losses: if only the GASP part is NaN/inf the step keeps the parent's LM loss (heads
touched with weight 0); if a rank has no finite loss left, *every* rank replaces its loss by a
zero-weighted touch of every trainable parameter (ranks agree through one all-reduce of a flag),
so the micro-batch contributes a zero gradient to every parameter and no rank waits in a
gradient collective the others skipped. Counted as ``skipped_nonfinite`` (on the rank that saw
it) and ``skipped_for_other_rank``; excluded from the logged losses.

Saving: the model is saved the way the stock Trainer saves it (a PEFT adapter, or full weights),
minus the heads, so plain transformers/PEFT load it with no gasp code; the heads go to
``gasp_heads.safetensors`` (keys relative to the heads module) beside it. Under ZeRO-3 the state
dict the Trainer gathers is split, so both are written once, by the main process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import torch
from transformers import Trainer

from gasp_plugin.constants import HEADS_FILE, TARGETS_KEY
from gasp_plugin.core.loss import connected_zero
from gasp_plugin.train.interleave import GEOMETRY, META_KEYS

__all__ = ["GaspTrainerMixin", "GaspTrainer", "HEADS_FILE", "split_head_state"]

_logger = logging.getLogger("gasp_plugin.train")


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


@contextlib.contextmanager
def _hidden_from_optimizer(params):
    """``requires_grad`` off for ``params`` inside the block (so a parent's optimizer skips them)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


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
        gasp_handle.ensure_trainable()  # whatever froze the model after attach_gasp froze the heads too
        self.head_lr_scale = float(head_lr_scale)
        self.trace_dir = trace_dir
        self.model_accepts_loss_kwargs = False  # LM loss is a per-batch mean, like the GASP terms
        self.gasp_counters: Counter = Counter()
        self.clip_stats: Counter = Counter()  # geometry clips of this rank: tokens, pairs, cut, refused
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: Counter = Counter()

    # ---- loss ----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        meta = {k: inputs.pop(k) for k in (*META_KEYS, TARGETS_KEY) if k in inputs}
        self._count_batch(meta)
        geometry = meta.get("gasp_kind") == GEOMETRY
        if geometry and "labels" not in inputs:
            lm, outputs = None, model(**inputs)  # no LM target: the parent's loss has nothing to compute
        else:  # outputs only when our caller wants them (TRL builds them with an extra forward)
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
            lm, outputs = result if return_outputs else (result, None)
        gasp_out = None
        if geometry:
            gasp_out = self.gasp_handle.compute_loss(meta[TARGETS_KEY].to(self.args.device))
            extra = gasp_out.total * self._gasp_scale(num_items_in_batch)
        else:
            extra = self.gasp_handle.zero_loss()
        loss, lm_ok, gasp_ok = self._finite_loss(lm, extra)
        self._record(lm if lm_ok else None, gasp_out if gasp_ok else None)
        if loss is None:
            loss = self._skip_loss(model)
        return (loss, outputs) if return_outputs else loss

    def _gasp_scale(self, num_items_in_batch) -> float:
        """1, or ``1 / accumulation steps`` where the Trainer will not divide the loss by them
        itself: a loss already normalised over the accumulated batch (by ``num_items_in_batch`` in
        the model, or a ``compute_loss_func`` such as ms-swift's ``--loss_type``). The GASP terms
        are per-micro-batch means, so either way they contribute their mean over the micro-batches
        (the condition is transformers' own, ``Trainer.training_step``)."""
        explicit = getattr(self, "loss_is_scaled_for_ga", None)
        if explicit is None:
            explicit = ((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                        or getattr(self, "compute_loss_func", None) is not None)
        if not explicit:
            return 1.0
        return 1.0 / getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)

    def _finite_loss(self, lm, extra):
        """``(loss, lm_ok, gasp_ok)``: ``lm + extra`` if finite; ``lm + heads*0`` if only this rank's
        GASP part is not (its LM loss is); ``(None, False, False)`` (the step is skipped) when any
        rank's step has no finite loss left.

        Ranks agree on a skip (one all-reduce of two flags per step under more than one process,
        with the step's one host sync): a skipped step backpropagates a zero through every
        trainable parameter directly, not through the model, so under ZeRO every rank must take
        that same path or their gradient collectives no longer line up.
        """
        lm_value = lm if lm is not None else torch.zeros((), device=extra.device)
        total = lm_value.float() + extra.float()
        step_bad = ~torch.isfinite(lm if lm is not None else total)  # no finite loss at all on this rank
        flags = torch.stack([step_bad, ~torch.isfinite(total)]).float()
        local_step_bad, local_bad = (bool(v) for v in flags.tolist())
        any_step_bad = local_step_bad
        if self.args.world_size > 1 and torch.distributed.is_initialized():
            reduced = flags[:1].clone()
            torch.distributed.all_reduce(reduced, op=torch.distributed.ReduceOp.MAX)
            any_step_bad = bool(reduced.item())
        if local_bad:
            self.gasp_counters["skipped_nonfinite"] += 1
        if any_step_bad:
            if not local_step_bad:
                self.gasp_counters["skipped_for_other_rank"] += 1
            return None, False, False
        if not local_bad:
            return total, lm is not None, True
        return lm.float() + self.gasp_handle.zero_loss().float(), True, False

    def _skip_loss(self, model) -> torch.Tensor:
        return connected_zero(*(p for p in model.parameters() if p.requires_grad))

    def _count_batch(self, meta: dict) -> None:
        kind = meta.get("gasp_kind", "instruct")
        self.gasp_counters[f"{kind}_batches"] += 1
        self.gasp_counters["skipped_samples"] += int(meta.get("gasp_skipped", 0))
        self.clip_stats["refused_token_budget"] += sum(
            r.startswith("token budget") for r in meta.get("gasp_skip_reasons") or [])
        for item in meta.get("gasp_trace") or []:
            if "tokens" in item:
                self.clip_stats["clips"] += 1
                self.clip_stats["tokens"] += item["tokens"]
                self.clip_stats["tokens_max"] = max(self.clip_stats["tokens_max"], item["tokens"])
                self.clip_stats["pairs"] += item.get("pairs", 0)
                self.clip_stats["cut"] += item["frames"] < item["drawn_frames"]
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
            values.update(gasp_out.terms())
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] += 1

    # ---- logging -------------------------------------------------------------------------------

    def clip_summary(self) -> str:
        """One line on this rank's geometry clips: tokens per clip (mean, max), supervised pairs
        per clip, clips cut to the token budget and clips refused by it."""
        c = self.clip_stats
        if not c["clips"]:
            return f"GASP geometry clips: none trained on (refused by the token budget: {c['refused_token_budget']})"
        return (f"GASP geometry clips (this rank): {c['clips']}, tokens per clip mean {c['tokens'] / c['clips']:.0f} "
                f"max {c['tokens_max']}, supervised pairs per clip {c['pairs'] / c['clips']:.0f}; cut to the token "
                f"budget: {c['cut']}, refused by it: {c['refused_token_budget']}")

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        _logger.info(self.clip_summary())
        return result

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
        """The parent's optimizer (its class, groups and patches) over everything but the heads,
        plus a heads group at ``learning_rate * head_lr_scale``."""
        if self.optimizer is not None:
            return self.optimizer
        heads = self.gasp_handle.trainable_parameters()
        if not any(p.requires_grad for p in heads):
            raise ValueError("no trainable GASP head parameters: PEFT or a freezing policy froze them; call "
                             "handle.ensure_trainable() after wrapping the model")
        with _hidden_from_optimizer(heads):
            optimizer = super().create_optimizer(*(() if model is None else (model,)))
        in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if any(id(p) in in_groups for p in heads):
            raise RuntimeError("the parent create_optimizer put the GASP heads in its own groups")
        optimizer.add_param_group({"params": heads, "lr": self.args.learning_rate * self.head_lr_scale,
                                   "weight_decay": self.args.weight_decay})
        self.optimizer = optimizer
        return optimizer

    # ---- saving / loading ----------------------------------------------------------------------

    def _heads_prefix(self) -> str:
        return _module_prefix(self.model, self.gasp_handle.heads)

    def save_model(self, output_dir=None, _internal_call=False):
        """The Trainer's save, with the heads gathered first on every rank (a collective under
        ZeRO-3), so they are written even when the state dict the Trainer saves holds none
        (ZeRO-3 with ``stage3_gather_16bit_weights_on_model_save: false`` saves an empty one)."""
        from gasp_plugin.core.head import gathered_params

        heads = self.gasp_handle.heads
        with gathered_params(heads.parameters()):
            self._gathered_heads = {k: v.detach().cpu().clone() for k, v in heads.state_dict().items()}
        try:
            return super().save_model(output_dir, _internal_call)
        finally:
            self._gathered_heads = None

    def _save(self, output_dir=None, state_dict=None):
        from gasp_plugin.core.attach import write_heads_file

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.model.state_dict()
        model_state, heads = split_head_state(state_dict, self._heads_prefix())
        super()._save(output_dir, state_dict=model_state)
        if self.args.should_save:
            heads = heads or getattr(self, "_gathered_heads", None)
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
