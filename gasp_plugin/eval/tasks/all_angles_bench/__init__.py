"""The All-Angles Bench task for lmms-eval: ``_default_template_yaml`` and ``utils.py`` (lmms-eval
reads both by path; this file only makes the folder package data)."""
