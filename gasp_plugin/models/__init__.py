"""Model families: adapters that locate decoder layers and visual tokens, tiny test models, and
processor loading. Import the submodules directly (``gasp_plugin.models.tiny``,
``gasp_plugin.models.registry``); this package imports nothing heavy.
"""
