"""GASP in QwenLM's ``qwen-vl-finetune`` (``qwenvl/train/train_qwen.py``); see ``patches/README.md``.

The patch adds :class:`GaspArguments` to the script's ``HfArgumentParser`` when gasp-plugin is
installed and, only when ``--gasp_geometry_data`` is given, these calls:

    gasp.check_arguments(gasp_args, data_args, training_args)
    gasp_handle = gasp.attach(model, gasp_args)            # after loading, before LoRA/freezing
    ...
    gasp_handle.ensure_trainable()                          # after get_peft_model / set_model
    data_module = gasp.wrap_data_module(data_module, processor, gasp_handle, data_args, training_args, gasp_args)
    trainer = gasp.trainer_class(Trainer)(..., **gasp.trainer_kwargs(gasp_handle, gasp_args))

Budgets: geometry frames go through a copy of the processor limited to the script's own
``--min_pixels`` / ``--max_pixels`` (applied in the form the installed transformers reads, so the
flags hold for GASP whatever the script's data pipeline does with them), and a geometry clip holds
at most ``--model_max_length`` tokens unless ``--gasp_max_tokens`` says otherwise.

The script's own ``safe_save_model_for_hf_trainer`` goes through ``trainer._save``, which the
GASP mixin overrides: the model or adapter is written without the heads, the heads beside it.
``--mm_projector_lr`` / ``--vision_tower_lr`` keep working: the script replaces
``Trainer.create_optimizer`` to build those groups, and the mixin delegates to it and only adds
the heads' group.

Checked by hand against transformers 5.4 - 5.16: the repository's ``trainer.py`` imports
``apply_multimodal_rotary_pos_emb``, which transformers removed in 5.17.
"""

from __future__ import annotations

from gasp_plugin.integrations.common import (GaspArguments, attach, framework_budgets, interleave, make_trainer,
                                             trainer_class, unfreeze_heads)

__all__ = ["GaspArguments", "check_arguments", "attach", "unfreeze_heads", "wrap_data_module", "trainer_class",
           "trainer_kwargs", "make_trainer"]


def check_arguments(gasp_args: GaspArguments, data_args, training_args) -> None:
    """Reject settings GASP cannot train with, naming the flag and the fix."""
    gasp_args.validate_gasp()
    if not gasp_args.gasp_enabled:
        return
    for flag in ("data_flatten", "data_packing"):
        if getattr(data_args, flag, False):
            raise ValueError(
                f"--{flag} True cannot be combined with --gasp_geometry_data: it replaces the attention "
                "with a varlen kernel that reads cu_seqlens from attention_mask, while GASP geometry "
                f"batches are padded batches with an ordinary mask. Pass --{flag} False.")


def wrap_data_module(data_module: dict, processor, handle, data_args, training_args, gasp_args: GaspArguments) -> dict:
    """``make_supervised_data_module``'s dict with the train dataset and collator interleaved, the
    geometry clips at the script's pixel budget and ``model_max_length`` (module docstring)."""
    if handle is None:
        return data_module
    geometry_processor = framework_budgets(
        processor, handle, gasp_args, min_pixels=getattr(data_args, "min_pixels", None),
        max_pixels=getattr(data_args, "max_pixels", None), max_length=getattr(training_args, "model_max_length", None))
    dataset, collator = interleave(data_module["train_dataset"], data_module["data_collator"], handle,
                                   geometry_processor, training_args, gasp_args)
    return {**data_module, "train_dataset": dataset, "data_collator": collator}


def trainer_kwargs(handle, gasp_args: GaspArguments) -> dict:
    """The GASP keyword arguments of the trainer class :func:`trainer_class` returns."""
    return {"gasp_handle": handle, "head_lr_scale": gasp_args.gasp_head_lr_scale}
