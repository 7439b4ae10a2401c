"""Names and values that several parts of gasp-plugin must agree on, defined once.

This module imports nothing, so every layer (geometry, data, models, core, recipe, train, probe,
integrations) may read it.
"""

__all__ = ["HEADS_ATTR", "HEADS_FILE", "RECIPE_FILE", "TINY_PREFIX", "IGNORE_INDEX", "TARGETS_KEY", "IMAGE_TOKEN_TYPE", "VIDEO_TOKEN_TYPE",
           "RECOMPUTE_MIN_ELEMENTS"]

#: attribute of the model under which ``attach_gasp`` registers the heads (``model.gasp_heads``)
HEADS_ATTR = "gasp_heads"

#: the heads file a trainer writes beside the saved model or adapter
HEADS_FILE = "gasp_heads.safetensors"

#: the resolved recipe a ``gasp train`` run writes beside its checkpoint
RECIPE_FILE = "gasp_recipe.yaml"

#: ``model.path`` / ``--model`` prefix that builds a tiny random model from a config (``tiny:qwen2_vl``)
TINY_PREFIX = "tiny:"

#: label of tokens the LM loss ignores (transformers' convention)
IGNORE_INDEX = -100

#: key of the :class:`gasp_plugin.core.targets.GaspTargets` in an example or batch dict
TARGETS_KEY = "gasp_targets"

#: ``mm_token_type_ids`` values at image and video placeholder tokens (0 = text), as Qwen-VL's
#: rope index reads them
IMAGE_TOKEN_TYPE, VIDEO_TOKEN_TYPE = 1, 2

#: the GASP loss recomputes a tensor in backward (a non-re-entrant checkpoint) instead of keeping
#: it only when it has at least this many elements (1 MiB in fp32): below it, the checkpoint's own
#: bookkeeping costs more time than the memory is worth (on the tiny demo model it was 13% of a
#: training step); at the 7B operating point every such tensor is far above it
RECOMPUTE_MIN_ELEMENTS = 1 << 18
