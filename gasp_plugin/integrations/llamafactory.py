"""GASP in hiyouga's LLaMA-Factory, SFT stage (``src/llamafactory/train/sft/workflow.py``).

The patch mixes :class:`GaspArguments` into LLaMA-Factory's ``FinetuningArguments`` (so
``gasp_geometry_data: /data/scenes`` works in its YAML configs and on its command line) and adds:

    model = load_model(...)
    gasp_handle = gasp.attach_model(model, model_args, data_args, finetuning_args)
    dataset_module, data_collator = gasp.interleave_data(dataset_module, data_collator, gasp_handle,
                                                         tokenizer_module["processor"], training_args,
                                                         finetuning_args)
    trainer = gasp.make_trainer(CustomSeq2SeqTrainer, gasp_handle, finetuning_args, model=model, ...)

The heads are attached to the model ``load_model`` returns (a ``PeftModel`` for LoRA/OFT, the
model itself for freeze/full tuning): a new submodule is trainable whatever freezing policy ran,
is not part of the adapter, and is saved by the GASP mixin as ``gasp_heads.safetensors``.
"""

from __future__ import annotations

from gasp_plugin.integrations.common import GaspArguments, attach, interleave, make_trainer

__all__ = ["GaspArguments", "check_arguments", "attach_model", "interleave_data", "make_trainer"]

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


def attach_model(model, model_args, data_args, finetuning_args):
    """Check the options (:func:`check_arguments`) and attach the heads; ``None`` when GASP is off."""
    check_arguments(model_args, data_args, finetuning_args)
    return attach(model, finetuning_args)


def interleave_data(dataset_module: dict, data_collator, handle, processor, training_args, finetuning_args):
    """``(dataset_module, data_collator)`` with the train dataset interleaved with geometry clips."""
    if handle is None:
        return dataset_module, data_collator
    if processor is None:
        raise ValueError("GASP needs the model's multimodal processor, but LLaMA-Factory loaded none: "
                         "is model_name_or_path a vision-language model?")
    dataset, collator = interleave(dataset_module["train_dataset"], data_collator, handle, processor,
                                   training_args, finetuning_args)
    return {**dataset_module, "train_dataset": dataset}, collator
