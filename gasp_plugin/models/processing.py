"""Loading a VLM's processor, with a documented fallback for Qwen-VL without torchvision.

In transformers 5.x ``Qwen2VLProcessor`` (and ``Qwen2_5_VLProcessor``) always builds a video
processor, and every video processor needs torchvision; on a machine without torchvision the
processor can be neither constructed nor loaded with ``AutoProcessor``, even for image-only use.
GASP needs only the model's own *image processor* and *tokenizer* (plus its chat template), which
load fine, so :func:`load_processor` returns the full processor where it can and a
:class:`ProcessorParts` holding exactly those pieces where it cannot. The model adapters
(:mod:`gasp_plugin.models.registry`) accept either.

The same holds for every family with a video processor (LLaVA-NeXT-Video, LLaVA-OneVision,
Qwen3-VL). Instruction data expands its image placeholders without the full processor by a rule
per processor class (:data:`gasp_plugin.data.instruct.EXPANSIONS`); for the families listed in
:data:`ADAPTER_EXPANDED` the rule is the model adapter's ``expand_images``, found from the model
config the parts carry (:attr:`ProcessorParts.model_config`).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ProcessorParts", "load_processor", "ADAPTER_EXPANDED"]

logger = logging.getLogger(__name__)

_CHAT_TEMPLATE_FILE = "chat_template.jinja"
_PROCESSOR_FILE = "processor_config.json"
_VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"


@dataclass
class ProcessorParts:
    """The model's own image processor and tokenizer, when its full processor cannot be built.

    Attributes:
        image_processor: a transformers image processor (e.g. ``Qwen2VLImageProcessorPil``).
        tokenizer: the model's tokenizer.
        chat_template: the model family's chat template (jinja), or ``None``.
        processor_class: the name of the full processor class this stands in for.
        model_config: the config of the model these parts serve (read from the checkpoint's
            ``config.json`` by :meth:`from_pretrained`), or ``None``; adapters that expand media
            placeholders for the instruction data read their sizes from it.
        processor_kwargs: the full processor's own settings (its ``processor_config.json`` beside
            ``processor_class``, e.g. LLaVA's ``patch_size``), written back by :meth:`save_pretrained`
            so that the full processor loads from the copy where torchvision is installed.
        video_processor_config: the checkpoint's video processor settings (its
            ``video_preprocessor_config.json``), or ``None``: kept so that a saved copy loads as
            the original did, and read by adapters that build video inputs without torchvision.
    """

    image_processor: Any
    tokenizer: Any
    chat_template: str | None = None
    processor_class: str = ""
    model_config: Any = None
    video_processor_config: dict | None = None
    processor_kwargs: dict = field(default_factory=dict)

    def apply_chat_template(self, messages: list[dict], **kwargs) -> Any:
        """Render ``messages`` with the family's chat template (same call as a processor's)."""
        if self.chat_template is None:
            raise ValueError(
                f"{self.processor_class or 'this processor'} has no chat template; save the checkpoint "
                f"with one (a {_CHAT_TEMPLATE_FILE} file) or pass text directly"
            )
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write the parts in the layout ``AutoProcessor`` reads (per-part files + processor_config)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        if self.chat_template is not None:
            (out / _CHAT_TEMPLATE_FILE).write_text(self.chat_template)
        (out / _PROCESSOR_FILE).write_text(json.dumps({"processor_class": self.processor_class,
                                                       **self.processor_kwargs}, indent=2))
        if self.video_processor_config is not None:
            (out / _VIDEO_PROCESSOR_FILE).write_text(json.dumps(self.video_processor_config, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ProcessorParts":
        """Load the image processor, tokenizer and chat template saved in ``path`` (and the model
        config when the folder holds one)."""
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        path = Path(path)
        template_file = path / _CHAT_TEMPLATE_FILE
        template = template_file.read_text() if template_file.is_file() else None
        proc_file = path / _PROCESSOR_FILE
        saved = json.loads(proc_file.read_text()) if proc_file.is_file() else {}
        proc_class = saved.pop("processor_class", "")
        video_file = path / _VIDEO_PROCESSOR_FILE
        return cls(
            image_processor=AutoImageProcessor.from_pretrained(path),
            tokenizer=AutoTokenizer.from_pretrained(path),
            chat_template=template,
            processor_class=proc_class,
            model_config=AutoConfig.from_pretrained(path) if (path / "config.json").is_file() else None,
            video_processor_config=json.loads(video_file.read_text()) if video_file.is_file() else None,
            processor_kwargs=saved,
        )


#: processor classes whose image placeholders the model's adapter expands when only the parts load
ADAPTER_EXPANDED = ("LlavaNextVideoProcessor", "LlavaOnevisionProcessor", "Qwen3VLProcessor")


def _adapter_expansion(parts: ProcessorParts, images: list) -> tuple[dict, list[int]]:
    """``(vision inputs, tokens per image)`` by the adapter of the model the parts serve."""
    from gasp_plugin.models.registry import get_adapter

    if parts.model_config is None:
        raise ValueError(f"{parts.processor_class} without torchvision: its image tokens are counted from the model "
                         "config, which these processor parts do not carry; load them with "
                         "load_processor(checkpoint folder) or install torchvision for the full processor")
    return get_adapter(parts.model_config).expand_images(parts, images)


def _register_expansions() -> None:
    from gasp_plugin.data.instruct import EXPANSIONS

    for name in ADAPTER_EXPANDED:
        EXPANSIONS.setdefault(name, _adapter_expansion)


_register_expansions()  # EXPANSIONS is data.instruct's registry of expansion rules by processor class


def load_processor(path: str | Path) -> Any:
    """The processor saved in ``path``: ``AutoProcessor`` when it loads, else :class:`ProcessorParts`.

    The fallback is taken only on ``ImportError`` (a missing optional backend such as torchvision)
    and said once per process, at INFO level, with the reason (:func:`_explain_fallback`); also on
    the ``RecursionError`` transformers 5.24 raises for a processor with a video part whose folder
    has no video processor config (its video processor lookup falls back to the processor itself).
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path)
    except ImportError as err:
        _explain_fallback(_reason(err))
        return ProcessorParts.from_pretrained(path)
    except RecursionError:
        _explain_fallback("its folder has no video processor config, which transformers cannot load it without")
        return ProcessorParts.from_pretrained(path)


def _reason(err: ImportError) -> str:
    """Why the full processor could not be built, in a few words."""
    text = str(err).strip()
    if "torchvision" in text.lower():
        return "its video processor needs torchvision, which is not available here"
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


@functools.cache  # the same reason is said once per process, not once per loaded checkpoint
def _explain_fallback(reason: str) -> None:
    logger.info("image processor and tokenizer without the video processor (%s); "
                "GASP builds its image and video inputs with the image processor alone", reason)
