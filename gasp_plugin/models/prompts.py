"""Prompt text for adapters that expand media placeholders themselves.

When the full processor cannot be built (no torchvision: :class:`~gasp_plugin.models.processing.
ProcessorParts`), an adapter renders the family's chat template, replaces each media placeholder
by the token string the family's processor would write there, and tokenizes the result without
adding special tokens, as the processors do. The token strings come from the adapter (counts from
the image processor's output and the model config); nothing here knows a family.

    text = chat_prompt(processor, "image", 3, "Describe the frames.")
    text = expand_placeholders(text, "<image>", ["<image>" * 577, ...])
    enc = tokenize(processor, text)                       # input_ids, attention_mask [1, L]
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["chat_prompt", "expand_placeholders", "tokenize", "check_frames"]


def chat_prompt(processor: Any, kind: str, count: int, prompt: str) -> str:
    """One user turn with ``count`` media items of ``kind`` (``"image"`` / ``"video"``) then
    ``prompt``, rendered by the processor's chat template (no generation prompt)."""
    content = [{"type": kind}] * count + [{"type": "text", "text": prompt}]
    return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False)


def expand_placeholders(text: str, placeholder: str, replacements: list[str]) -> str:
    """``text`` with its ``k``-th ``placeholder`` replaced by ``replacements[k]``; the counts must match."""
    pieces = text.split(placeholder)
    if len(pieces) - 1 != len(replacements):
        raise ValueError(f"the prompt has {len(pieces) - 1} {placeholder!r} placeholders for {len(replacements)} "
                         "media items; does the chat template write one per item?")
    return pieces[0] + "".join(rep + rest for rep, rest in zip(replacements, pieces[1:]))


def tokenize(processor: Any, text: str) -> dict:
    """``{"input_ids", "attention_mask"}`` ``[1, L]`` of ``text`` (special tokens as written)."""
    enc = processor.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def check_frames(frames: list) -> list[np.ndarray]:
    """``frames`` as uint8 ``[h, w, 3]`` arrays; ``ValueError`` naming the first bad frame."""
    if len(frames) == 0:
        raise ValueError("no frames given; pass a list of uint8 [h, w, 3] arrays")
    out = []
    for i, fr in enumerate(frames):
        arr = np.asarray(fr)
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"frame {i} must be uint8 [h, w, 3], got {arr.dtype} {tuple(arr.shape)}")
        out.append(arr)
    return out
