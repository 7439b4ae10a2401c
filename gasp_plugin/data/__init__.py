"""Scenes (posed RGB-D sequences) from several folder layouts, clips and the clip sampler.

    from gasp_plugin.data import open_scene, load_clip, ClipSampler, ClipSampling
"""

from gasp_plugin.data.clips import ClipSampler, ClipSampling, ClipSamplingError, check_geometry_ratio, load_clip
from gasp_plugin.data.scene import Clip, Scene, known_layouts, open_scene, open_scenes, register_reader

__all__ = ["Clip", "ClipSampler", "ClipSampling", "ClipSamplingError", "Scene", "check_geometry_ratio",
           "known_layouts", "load_clip", "open_scene", "open_scenes", "register_reader"]
