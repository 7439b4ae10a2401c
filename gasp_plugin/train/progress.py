"""A compact live loss read-out for the progress bar.

The stock progress callback prints every logged value, per-layer terms included, as a dict. This
one prints one short line per logging step (``step``, total ``loss``, ``lm``, ``corr``, ``depth``,
``qk``, learning rate, counters of skipped samples) and keeps the latest values beside the bar;
every value, per layer too, is still in ``trainer.state.log_history`` and ``trainer_state.json``.
"""

from __future__ import annotations

from transformers.trainer_callback import ProgressCallback

__all__ = ["LossReadout", "format_readout"]

_SHOWN = ("loss", "lm", "corr", "depth", "qk", "learning_rate", "skipped_samples", "skipped_nonfinite")
_SHORT = {"learning_rate": "lr", "skipped_samples": "skipped", "skipped_nonfinite": "nonfinite"}


def format_readout(step: int, logs: dict) -> str:
    """``"step 100  loss 1.96  lm 3.30  corr 1.23 ..."`` from one logging step's values."""
    parts = [f"step {step}"]
    for key in _SHOWN:
        value = logs.get(key)
        if value is None or (key.startswith("skipped") and not value):
            continue
        parts.append(f"{_SHORT.get(key, key)} {float(value):.4g}")
    return "  ".join(parts)


class LossReadout(ProgressCallback):
    """The stock progress bar, with :func:`format_readout` lines instead of dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if not any(k in logs for k in ("loss", "lm", "corr")):
            return  # the end-of-training summary: printed by the caller
        line = format_readout(state.global_step, logs)
        self.training_bar.write(line)
        terms = {k: v for k, v in logs.items() if k in ("loss", "corr", "qk")}
        self.training_bar.set_postfix_str(format_readout(state.global_step, terms).split("  ", 1)[-1], refresh=False)
