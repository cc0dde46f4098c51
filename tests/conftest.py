import os
from pathlib import Path

import numpy as np
import pytest
import torch

# the compiled ECNN kernel is tested on every machine: without AVX-512 the package takes the eager
# path by default (klmgraph/nn/fused.py), the tests take the kernel anyway
os.environ.setdefault("KLMGRAPH_KERNEL", "always")

FIXTURES = Path(__file__).parent / "fixtures"
# ../shared beside the checkout (never copied into the project)
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def golden_square():
    return dict(np.load(FIXTURES / "ed_square_6x6.npz"))


@pytest.fixture
def golden_triangular():
    return dict(np.load(FIXTURES / "ed_triangular_12x12.npz"))


def random_rotation(seed: int = 0) -> torch.Tensor:
    """A random proper rotation (3, 3), float64."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


# ---------------------------------------------------------------- tests that need ../shared
# The published checkpoints (../shared/ecnn4klm/) are not part of the repository; the tests
# that need them skip where they are absent. A skip in the middle of a "." line is easy to
# miss, so the run ends with a line saying how many did not run and why, and
# KLMGRAPH_REQUIRE_SHARED=1 (for a machine that has ../shared) turns those skips into failures.

def _shared_skip(report) -> str | None:
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if "../shared" in reason or str(SHARED) in reason:
            return reason
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    reason = _shared_skip(report)
    if reason and os.environ.get("KLMGRAPH_REQUIRE_SHARED") == "1":
        report.outcome = "failed"
        report.longrepr = f"KLMGRAPH_REQUIRE_SHARED=1 but {reason}"


def pytest_terminal_summary(terminalreporter):
    reasons = [r for r in map(_shared_skip, terminalreporter.stats.get("skipped", [])) if r]
    if reasons:
        terminalreporter.write_sep("!", f"{len(reasons)} tests did NOT run: they need {SHARED} "
                                   "(the published ecnn4klm checkpoints), which is absent here", yellow=True)
        for reason in sorted(set(reasons)):
            terminalreporter.write_line(f"  {reason}")


@pytest.fixture
def one_thread():
    """One torch thread for the test: on tiny lattices several OpenMP threads on a shared
    machine only wait for each other (a 72 x 72 diagonalisation took ~0.3 s instead of ~1 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
