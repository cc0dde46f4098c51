"""Input checks shared by every stage (the bottom layer: imports nothing from klmgraph)."""
from __future__ import annotations

import torch

__all__ = ["check_spins"]


def check_spins(spins: torch.Tensor, num_sites: int, tol: float = 1e-6) -> torch.Tensor:
    """Validate a spin configuration; returns it as a tensor.

    Args:
        spins: (N, 3) or (batch, N, 3) unit vectors.
        num_sites: N expected by the graph.
        tol: allowed deviation of |S| from 1.

    Raises:
        ValueError: on a wrong shape, a wrong number of sites, NaN/inf, or non-unit length.

    The value checks cost two host synchronisations on a GPU: call it once per run, not per
    step. Tensors on the ``meta`` device hold no values; only their shape is checked.
    """
    spins = torch.as_tensor(spins)
    if spins.dim() not in (2, 3) or spins.shape[-1] != 3:
        raise ValueError(f"spins must have shape (N, 3) or (batch, N, 3), got {tuple(spins.shape)}")
    if spins.shape[-2] != num_sites:
        raise ValueError(f"spins hold {spins.shape[-2]} sites but the graph has {num_sites}")
    if not spins.is_floating_point():
        raise ValueError(f"spins must be a floating-point tensor, got {spins.dtype}")
    if spins.device.type == "meta":  # no values to check (shape-only runs that prove device code)
        return spins
    if not torch.isfinite(spins).all():
        bad = (~torch.isfinite(spins)).any(-1).nonzero()[0].tolist()
        raise ValueError(f"spins contain NaN or infinite values (first at index {tuple(bad)})")
    deviation = (spins.detach().norm(dim=-1) - 1).abs()
    if deviation.max() > tol:
        where = tuple(divmod(int(deviation.argmax()), num_sites)) if spins.dim() == 3 else int(deviation.argmax())
        raise ValueError(f"spins must be unit vectors: |S| deviates from 1 by {float(deviation.max()):.3g} "
                         f"(> {tol:g}) at index {where}")
    return spins
