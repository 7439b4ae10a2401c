"""Torch intra-op threads for training on the CPU: several while they are faster, one when not.

On a 2-core laptop the tiny demo model trains about 1.4x faster with two torch threads than with
one, but when another process keeps a core busy, two threads wait on each other at every operation
and training runs some 30x slower (0.3 vs 9 steps/s, measured). :class:`ThreadGovernor` (recipe
``training.cpu_threads: auto``) measures instead of guessing, and keeps measuring, since the
machine's load changes during a run:

1. *probe*: ``probe_steps`` steps at one thread, then ``probe_steps`` at ``max_threads``; the
   probe of many threads stops at its first step slower than ``slow`` x the one-thread median;
2. *run*: the faster setting until ``every`` steps after the probe began; a step at many threads
   slower than ``slow`` x the one-thread median falls back to one thread at once;
3. probe again.

So a competing process costs one slow step per ``every`` steps, not ``every`` slow steps. The first
``warmup`` steps (data workers starting, allocator warming up) are not measured. A number
(``training.cpu_threads: 2``) is :class:`FixedThreads`. Both restore torch's setting at the end.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from typing import Callable

from transformers import TrainerCallback

__all__ = ["FixedThreads", "ThreadGovernor", "thread_callback"]

logger = logging.getLogger("gasp_plugin.train")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ThreadGovernor(TrainerCallback):
    """Chooses between 1 and ``max_threads`` torch threads by timing training steps; see module doc.

    Args:
        max_threads: the many-threads setting (default: the cores this process may use).
        every: steps from one probe to the next.
        probe_steps: steps timed per setting in a probe.
        slow: a many-threads step slower than this many one-thread medians means contention.
        warmup: first steps not timed.
        clock, set_threads: injectable for tests (default: ``time.perf_counter``,
            ``torch.set_num_threads``).
    """

    def __init__(self, max_threads: int | None = None, every: int = 200, probe_steps: int = 8, slow: float = 3.0,
                 warmup: int = 3, clock: Callable[[], float] = time.perf_counter,
                 set_threads: Callable[[int], None] | None = None):
        import torch

        self.max_threads = max_threads or available_cores()
        if every <= 2 * probe_steps or probe_steps < 1 or slow <= 1 or self.max_threads < 1:
            raise ValueError("ThreadGovernor: need every > 2 * probe_steps >= 2, slow > 1, max_threads >= 1")
        self.every, self.probe_steps, self.slow, self.warmup = every, probe_steps, slow, warmup
        self.clock, self.set_threads = clock, set_threads or torch.set_num_threads
        self._restore: int | None = None  # torch's setting when training began
        self.threads = self.max_threads
        self.steps_at: Counter = Counter()  # threads -> steps run at that setting
        self.fallbacks = 0  # runs at many threads cut short by a slow step
        self._one: list[float] = []  # step times of this cycle's probe, at one thread
        self._many: list[float] = []  # ... and at max_threads
        self._one_median = 0.0
        self._step = 0
        self._phase_start = 0
        self._started: float | None = None

    # -- the decision ----------------------------------------------------------------------------
    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self.threads = threads
            self.set_threads(threads)

    def _next(self, seconds: float) -> None:
        """Record one timed step at the current setting and choose the next step's setting."""
        k = self._step - self._phase_start  # steps into this probe-and-run cycle: 1 for its first
        if self.max_threads == 1:
            return
        if k <= self.probe_steps:  # probing one thread
            self._one.append(seconds)
            if k == self.probe_steps:
                self._one_median = statistics.median(self._one)
                self._use(self.max_threads)
            return
        too_slow = self.threads > 1 and seconds > self.slow * self._one_median
        if k <= 2 * self.probe_steps and self.threads > 1:  # probing many threads
            self._many.append(seconds)
            if too_slow:
                self._use(1)
            elif k == 2 * self.probe_steps:
                self._use(self.max_threads if statistics.median(self._many) < self._one_median else 1)
        elif too_slow:
            self.fallbacks += 1
            self._use(1)
        if k >= self.every:  # the next step starts a new cycle, at one thread
            self._phase_start = self._step
            self._one, self._many = [], []
            self._use(1)

    # -- trainer callback ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        self._restore = torch.get_num_threads()
        self.threads = None
        self._use(1 if self.max_threads > 1 else self.max_threads)
        self._step, self._phase_start = 0, self.warmup

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        self._step += 1
        self.steps_at[self.threads] += 1
        if self._started is not None and self._step > self.warmup:
            self._next(self.clock() - self._started)

    def on_train_end(self, args, state, control, **kwargs):
        if self._restore is not None:
            self.set_threads(self._restore)
        s = self.summary()
        logger.info(
            "torch threads (cpu_threads: auto): steps at each setting %s, %d fallbacks to one thread",
            s["steps_at_threads"], s["fallbacks"])

    def summary(self) -> dict:
        """Steps run at each setting and fallbacks, for logs and benchmarks."""
        return {"max_threads": self.max_threads, "steps_at_threads": dict(sorted(self.steps_at.items())),
                "fallbacks": self.fallbacks}


class FixedThreads(TrainerCallback):
    """``threads`` torch threads while training runs (torch's setting restored after)."""

    def __init__(self, threads: int):
        self.threads, self._restore = threads, None

    def on_train_begin(self, args, state, control, **kwargs):
        import torch

        self._restore = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def on_train_end(self, args, state, control, **kwargs):
        import torch

        if self._restore is not None:
            torch.set_num_threads(self._restore)


def thread_callback(cpu_threads: int | str | None, on_cpu: bool) -> TrainerCallback | None:
    """The callback for recipe ``training.cpu_threads`` (validated by the recipe), or ``None``
    (not set, or training on an accelerator)."""
    if cpu_threads is None or not on_cpu:
        return None
    return ThreadGovernor() if cpu_threads == "auto" else FixedThreads(int(cpu_threads))
