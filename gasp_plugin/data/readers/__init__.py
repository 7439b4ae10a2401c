"""Scene readers, one module per folder layout; chosen by :func:`gasp_plugin.data.open_scene`
through the registry ``gasp_plugin.data.scene.READERS``."""
