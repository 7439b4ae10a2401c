"""gasp-plugin: Geometric-Aware Spatial Priors (GASP) for VLM fine-tuning.

The public API is small and loads lazily, so ``import gasp_plugin`` stays cheap and never
imports optional extras (deepspeed, decord, flash-attn)::

    from gasp_plugin import GaspConfig, GaspLoss, attach_gasp, detach_gasp
    from gasp_plugin import Tracks, compute_tracks, open_scene
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Tracks": "gasp_plugin.geometry.tracks",
    "compute_tracks": "gasp_plugin.geometry.tracks",
    "Scene": "gasp_plugin.data.scene",
    "open_scene": "gasp_plugin.data.scene",
    "GaspConfig": "gasp_plugin.core.config",
    "GaspLoss": "gasp_plugin.core.loss",
    "CorrespondenceHead": "gasp_plugin.core.head",
    "attach_gasp": "gasp_plugin.core.attach",
    "detach_gasp": "gasp_plugin.core.attach",
    "GaspTrainer": "gasp_plugin.train.trainer",
    "GaspTrainerMixin": "gasp_plugin.train.trainer",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gasp_plugin' has no attribute {name!r}")


def __dir__():
    return __all__
