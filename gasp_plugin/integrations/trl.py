"""GASP in TRL's ``SFTTrainer`` (checked with trl 1.16, transformers 5.24, peft 0.21).

``GaspSFTTrainer`` is ``trl.SFTTrainer`` with :class:`gasp_plugin.GaspTrainerMixin` mixed in
first. It takes SFTTrainer's own arguments plus ``gasp_args`` (:class:`GaspArguments`, the
``--gasp_*`` options) and keeps everything SFTTrainer does on instruction steps: its dataset
preparation, its vision-language collator, its loss (``nll`` / ``dft``), its metrics
(``mean_token_accuracy``, ``entropy``, ``num_tokens``) and its PEFT wrapping::

    from gasp_plugin.integrations.trl import GaspArguments, GaspSFTTrainer

    model = AutoModelForImageTextToText.from_pretrained(path)
    trainer = GaspSFTTrainer(model=model, args=SFTConfig(...), train_dataset=dataset,
                             processing_class=AutoProcessor.from_pretrained(path),
                             peft_config=LoraConfig(...),
                             gasp_args=GaspArguments(gasp_geometry_data="/data/scenes"))
    trainer.train()          # logs corr / depth on geometry steps, mean_token_accuracy on the others
    trainer.save_model()     # adapter (plain PEFT loads it) + gasp_heads.safetensors

:func:`make_sft_trainer` builds a plain ``SFTTrainer`` when GASP is off. The constructor:

1. refuses SFTConfig settings geometry steps cannot train with (:func:`check_sft_config`);
2. attaches the heads to the model (before SFTTrainer wraps it with PEFT; ``exclude_modules`` of
   a PEFT config that has none is set so that e.g. ``target_modules="all-linear"`` leaves the
   heads alone, and a config that still reaches them is refused);
3. runs ``SFTTrainer.__init__`` unchanged (it accepts only a ``datasets`` dataset, so interleaving
   comes after it); the mixin makes the heads trainable again after PEFT froze them;
4. interleaves SFTTrainer's prepared train dataset and its collator with geometry clips
   (:func:`gasp_plugin.integrations.common.interleave`: ``max_steps`` from the epochs when
   unset, ``remove_unused_columns=False``). The geometry token budget is ``--gasp_max_tokens``,
   else SFTConfig's ``max_length``: a clip is cut to the frames that fit, or refused and counted.

Activation checkpointing: SFTConfig turns it on by default. The capture reads each supervised
layer from hooks on the layer itself, outside transformers' checkpoint, so both kinds train the LLM
(transformers 5.x defaults to non-reentrant; PEFT with ZeRO-3 makes TRL ask for re-entrant).
Should something else cut the graph, the first geometry step raises
:class:`gasp_plugin.core.attach.GaspGradientError` rather than training the heads alone.

Importing this module does not import trl: ``GaspSFTTrainer`` is built on first access.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

from gasp_plugin.constants import HEADS_ATTR
from gasp_plugin.integrations.common import GaspArguments, attach, interleave, with_length_budget

__all__ = ["GaspArguments", "GaspSFTTrainer", "check_sft_config", "gasp_sft_trainer_class", "make_sft_trainer"]

logger = logging.getLogger("gasp_plugin.integrations")

#: PEFT ``exclude_modules`` (a full-match regex) that keeps LoRA out of the heads
HEADS_EXCLUDE = rf"(.*\.)?{HEADS_ATTR}(\..*)?"

# SFTConfig options whose batches are not the padded batches geometry steps are: both put several
# samples in one row with per-batch position_ids / cu_seq_lens for a varlen (flash-attention)
# kernel. TRL refuses both for image datasets itself; with a text-only instruction dataset the two
# kinds of step would need two attention paths, which nothing here checks (no flash-attention on CPU)
_REFUSED = {
    "packing": "packs several samples into one row",
    "padding_free": "flattens the batch into one row without padding",
}


def check_sft_config(args, gasp_args: GaspArguments) -> None:
    """Raise ValueError naming the SFTConfig option GASP cannot train with, and the fix."""
    gasp_args.validate_gasp()
    if not gasp_args.gasp_enabled or args is None:
        return
    for name, what in _REFUSED.items():
        if getattr(args, name, False):
            raise ValueError(
                f"SFTConfig({name}=True) cannot be combined with gasp_geometry_data: it {what} for a "
                "varlen (flash-attention) kernel, while GASP geometry steps are padded multi-frame batches "
                f"whose visual tokens are located by row. Set {name}=False.")


def make_sft_trainer(gasp_args: GaspArguments, /, **kwargs):
    """``GaspSFTTrainer(gasp_args=gasp_args, **kwargs)``; a plain ``trl.SFTTrainer(**kwargs)``
    when GASP is off (``gasp_geometry_data`` unset)."""
    gasp_args.validate_gasp()
    if not gasp_args.gasp_enabled:
        from trl import SFTTrainer

        return SFTTrainer(**kwargs)
    return gasp_sft_trainer_class()(gasp_args=gasp_args, **kwargs)


def __getattr__(name):
    if name == "GaspSFTTrainer":
        return gasp_sft_trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _exclude_heads(peft_config):
    """``peft_config`` with ``exclude_modules`` set to the heads when it has none (a copy)."""
    if peft_config is None or not hasattr(peft_config, "exclude_modules") or peft_config.exclude_modules:
        return peft_config
    return dataclasses.replace(peft_config, exclude_modules=HEADS_EXCLUDE)


def _restore_exclude(model, user_peft) -> None:
    """Put the user's ``exclude_modules`` back into the wrapped model's PEFT config once the adapter
    is injected, so the saved ``adapter_config.json`` does not name modules a plain model lacks."""
    if user_peft is None or not hasattr(user_peft, "exclude_modules"):
        return
    for config in (getattr(model, "peft_config", None) or {}).values():
        if getattr(config, "exclude_modules", None) == HEADS_EXCLUDE:
            config.exclude_modules = user_peft.exclude_modules


def _check_heads_not_adapted(handle, peft_config) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [name for name, module in handle.heads_module.named_modules() if isinstance(module, BaseTunerLayer)]
    if adapted:
        raise ValueError(
            f"the PEFT config adapts {len(adapted)} layers of the GASP heads ({HEADS_ATTR}.{adapted[0]}, ...): "
            f"target_modules={getattr(peft_config, 'target_modules', None)!r}, exclude_modules="
            f"{getattr(peft_config, 'exclude_modules', None)!r}. The heads train and save on their own; add "
            f"{HEADS_EXCLUDE!r} to exclude_modules or name the LLM's modules in target_modules.")


def _length_budget(gasp_args: GaspArguments, args) -> GaspArguments:
    """``gasp_args`` with ``gasp_max_tokens`` = ``SFTConfig max_length`` when only the latter is set."""
    return with_length_budget(gasp_args, getattr(args, "max_length", None), "SFTConfig max_length")


@functools.cache
def gasp_sft_trainer_class() -> type:
    """``GaspSFTTrainer``: ``trl.SFTTrainer`` with GASP (imports trl; built once per process)."""
    from trl import SFTTrainer

    from gasp_plugin.train.trainer import GaspTrainerMixin

    class GaspSFTTrainer(GaspTrainerMixin, SFTTrainer):
        """``trl.SFTTrainer`` with GASP; see :mod:`gasp_plugin.integrations.trl`.

        Args (besides SFTTrainer's):
            gasp_args: the :class:`GaspArguments`; ``gasp_geometry_data`` must be set.
            trace_dir: if set, each rank appends what it trained on to ``data_trace_rank{r}.jsonl``.
        """

        def __init__(self, model, args=None, *more, gasp_args: GaspArguments | None = None,
                     trace_dir: str | None = None, **kwargs):
            if gasp_args is None or not gasp_args.gasp_enabled:
                raise ValueError("GaspSFTTrainer needs gasp_args=GaspArguments(gasp_geometry_data=...); without "
                                 "GASP use trl.SFTTrainer (make_sft_trainer chooses for you)")
            if isinstance(model, str):
                raise ValueError("GaspSFTTrainer needs the model itself (the heads attach before PEFT wraps it): "
                                 "load it with AutoModelForImageTextToText.from_pretrained(...) first")
            check_sft_config(args, gasp_args)
            user_peft = kwargs.get("peft_config")
            if user_peft is not None:
                kwargs["peft_config"] = _exclude_heads(user_peft)
            handle = attach(model, gasp_args)
            try:
                super().__init__(model, args, *more, gasp_handle=handle, head_lr_scale=gasp_args.gasp_head_lr_scale,
                                 trace_dir=trace_dir, **kwargs)
                check_sft_config(self.args, gasp_args)  # as SFTTrainer resolved it
                _check_heads_not_adapted(handle, kwargs.get("peft_config"))
                _restore_exclude(self.model, user_peft)
                self._check_parallelism()
                processor = self.processing_class
                if not hasattr(processor, "image_processor"):
                    raise ValueError(f"GASP needs the model's multimodal processor as processing_class (it builds the "
                                     f"geometry clips' image inputs); got {type(processor).__name__}")
                self.gasp_args = _length_budget(gasp_args, self.args)
                self.train_dataset, self.data_collator = interleave(
                    self.train_dataset, self.data_collator, handle, processor, self.args, self.gasp_args)
            except BaseException:
                handle.detach()  # heads and hooks come off the caller's model again
                raise

        def _check_parallelism(self) -> None:
            config = getattr(self.accelerator, "parallelism_config", None)
            for flag, name in (("cp_enabled", "context"), ("sp_enabled", "sequence")):
                if config is not None and getattr(config, flag, False):
                    raise ValueError(f"{name} parallelism shards each sequence across ranks, so no rank sees a geometry "
                                     f"clip's visual tokens whole: turn it off to train with gasp_geometry_data")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False  # as SFTTrainer does for its own batches; geometry ones reach model() directly
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    GaspSFTTrainer.__module__ = __name__
    return GaspSFTTrainer

