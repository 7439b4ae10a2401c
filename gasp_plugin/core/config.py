"""``GaspConfig``: every knob of the GASP plug-in, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# HEADS_ATTR: attribute of the model under which :func:`gasp_plugin.core.attach.attach_gasp`
# registers the heads. They are not listed in PEFT ``modules_to_save``: the handle makes them
# trainable (``handle.ensure_trainable()``) and they are saved on their own, beside the adapter.
from gasp_plugin.constants import HEADS_ATTR

__all__ = ["GaspConfig", "HEADS_ATTR"]

_INITS = ("svd_q", "random")


def _fail(name: str, allowed: str, value: Any) -> None:
    err = ValueError(f"GaspConfig.{name} must be {allowed}, got {value!r}")
    err.field = name  # a recipe names the key path (gasp.<name>), see gasp_plugin.recipe.schema
    raise err


@dataclass
class GaspConfig:
    """Configuration of the GASP heads and losses (defaults follow the paper where it gives them).

    Negatives of the correspondence term are the other visual tokens of the target frame: local to
    the example, nothing is gathered across ranks.

    Attributes:
        layers: supervised decoder layers: ``"all"``, a list of indices (negative counts from the
            end) or a ``range``.
        embed_dim: head output size ``e`` (the head is ``d -> hidden_mult * e -> e``).
        hidden_mult: width of the head's hidden layer in units of ``embed_dim``.
        tau: InfoNCE / soft-argmax temperature.
        corr_weight: weight of the correspondence (InfoNCE) term in the total.
        depth_weight: weight of the soft-argmax depth term in the total.
        qk_weight: weight of the query/key alignment term (this project's extension; 0 = the
            paper's losses only): InfoNCE between the layer's ``q_proj`` output at the anchor
            point's token and the ``k_proj`` outputs of the target frame's tokens (head-averaged
            cosine / ``tau``, see :mod:`gasp_plugin.core.qk`). It trains what attention itself
            matches, which the head on hidden states reaches only indirectly.
        shared_head: one head for all supervised layers instead of one per layer.
        init: ``"svd_q"`` (first layer from the SVD of the layer's q_proj weight) or ``"random"``.
        depth_eps: epsilon in ``|d - d_hat| / (d + d_hat + eps)``.
        head_checkpoint: recompute the heads in backward instead of storing their activations
            (saves memory, costs one extra head forward).
        seed: seed of the heads' random initialisation.
    """

    layers: str | list[int] = "all"  # a range or tuple is accepted too (stored as a list)
    embed_dim: int = 256
    hidden_mult: int = 2
    tau: float = 0.07
    corr_weight: float = 0.3
    depth_weight: float = 1.0
    qk_weight: float = 0.0
    shared_head: bool = False
    init: str = "svd_q"
    depth_eps: float = 1e-6
    head_checkpoint: bool = False
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.layers, range):
            self.layers = list(self.layers)
        elif isinstance(self.layers, tuple):
            self.layers = list(self.layers)
        if self.layers != "all":
            if not isinstance(self.layers, list) or not self.layers:
                _fail("layers", '"all", a non-empty list of ints or a range', self.layers)
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in self.layers):
                _fail("layers", "a list of ints", self.layers)
            if len(set(self.layers)) != len(self.layers):
                _fail("layers", "free of duplicates", self.layers)
        for name in ("embed_dim", "hidden_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _fail(name, "a positive int", value)
        if not isinstance(self.tau, (int, float)) or not self.tau > 0:
            _fail("tau", "a positive number", self.tau)
        for name in ("corr_weight", "depth_weight", "qk_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                _fail(name, "a number >= 0", value)
        if not isinstance(self.depth_eps, (int, float)) or self.depth_eps < 0:
            _fail("depth_eps", "a number >= 0", self.depth_eps)
        if self.init not in _INITS:
            _fail("init", f"one of {list(_INITS)}", self.init)
        for name in ("shared_head", "head_checkpoint"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, "True or False", getattr(self, name))

    def resolve_layers(self, num_layers: int) -> list[int]:
        """The supervised layer indices (sorted, non-negative) for a model with ``num_layers``."""
        if self.layers == "all":
            return list(range(num_layers))
        bad = [i for i in self.layers if not -num_layers <= i < num_layers]
        if bad:
            raise ValueError(
                f"GaspConfig.layers {bad} out of range for a model with {num_layers} decoder layers "
                f"(valid: {-num_layers} .. {num_layers - 1})"
            )
        resolved = sorted(i % num_layers for i in self.layers)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"GaspConfig.layers {self.layers} name the same layer twice for {num_layers} layers")
        return resolved

    def to_dict(self) -> dict:
        return asdict(self)
