"""GASP in the training frameworks people already run.

The logic lives here, tested with the rest of the package; a framework meets it through a patch
(``patches/``), a plugin file or a trainer class:

- :mod:`gasp_plugin.integrations.common`: :class:`GaspArguments` (the ``--gasp_*`` arguments),
  attaching the heads, interleaving a framework's own dataset and collator with GASP geometry
  clips, and its trainer class with :class:`gasp_plugin.GaspTrainerMixin` mixed in.
- :mod:`gasp_plugin.integrations.llamafactory`: hiyouga's LLaMA-Factory, SFT stage (a patch).
- :mod:`gasp_plugin.integrations.qwen_vl_finetune`: QwenLM's ``qwen-vl-finetune`` (a patch).
- :mod:`gasp_plugin.integrations.trl`: ``GaspSFTTrainer`` for TRL's ``SFTTrainer``.

Importing this package is cheap: torch, transformers and the frameworks load only when used.
"""

__all__ = ["common", "llamafactory", "qwen_vl_finetune", "trl"]
