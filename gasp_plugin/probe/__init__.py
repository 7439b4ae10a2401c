"""The diagnostic probe: can a VLM match a 3D point across two views, layer by layer?

``gasp probe`` (:mod:`gasp_plugin.probe.cli`) and, in-process,
:func:`gasp_plugin.probe.runner.run_probe` -> :class:`gasp_plugin.probe.report.ProbeReport`.
Modules: ``metrics`` (PCK in token cells, exact chance, rho, robustness), ``pairs`` (held-out frame
pairs with their view change; q/k descriptors are :mod:`gasp_plugin.core.qk`), ``runner``, ``report``,
``plots``, ``output``, ``loading`` (what ``--model`` / ``--scenes`` accept). Nothing is imported
here, so ``gasp --help`` stays cheap.
"""
