"""Qwen3-VL adapter (``qwen3_vl``, ``qwen3_vl_moe``).

Images as in Qwen2-VL (the same ``Qwen2VLImageProcessor``, :class:`~gasp_plugin.models.qwen2_vl.
QwenVLAdapter`), with patch 16 and merge 2 read from the config: 32 px token cells of the resized
frame. What differs, and what GASP does about it:

- **DeepStack.** Features of a few vision-tower layers are added to the LLM's hidden states at
  the visual positions *after* each of the first ``len(deepstack_visual_indexes)`` decoder layers,
  outside the layer modules (``Qwen3VLTextModel._deepstack_process``). A hook on decoder layer
  ``i`` therefore sees its own output without the DeepStack term (what the model returns as
  ``hidden_states[i + 1]`` for all but the last layer), and the q/k recomputed from layer ``i + 1``'s input see it
  with the term, as that layer's attention does. GASP's heads read what each LLM layer computed;
  the added term depends on the vision tower alone.
- **q/k norms.** The attention normalises each head of q_proj / k_proj with its own RMSNorm
  (``q_norm`` / ``k_norm``, learned scales) before RoPE; :meth:`Qwen3VLAdapter.attention_projections`
  returns the projections with those norms, so the q/k descriptors are what attention compares.
  ``head_dim`` comes from the config (q_proj may be wider than the hidden size).
- **Video.** Each temporal group (two frames) is written as ``<t seconds>`` text, then
  ``<|vision_start|>``, its video tokens and ``<|vision_end|>``, as ``Qwen3VLProcessor`` does; the
  groups' tokens are therefore not contiguous (frame positions come from the token mask). The
  timestamps are the processor's own when it has no video metadata: frame indices at 24 fps,
  averaged over each group. Video pixels are made by the image processor (as for Qwen2-VL).
"""

from __future__ import annotations

from typing import Any

import torch

from gasp_plugin.data.instruct import mm_token_type_ids
from gasp_plugin.models.prompts import expand_placeholders, tokenize
from gasp_plugin.models.qwen2_vl import QwenVLAdapter
from gasp_plugin.models.registry import register_adapter

__all__ = ["Qwen3VLAdapter", "HeadNormedProjection", "group_timestamps"]

#: frames per second Qwen3VLProcessor assumes for frames given without video metadata
DEFAULT_FPS = 24.0


def group_timestamps(num_frames: int, temporal_patch_size: int, fps: float = DEFAULT_FPS) -> list[float]:
    """Seconds written before each temporal group: the mean time of the group's first and last
    frame (frame ``i`` at ``i / fps``), as ``Qwen3VLProcessor._calculate_timestamps``."""
    idx = list(range(num_frames))
    idx += [idx[-1]] * (-len(idx) % temporal_patch_size)
    t = [i / fps for i in idx]
    return [(t[i] + t[i + temporal_patch_size - 1]) / 2 for i in range(0, len(t), temporal_patch_size)]


class HeadNormedProjection:
    """A q / k projection followed by the attention's per-head norm: ``norm(proj(x) as heads)``,
    flattened back to ``[..., heads * head_dim]``. ``weight`` is the projection's own (for the
    heads' SVD init); under PEFT ``proj`` is the LoRA wrapper, so LoRA is applied."""

    def __init__(self, proj: torch.nn.Module, norm: torch.nn.Module, head_dim: int):
        self.proj, self.norm, self.head_dim = proj, norm, int(head_dim)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).unflatten(-1, (-1, self.head_dim))).flatten(-2)

    @property
    def weight(self) -> torch.nn.Parameter:
        return getattr(self.proj, "base_layer", self.proj).weight


@register_adapter("qwen3_vl", "qwen3_vl_moe")
class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL (dense and MoE): Qwen2-VL's image layout, q/k with their head norms, timestamped video."""

    def attention_projections(self, layer: torch.nn.Module) -> tuple[HeadNormedProjection, HeadNormedProjection]:
        q, k = super().attention_projections(layer)
        attn = layer.self_attn
        for name in ("q_norm", "k_norm", "head_dim"):
            if not hasattr(attn, name):
                raise ValueError(f"{type(attn).__name__} has no {name}; is this a Qwen3-VL decoder layer?")
        return HeadNormedProjection(q, attn.q_norm, attn.head_dim), HeadNormedProjection(k, attn.k_norm, attn.head_dim)

    def build_video_inputs(self, processor: Any, frames: list, *, prompt: str = "Describe the video.") -> dict:
        """Inputs for ``frames`` as one video: timestamped temporal groups (module docstring)."""
        pixel_values_videos, video_grid_thw = self._video_patches(processor, frames)
        groups, gh, gw = (int(v) for v in video_grid_thw[0])
        per_group = gh * gw // self.merge**2
        tok = processor.tokenizer.convert_ids_to_tokens
        start, end = tok(int(self.config.vision_start_token_id)), tok(int(self.config.vision_end_token_id))
        video = tok(int(self.config.video_token_id))
        replacement = "".join(f"<{t:.1f} seconds>{start}{video * per_group}{end}"
                              for t in group_timestamps(len(frames), self.temporal_patch_size))
        text = expand_placeholders(self._prompt(processor, "video", 1, prompt), video, [replacement])
        enc = tokenize(processor, text)
        types = mm_token_type_ids(enc["input_ids"], self.config.image_token_id, self.config.video_token_id)
        return {**enc, "mm_token_type_ids": types, "pixel_values_videos": pixel_values_videos,
                "video_grid_thw": video_grid_thw}
