"""GASP in QwenLM's ``qwen-vl-finetune`` (``qwenvl/train/train_qwen.py``); see ``patches/README.md``.

The patch adds :class:`GaspArguments` to the script's ``HfArgumentParser`` and these calls:

    model_args, data_args, training_args, gasp_args = parser.parse_args_into_dataclasses()
    gasp.check_arguments(gasp_args, data_args, training_args)
    gasp_handle = gasp.attach(model, gasp_args)            # after loading, before LoRA/freezing
    ...
    gasp.unfreeze_heads(gasp_handle)                        # after get_peft_model / set_model
    data_module = gasp.wrap_data_module(data_module, processor, gasp_handle, training_args, gasp_args)
    trainer = gasp.make_trainer(Trainer, gasp_handle, gasp_args, model=model, ...)

The script's own ``safe_save_model_for_hf_trainer`` goes through ``trainer._save``, which the
GASP mixin overrides: the model or adapter is written without the heads, the heads beside it.
``--mm_projector_lr`` / ``--vision_tower_lr`` keep working: the script replaces
``Trainer.create_optimizer`` to build those groups, and the mixin delegates to it and only adds
the heads' group.
"""

from __future__ import annotations

from gasp_plugin.integrations.common import GaspArguments, attach, interleave, make_trainer, unfreeze_heads

__all__ = ["GaspArguments", "check_arguments", "attach", "unfreeze_heads", "wrap_data_module", "make_trainer"]


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


def wrap_data_module(data_module: dict, processor, handle, training_args, gasp_args: GaspArguments) -> dict:
    """``make_supervised_data_module``'s dict with the train dataset and collator interleaved."""
    if handle is None:
        return data_module
    dataset, collator = interleave(data_module["train_dataset"], data_module["data_collator"], handle,
                                   processor, training_args, gasp_args)
    return {**data_module, "train_dataset": dataset, "data_collator": collator}
