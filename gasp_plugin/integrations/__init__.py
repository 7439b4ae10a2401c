"""Glue that the patches in ``patches/`` call to wire GASP into existing training repositories.

Each patch adds a handful of lines to its repository; the logic lives here so that it is tested
with the rest of the package and a user's checkout only has to ``git apply`` the patch:

- :mod:`gasp_plugin.integrations.common`: :class:`GaspArguments` (the ``--gasp_*`` command-line
  arguments), attaching the heads, interleaving a repository's own dataset and collator with
  GASP geometry clips, and the trainer class with :class:`gasp_plugin.GaspTrainerMixin` mixed in.
- :mod:`gasp_plugin.integrations.qwen_vl_finetune`: QwenLM's ``qwen-vl-finetune``.
- :mod:`gasp_plugin.integrations.llamafactory`: hiyouga's LLaMA-Factory (SFT stage).

Importing this package is cheap: torch and transformers load only when a helper runs.
"""

__all__ = ["common", "qwen_vl_finetune", "llamafactory"]
