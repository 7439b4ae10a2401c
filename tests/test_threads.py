"""ThreadGovernor: torch threads chosen by timing steps, against scripted step costs (a fake clock)."""

import pytest

from gasp_plugin.train.threads import FixedThreads, ThreadGovernor, thread_callback


class _Machine:
    """A fake clock whose steps cost ``cost(step, threads)`` seconds; records the thread settings."""

    def __init__(self, cost):
        self.cost, self.now, self.threads, self.calls = cost, 0.0, 1, []

    def set_threads(self, n):
        self.threads = n
        self.calls.append(n)

    def clock(self):
        return self.now

    def train(self, governor, steps):
        governor.on_train_begin(None, None, None)
        for step in range(steps):
            governor.on_step_begin(None, None, None)
            self.now += self.cost(step, self.threads)
            governor.on_step_end(None, None, None)
        governor.on_train_end(None, None, None)
        return self.now


def _governor(machine, **kw):
    return ThreadGovernor(max_threads=2, clock=machine.clock, set_threads=machine.set_threads, **kw)


def test_two_threads_kept_while_they_are_faster():
    machine = _Machine(lambda step, n: 0.07 if n == 2 else 0.10)
    gov = _governor(machine)
    total = machine.train(gov, 2000)
    at = gov.summary()["steps_at_threads"]
    # each 200-step cycle probes one thread for 8 steps: 1 - 8/200 of the steps at two threads
    assert at[2] >= 0.95 * 2000 - 10 and gov.fallbacks == 0
    assert total < 0.072 * 2000
    assert machine.calls[-1] == gov._restore  # torch's setting restored at the end


def test_a_busy_neighbour_costs_one_slow_step_per_cycle():
    """Two threads beside a busy process: 30x slower (as measured on 2 cores). The governor runs
    one thread, paying one slow step per probe: far inside the 3x target against one thread."""
    machine = _Machine(lambda step, n: 3.0 if n == 2 else 0.10)
    gov = _governor(machine)
    total = machine.train(gov, 2000)
    cycles = 2000 // 200 + 1
    assert gov.summary()["steps_at_threads"].get(2, 0) <= cycles
    assert total <= 2000 * 0.10 + cycles * 3.0 < 1.3 * 2000 * 0.10


def test_contention_that_starts_mid_run_falls_back_at_once():
    def cost(step, n):
        busy = step >= 500
        return (3.0 if busy else 0.07) if n == 2 else (0.15 if busy else 0.10)

    machine = _Machine(cost)
    gov = _governor(machine)
    total = machine.train(gov, 1500)
    assert gov.fallbacks == 1  # the first slow step at two threads switched to one
    # at most one slow step per cycle after step 500 (the probe of two threads stops at it)
    assert total <= 500 * 0.072 + 1000 * 0.15 + (1000 // 200 + 2) * 3.0


def test_one_core_never_switches():
    machine = _Machine(lambda step, n: 0.1)
    gov = ThreadGovernor(max_threads=1, clock=machine.clock, set_threads=machine.set_threads)
    machine.train(gov, 300)
    assert gov.summary()["steps_at_threads"] == {1: 300}


@pytest.mark.parametrize("value,ok", [(None, True), ("auto", True), (2, True), (0, False), ("two", False), (True, False)])
def test_cpu_threads_setting_is_validated_by_the_recipe(value, ok):
    from gasp_plugin.recipe import load_recipe

    if ok:
        recipe = load_recipe("tiny_cpu", [f"training.cpu_threads={'null' if value is None else value}"])
        assert recipe.training.cpu_threads == value
    else:
        with pytest.raises(ValueError, match="cpu_threads"):
            load_recipe("tiny_cpu", [f"training.cpu_threads={value}"])


def test_thread_callback_by_setting_and_device():
    import torch

    assert thread_callback(None, True) is None and thread_callback("auto", False) is None
    assert isinstance(thread_callback("auto", True), ThreadGovernor)
    fixed = thread_callback(3, True)
    before = torch.get_num_threads()
    fixed.on_train_begin(None, None, None)
    assert torch.get_num_threads() == 3
    fixed.on_train_end(None, None, None)
    assert torch.get_num_threads() == before and isinstance(fixed, FixedThreads)
