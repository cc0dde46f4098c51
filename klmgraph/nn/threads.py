"""How many threads a bound model's compiled kernel uses: a count the user pins, or "auto".

"auto" chooses between 1 thread and torch's thread count (``torch.get_num_threads()``) by
timing the calls themselves: the first call is a warm-up (compilation, packing, fresh pages)
and is not judged, the next two try each count once, then every call takes the count whose
recent calls (the median of the last ``window``, per site and configuration) were faster, and
every ``probe_every``-th call tries the other one again, so a change of load is followed. A
probe that beats the chosen count's median is repeated at once (two probes out of the window
of three outvote the old samples). On an idle machine the extra core wins and is kept; on a
loaded one, where a second thread waits for a core that other jobs hold and is slower than one,
the evaluator falls back to 1 thread. Ties go to 1 thread (it leaves the core to others).

The state lives on the bound object (no global state). Results do not depend on the count:
the kernel's sums run in a fixed order for any number of threads (tests/test_fused.py).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from typing import Callable, TypeVar

import torch

__all__ = ["ThreadChoice", "one_torch_thread"]

R = TypeVar("R")


class ThreadChoice:
    """The thread count of one bound model's kernel calls, pinned or chosen by timing ("auto").

    Args:
        threads: a positive count (used as given, every call), or ``"auto"`` (the faster of 1
            and ``torch.get_num_threads()`` at the time of the call, see the module docstring).
        probe_every: in "auto", every this many calls the count not chosen is timed again.
        window: in "auto", calls per count whose median time is compared.
        clock: seconds as a float (injected by tests; default ``time.perf_counter``).

    Raises:
        ValueError: if ``threads`` is neither a positive integer nor "auto", or ``probe_every``
            or ``window`` is not a positive integer.
    """

    def __init__(self, threads: int | str = "auto", probe_every: int = 32, window: int = 3,
                 clock: Callable[[], float] = time.perf_counter):
        if threads != "auto" and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f'threads must be a positive integer or "auto", got {threads!r}')
        for name, value in (("probe_every", probe_every), ("window", window)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.threads = threads
        self.probe_every, self.window, self.clock = probe_every, window, clock
        self._times: dict[int, deque] = {}  # count -> recent seconds per unit of work
        self._calls = 0  # judged calls (after the warm-up)
        self._warm = False
        self._probe_again = False

    def _median(self, count: int) -> float:
        return statistics.median(self._times[count])

    def chosen(self) -> int:
        """The count the recent calls found faster (without probing): the pinned count, 1 where
        torch has 1 thread, else the faster of 1 and torch's count (that count until timed)."""
        if self.threads != "auto":
            return self.threads
        n = torch.get_num_threads()
        if n <= 1:
            return 1
        if not (self._times.get(1) and self._times.get(n)):
            return n
        return n if self._median(n) < self._median(1) else 1

    def next(self) -> int:
        """The count for the next call (the chosen one, or the other one when it is probed)."""
        if self.threads != "auto":
            return self.threads
        n = torch.get_num_threads()
        if n <= 1:
            return 1
        if not self._warm:
            return n
        for count in (n, 1):  # each count timed once before any choice
            if not self._times.get(count):
                return count
        best = self.chosen()
        other = 1 if best == n else n
        if self._probe_again or (self._calls + 1) % self.probe_every == 0:
            return other
        return best

    def record(self, count: int, seconds: float, work: float = 1.0) -> None:
        """Note that a call with ``count`` threads took ``seconds`` for ``work`` units (sites x
        configurations: the per-unit time is compared, so calls of other batch sizes mix)."""
        if self.threads != "auto":
            return
        if not self._warm:
            self._warm = True  # the first call: compilation, packing, page faults
            return
        self._calls += 1
        per_unit = seconds / max(work, 1e-300)
        best = self.chosen()
        is_probe = count != best and bool(self._times.get(best)) and bool(self._times.get(count))
        self._times.setdefault(count, deque(maxlen=self.window)).append(per_unit)
        self._probe_again = is_probe and per_unit < self._median(best) and not self._probe_again

    def run(self, fn: Callable[[int], R | None], work: float = 1.0) -> R | None:
        """``fn(count)`` with the count for this call, timed and recorded; a None result (the
        kernel did not apply) is not recorded."""
        count = self.next()
        start = self.clock()
        result = fn(count)
        if result is not None:
            self.record(count, self.clock() - start, work)
        return result


@contextlib.contextmanager
def one_torch_thread():
    """torch's own operations on one thread for the duration, its count restored afterwards.

    For the elementwise work around a call of the compiled kernel (spherical harmonics and their
    derivative, spin checks, copies: about 1% of the call), which runs beside the kernel's own
    threads: torch's OpenMP workers, once woken, spin waiting for the next parallel region and
    take cores from the kernel, and on a loaded machine a parallel region waits for a
    descheduled worker (measured at 96x96 under load: 0.12 us/site on one thread, 7.8 with two).
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
