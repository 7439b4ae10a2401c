"""Scenes (posed RGB-D sequences) from several folder layouts, clips and the clip sampler.

    from gasp_plugin.data import open_scene, load_clip, ClipSampler
"""

from gasp_plugin.data.clips import ClipSampler, ClipSamplingError, load_clip
from gasp_plugin.data.scene import Clip, Scene, known_layouts, open_scene, open_scenes, register_reader

__all__ = ["Clip", "ClipSampler", "ClipSamplingError", "Scene", "known_layouts", "load_clip",
           "open_scene", "open_scenes", "register_reader"]
