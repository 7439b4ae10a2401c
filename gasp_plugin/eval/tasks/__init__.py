"""lmms-eval tasks shipped with gasp-plugin, one folder each (a task template and its ``utils.py``).

lmms-eval reads them as external tasks (``--include_path``). A task whose data lives in a local
folder gets its ``dataset_path`` from a small task file that :func:`gasp_plugin.eval.harness.write_task_files`
writes for the run (``include:`` of the template here); ``gasp eval`` does that itself.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

__all__ = ["TASKS_DIR"]
