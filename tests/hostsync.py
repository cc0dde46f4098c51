"""Count (or forbid) the tensor methods that force a device-to-host synchronisation.

On a GPU, ``item``, ``tolist``, ``numpy``, ``cpu`` and the conversions ``bool(t)``,
``float(t)``, ``int(t)`` (and ``t.__index__``, e.g. ``range(t)``) wait for the device and copy
to the host. Counting them on a CPU-only machine shows how often a loop would stall a GPU,
without a GPU. Operations that synchronise inside C++ (boolean-mask indexing, ``nonzero``) are
not seen here; the meta-device tests catch those where they matter.
"""
from __future__ import annotations

import contextlib
import traceback
from collections import Counter

import torch

METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


class HostSyncs:
    """Result of :func:`count_host_syncs`: ``total`` and ``by_site`` (method, caller) -> count."""

    def __init__(self):
        self.total = 0
        self.by_site = Counter()

    def __repr__(self):
        top = ", ".join(f"{m} at {where}: {n}" for (m, where), n in self.by_site.most_common(8))
        return f"HostSyncs(total={self.total}; {top})"


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/klmgraph/" in frame.filename:
            return f"{frame.filename.rsplit('/klmgraph/', 1)[1]}:{frame.lineno}"
    return "outside klmgraph"


@contextlib.contextmanager
def count_host_syncs(forbid: bool = False):
    """Within the block, count (``forbid``: raise AssertionError on) every host synchronisation.

    Nested conversions (``bool(t)`` calling ``item``) count once.
    """
    result = HostSyncs()
    originals = {name: getattr(torch.Tensor, name) for name in METHODS}
    depth = [0]

    def wrap(name, method):
        def wrapped(self, *args, **kwargs):
            if depth[0] == 0:
                if forbid:
                    raise AssertionError(f"host synchronisation: Tensor.{name} at {_caller()}")
                result.total += 1
                result.by_site[(name, _caller())] += 1
            depth[0] += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return wrapped

    for name, method in originals.items():
        setattr(torch.Tensor, name, wrap(name, method))
    try:
        yield result
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
