"""The one place where fields are derived from energies."""
from __future__ import annotations

import torch

__all__ = ["compute_field"]


def compute_field(energy: torch.Tensor, spins: torch.Tensor, training: bool = False) -> torch.Tensor:
    """Effective field B = -dE/dS by autograd.

    Args:
        energy: energies of any shape; their sum is differentiated (configurations are
            independent, so each spin only sees its own configuration's energy).
        spins: the tensor (requires_grad) the energies were computed from.
        training: keep the graph of the derivative (``create_graph``) so that a loss on B can
            be back-propagated (double backward).

    Shapes:
        spins: (..., N, 3) -> B: same shape.
    """
    if not spins.requires_grad:
        raise ValueError("spins must require grad to compute the field (call spins.requires_grad_())")
    (grad,) = torch.autograd.grad(energy.sum(), spins, create_graph=training, retain_graph=training)
    return -grad
