from pathlib import Path

import numpy as np
import pytest
import torch

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
