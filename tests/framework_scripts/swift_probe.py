"""A test-only ms-swift plugin: records the positions each Qwen2-VL language-model forward gets.

With ``GASP_TEST_PROBE=FILE`` set, every forward of transformers' ``Qwen2VLTextModel`` appends
``{"training": ..., "tokens": L, "mrope": ...}`` to FILE, where ``mrope`` says the temporal /
height / width position rows differ somewhere (Qwen2-VL's M-RoPE over visual tokens). A batch
that reached the model as ``inputs_embeds`` without ``image_grid_thw`` and ``position_ids`` gets
plain text positions (all rows equal): what ms-swift's post-encode hook would make of a GASP
geometry batch.
"""

import functools
import json
import os

from transformers.models.qwen2_vl import modeling_qwen2_vl

_forward = modeling_qwen2_vl.Qwen2VLTextModel.forward


@functools.wraps(_forward)
def forward(self, *args, position_ids=None, **kwargs):
    path = os.environ.get("GASP_TEST_PROBE")
    if path:
        rows = None if position_ids is None or position_ids.dim() != 3 else position_ids[-3:]
        mrope = rows is not None and bool((rows[0] != rows[1]).any() or (rows[1] != rows[2]).any())
        embeds = kwargs.get("inputs_embeds")
        tokens = int(embeds.shape[1]) if embeds is not None else int(kwargs["input_ids"].shape[1])
        with open(path, "a") as f:
            f.write(json.dumps({"training": self.training, "tokens": tokens, "mrope": mrope}) + "\n")
    return _forward(self, *args, position_ids=position_ids, **kwargs)


if not getattr(modeling_qwen2_vl.Qwen2VLTextModel.forward, "_gasp_probe", False):
    forward._gasp_probe = True
    modeling_qwen2_vl.Qwen2VLTextModel.forward = forward
