"""GASP in hiyouga's LLaMA-Factory, SFT stage (``patches/llamafactory-gasp.patch``).

The patch mixes :class:`GaspArguments` into LLaMA-Factory's ``FinetuningArguments`` when
gasp-plugin is installed (so ``gasp_geometry_data: /data/scenes`` works in its YAML configs and on
its command line) and, only when ``gasp_geometry_data`` is set, calls:

    # hparams/parser.py, get_train_args: before any model loads
    gasp.check_arguments(model_args, data_args, finetuning_args)
    # train/sft/workflow.py, run_sft
    gasp_handle = gasp.attach_model(model, model_args, data_args, finetuning_args)
    dataset_module, data_collator = gasp.interleave_data(dataset_module, data_collator, gasp_handle,
                                                         processor, model_args, data_args, training_args,
                                                         finetuning_args)
    trainer = gasp.trainer_class(CustomSeq2SeqTrainer)(..., **gasp.trainer_kwargs(gasp_handle, finetuning_args))

What the glue decides, and why:

- **Stage.** Only ``stage: sft`` runs GASP; any other stage with ``gasp_geometry_data`` is an error
  (it would otherwise be silently ignored).
- **Checkpointing.** LLaMA-Factory defaults to ``use_reentrant_gc: true``. On transformers releases
  that checkpoint a decoder layer's whole call, re-entrant checkpointing leaves the captured hidden
  states without a graph (GASP would train only its heads), so GASP sets it to false, with a log
  line; non-re-entrant checkpointing keeps the graph on every release.
- **Budgets.** Geometry frames go through a copy of the processor limited to LLaMA-Factory's own
  ``image_min_pixels`` / ``image_max_pixels`` (the instruction data's processor is left as it
  is), and a geometry clip holds at most ``cutoff_len`` tokens unless ``gasp_max_tokens`` says
  otherwise (longer clips lose frames or are refused, counted).
- **Trainer.** :class:`gasp_plugin.GaspTrainerMixin` is mixed into ``CustomSeq2SeqTrainer`` and
  delegates to it, so its loss types (DFT / ASFT / EAFT) and optimizers (LoRA+, GaLore, APOLLO,
  Adam-mini, Muon) keep working; the heads are attached to the model ``load_model`` returns (a
  ``PeftModel`` for LoRA/OFT), made trainable with ``handle.ensure_trainable()``, and saved beside
  the adapter as ``gasp_heads.safetensors``.
"""

from __future__ import annotations

import logging

from gasp_plugin.integrations.common import GaspArguments, attach, framework_budgets, interleave, trainer_class

__all__ = ["GaspArguments", "check_arguments", "attach_model", "interleave_data", "trainer_class", "trainer_kwargs"]

logger = logging.getLogger("gasp_plugin.integrations")

# FinetuningArguments options whose optimizer does not step an extra parameter group: BAdam switches
# the trainable block itself, layer-wise GaLore / APOLLO step per-parameter optimizers from hooks
# and hand the Trainer a dummy one. Everything else (its loss types, LoRA+, GaLore, APOLLO,
# Adam-mini, Muon) composes: GaspTrainerMixin delegates compute_loss and create_optimizer to
# LLaMA-Factory's trainer and adds the heads' group to the optimizer it built.
_NO_EXTRA_GROUP = ("use_badam", "galore_layerwise", "apollo_layerwise")


def check_arguments(model_args, data_args, finetuning_args) -> None:
    """Reject settings GASP cannot train with, naming the option and the fix."""
    finetuning_args.validate_gasp()
    if not finetuning_args.gasp_enabled:
        return
    if finetuning_args.stage != "sft":
        raise ValueError(f"gasp_geometry_data is supported in stage: sft only; got stage: {finetuning_args.stage}")
    if getattr(data_args, "streaming", False):
        raise ValueError("gasp_geometry_data needs a map-style dataset: set streaming: false")
    on = [name for name in _NO_EXTRA_GROUP if getattr(finetuning_args, name, False)]
    if on:
        raise ValueError(f"{', '.join(on)} cannot be combined with gasp_geometry_data: that optimizer never steps "
                         "the GASP heads' parameter group; turn it off or use plain GaLore/APOLLO/LoRA+")
    if getattr(model_args, "use_unsloth", False) or getattr(model_args, "use_kt", False):
        raise ValueError("gasp_geometry_data supports the transformers model path only: set use_unsloth: false "
                         "and use_kt: false")
    if getattr(model_args, "use_reentrant_gc", False):
        model_args.use_reentrant_gc = False
        logger.info("GASP: use_reentrant_gc set to false (re-entrant checkpointing can cut the LLM off the GASP loss)")


def attach_model(model, model_args, data_args, finetuning_args):
    """Check the options (:func:`check_arguments`) and attach the heads; ``None`` when GASP is off."""
    check_arguments(model_args, data_args, finetuning_args)
    return attach(model, finetuning_args)


def interleave_data(dataset_module: dict, data_collator, handle, processor, model_args, data_args, training_args,
                    finetuning_args):
    """``(dataset_module, data_collator)`` with the train dataset interleaved with geometry clips,
    at LLaMA-Factory's pixel budget and ``cutoff_len`` (see the module docstring)."""
    if handle is None:
        return dataset_module, data_collator
    if processor is None:
        raise ValueError("GASP needs the model's multimodal processor, but LLaMA-Factory loaded none: "
                         "is model_name_or_path a vision-language model?")
    geometry_processor = framework_budgets(
        processor, handle, finetuning_args, min_pixels=getattr(model_args, "image_min_pixels", None),
        max_pixels=getattr(model_args, "image_max_pixels", None), max_length=getattr(data_args, "cutoff_len", None))
    dataset, collator = interleave(dataset_module["train_dataset"], data_collator, handle, geometry_processor,
                                   training_args, finetuning_args)
    return {**dataset_module, "train_dataset": dataset}, collator


def trainer_kwargs(handle, finetuning_args) -> dict:
    """The GASP keyword arguments of the trainer class :func:`trainer_class` returns."""
    return {"gasp_handle": handle, "head_lr_scale": finetuning_args.gasp_head_lr_scale}
