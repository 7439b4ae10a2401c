"""After training: ``gasp export`` (a trained run to a plain checkpoint) and ``gasp eval`` (lmms-eval
on base and GASP checkpoints, one report).

- :mod:`gasp_plugin.eval.export`: LoRA merged, processor and chat template beside it, heads left out.
- :mod:`gasp_plugin.eval.scoring`: the benchmarks' scoring rules as pure functions (standard library
  only, so the lmms-eval task shipped here can load it in any Python).
- ``gasp_plugin/eval/tasks/``: lmms-eval tasks shipped with the package (All-Angles Bench).
- :mod:`gasp_plugin.eval.harness`: lmms-eval command lines, local data sets, result files.
- :mod:`gasp_plugin.eval.report`: the side-by-side table (JSON, Markdown, PNG).
- :mod:`gasp_plugin.eval.cli`: ``gasp eval``.
"""
