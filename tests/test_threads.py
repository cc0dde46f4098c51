"""The thread count of a bound model's kernel (klmgraph.nn.threads): pinned counts are used as
given, "auto" follows the faster of 1 and torch's count, judged by a fake clock."""
import pytest
import torch

from klmgraph.nn import ThreadChoice


class FakeClock:
    """A clock that a call advances by the cost of its thread count (no wall clock involved)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def drive(choice, clock, cost, calls, work=1.0):
    """``calls`` calls through ``choice``; ``cost(count, i)`` is the seconds call i takes."""
    used = []
    for i in range(calls):
        def fn(count, i=i):
            clock.now += cost(count, i) * work
            used.append(count)
            return count
        assert choice.run(fn, work=work) == used[-1]
    return used


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_idle_machine_keeps_two_threads(two_threads):
    clock = FakeClock()
    choice = ThreadChoice("auto", probe_every=8, clock=clock)
    used = drive(choice, clock, lambda n, i: {1: 1.0, 2: 0.6}[n], 40)
    # warm-up with 2, one timing each (2, then 1), then 2 except a probe of 1 every 8 judged calls
    assert used[:3] == [2, 2, 1]
    assert choice.chosen() == 2
    probes = [i for i, n in enumerate(used) if n == 1 and i > 2]
    assert probes == [8, 16, 24, 32]


def test_loaded_machine_falls_back_to_one_thread_and_returns(two_threads):
    clock = FakeClock()
    choice = ThreadChoice("auto", probe_every=8, clock=clock)
    # loaded for the first 50 calls (2 threads slower than 1), idle afterwards
    cost = (lambda n, i: {1: 1.0, 2: 1.6}[n] if i < 50 else {1: 1.0, 2: 0.6}[n])
    used = drive(choice, clock, cost, 100)
    assert used[3:8] == [1] * 5  # after one timing each, 1 thread
    assert used[3:50].count(2) <= 47 // 8 + 1  # only the probes
    assert choice.chosen() == 2  # the machine became idle: back to 2 threads
    switch = next(i for i in range(50, 100) if used[i:i + 5] == [2] * 5)
    assert switch < 50 + 2 * 8 + 2  # within two probe periods (a faster probe is repeated at once)


def test_the_first_call_is_not_judged_and_work_normalises(two_threads):
    clock = FakeClock()
    choice = ThreadChoice("auto", clock=clock)
    # a slow first call with 2 threads (compilation) must not count against 2 threads; later
    # calls of 10x the work with 2 threads are compared per unit of work
    drive(choice, clock, lambda n, i: 100.0 if i == 0 else {1: 1.0, 2: 0.5}[n], 1)
    drive(choice, clock, lambda n, i: {1: 1.0, 2: 0.5}[n], 1, work=10.0)  # 2 threads, 10 units: 0.5 / unit
    drive(choice, clock, lambda n, i: {1: 1.0, 2: 0.5}[n], 1, work=1.0)  # 1 thread: 1.0 / unit
    assert choice.chosen() == 2


def test_a_noisy_probe_does_not_flip_the_choice(two_threads):
    clock = FakeClock()
    choice = ThreadChoice("auto", probe_every=4, window=3, clock=clock)
    # 1 thread is steadily faster; the 2-thread probe of call 8 is lucky once
    used = drive(choice, clock, lambda n, i: {1: 1.0, 2: 0.5 if i == 8 else 1.5}[n], 30)
    assert used[4] == 2 and used[5:8] == [1, 1, 1]  # a probe every 4 judged calls
    assert used[8] == 2 and used[9] == 2  # the lucky probe is repeated at once...
    assert used[10:12] == [1, 1]  # ...found slow again, and 1 thread stays
    assert choice.chosen() == 1


def test_pinned_counts_and_one_torch_thread():
    clock = FakeClock()
    pinned = ThreadChoice(3, clock=clock)
    assert set(drive(pinned, clock, lambda n, i: {3: 9.0}.get(n, 1.0), 20)) == {3}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        auto = ThreadChoice("auto", clock=clock)
        assert set(drive(auto, clock, lambda n, i: 1.0, 20)) == {1}  # nothing to choose from
    finally:
        torch.set_num_threads(threads)


def test_a_call_that_does_not_apply_is_not_recorded(two_threads):
    clock = FakeClock()
    choice = ThreadChoice("auto", clock=clock)
    for _ in range(5):
        assert choice.run(lambda count: None) is None
    assert choice.next() == 2 and not choice._warm  # still before the warm-up


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two", None])
def test_bad_thread_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        ThreadChoice(bad)
    with pytest.raises(ValueError, match="probe_every"):
        ThreadChoice("auto", probe_every=0)
