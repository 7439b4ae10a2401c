"""GASP in the training frameworks people already run.

The logic lives here, tested with the rest of the package; a framework meets it through a patch
(``patches/``), a plugin file or a trainer class:

- :mod:`gasp_plugin.integrations.common`: :class:`GaspArguments` (the ``--gasp_*`` arguments),
  attaching the heads, interleaving a framework's own dataset and collator with GASP geometry
  clips, and its trainer class with :class:`gasp_plugin.GaspTrainerMixin` mixed in.
- :mod:`gasp_plugin.integrations.llamafactory`: hiyouga's LLaMA-Factory, SFT stage (a patch).
- :mod:`gasp_plugin.integrations.qwen_vl_finetune`: QwenLM's ``qwen-vl-finetune`` (a patch).
- :mod:`gasp_plugin.integrations.trl`: ``GaspSFTTrainer`` for TRL's ``SFTTrainer``.
- :mod:`gasp_plugin.integrations.swift`: ms-swift 4.x, a plugin file for
  ``swift sft --external_plugins "$(gasp integrations swift)"`` (settings: ``GASP_*`` variables).

Importing this package is cheap: torch, transformers and the frameworks load only when used.
It is also the ``gasp integrations`` command (``gasp integrations swift``: the plugin file's path).
"""

__all__ = ["common", "llamafactory", "qwen_vl_finetune", "trl", "swift"]

# ``gasp integrations NAME``: what to print for each name (a path inside this package)
_FILES = {"swift": "swift.py"}


def add_arguments(parser) -> None:
    parser.add_argument("name", choices=sorted(_FILES),
                        help='swift: print the path of the ms-swift plugin file, for swift sft --external_plugins')


def run(args) -> int:
    from pathlib import Path

    print(Path(__file__).resolve().with_name(_FILES[args.name]))
    return 0
