"""Band energies on a k-grid by the linear tetrahedron method (triangles in 2D, segments in 1D).

At T = 0 in a metal the plain k-grid sum of occupied levels converges slowly and not
monotonically: each twist's occupation jumps from 1 to 0 at the Fermi surface, so the error
oscillates with the grid (Fermi-surface shell effects). The linear tetrahedron method
(Lehmann and Taut 1972; Bloechl, Jepsen and Andersen 1994) interpolates every band linearly
between the grid points of each simplex and integrates min(eps - x, 0) over it exactly: the
Fermi surface is cut where it lies, and the error falls smoothly as 1 / n^2 (the curvature of
the bands within a simplex), so two grids extrapolate it away (:func:`richardson`). Bands are
the sorted levels at each twist (crossings are rounded off by the interpolation, an O(1 / n^2)
error as well).

The twist grid is the one of :func:`klmgraph.electrons.kondo.k_grid_twists` (theta =
2 pi m / n, the last dimension running fastest), periodic in every direction. In 2D every
parallelogram of the grid is cut along its shorter diagonal in k-space (``short_diagonal``).
"""
from __future__ import annotations

import torch

__all__ = ["simplex_energy", "tetrahedron_energy", "richardson", "short_diagonal"]


def _simplices(levels: torch.Tensor, diagonal: int) -> list[torch.Tensor]:
    """Corner levels of every simplex: a list of (B, S, d + 1, M) tensors."""
    if levels.dim() == 3:  # (B, n, M): segments between neighbouring twists
        return [torch.stack([levels, levels.roll(-1, 1)], 2)]
    a = levels
    b, c = levels.roll(-1, 1), levels.roll(-1, 2)
    d = b.roll(-1, 2)
    # the parallelogram (a, b, d, c) cut along a-d (diagonal 0: theta_1 + theta_2) or b-c (1)
    corners = [(a, b, d), (a, c, d)] if diagonal == 0 else [(a, b, c), (b, c, d)]
    flat = [torch.stack(t, -2).flatten(1, 2) for t in corners]  # (B, n1 n2, 3, M) each
    return [torch.cat(flat, 1)]


def simplex_energy(corners: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of min(eps - x, 0) and of the step theta(x - eps) over simplices with linear eps.

    Args:
        corners: eps at the corners of each simplex (2 in 1D, 3 in 2D).
        x: the Fermi level of each configuration.

    Shapes:
        corners: (B, S, d + 1, M), x: (B,) -> energy (B,), count (B,): sums over the M bands of
        the averages over the S simplices.
    """
    e = (corners - x[:, None, None, None]).sort(dim=2).values
    mean = e.mean(2)
    tiny = torch.finfo(e.dtype).tiny
    if e.shape[2] == 2:  # segments: e1 <= e2
        e1, e2 = e.unbind(2)
        d21 = (e2 - e1).clamp(min=tiny)
        cut = (e1 < 0) & (e2 > 0)
        energy = torch.where(e2 <= 0, mean, torch.where(cut, -e1 ** 2 / (2 * d21), 0.0))
        count = torch.where(e2 <= 0, 1.0, torch.where(cut, -e1 / d21, 0.0))
    else:  # triangles: e1 <= e2 <= e3; the fraction below 0 is quadratic in the cut
        e1, e2, e3 = e.unbind(2)
        d21, d31, d32 = ((u - v).clamp(min=tiny) for u, v in ((e2, e1), (e3, e1), (e3, e2)))
        low = (e1 < 0) & (e2 > 0)  # only the e1 corner below 0
        high = (e2 <= 0) & (e3 > 0)  # only the e3 corner above 0
        energy = torch.where(e3 <= 0, mean, 0.0)
        energy = torch.where(high, mean - e3 ** 3 / (3 * d31 * d32), energy)
        energy = torch.where(low, e1 ** 3 / (3 * d21 * d31), energy)
        count = torch.where(e3 <= 0, 1.0, 0.0)
        count = torch.where(high, 1 - e3 ** 2 / (d31 * d32), count)
        count = torch.where(low, e1 ** 2 / (d21 * d31), count)
    return energy.mean(1).sum(-1), count.mean(1).sum(-1)


def short_diagonal(cell: torch.Tensor) -> int:
    """Which diagonal of a 2D twist grid is shorter in k-space: 0 for theta_1 + theta_2, 1 for
    theta_1 - theta_2 (the reciprocal vectors make an obtuse angle for 0).

    Shapes:
        cell: (2, 2) the supercell vectors as rows (Cartesian x, y).
    """
    metric = torch.linalg.inv(cell.to(torch.float64) @ cell.to(torch.float64).T)  # b_a . b_b / (2 pi)^2
    return 0 if float(metric[0, 1]) <= 0 else 1


def tetrahedron_energy(levels: torch.Tensor, grid: tuple[int, ...], num_electrons: int | None = None,
                       diagonal: int = 0, iterations: int = 200) -> torch.Tensor:
    """The T = 0 band energy per supercell of levels on a periodic twist grid.

    Grand canonical (``num_electrons`` None): the levels are measured from mu, and the result
    is sum over bands of the Brillouin-zone mean of min(eps, 0). Canonical: the Fermi level x
    holds num_electrons electrons over the whole tiled lattice (bisection on the interpolated
    count), and the result is the band energy of those electrons, per supercell.

    Args:
        levels: the sorted levels of every twist (the bands).
        grid: (n,) or (n1, n2): the twist grid (the last dimension running fastest).
        num_electrons: electrons of the n1 n2 tiled supercells together (canonical), or None.
        diagonal: 2D only, which diagonal cuts each grid cell (:func:`short_diagonal`).
        iterations: bisection steps at most (canonical).

    Shapes:
        levels: (B, n1 n2, M) -> (B,)

    Raises:
        ValueError: for a 3D grid (tetrahedra are not implemented), a grid that does not match
            the levels, or a grid with fewer than 2 twists in a direction.
    """
    grid = tuple(int(n) for n in grid)
    if not 1 <= len(grid) <= 2:
        raise ValueError(f"the tetrahedron method is implemented for 1D and 2D k-grids, got {list(grid)}")
    if min(grid) < 2:
        raise ValueError(f"the tetrahedron method needs at least 2 twists per direction, got k_grid {list(grid)}")
    if levels.dim() != 3 or levels.shape[1] != torch.Size(grid).numel():
        raise ValueError(f"levels of shape {tuple(levels.shape)} do not hold the {list(grid)} twist grid "
                         "(expected (B, n1 n2, M))")
    simplices = _simplices(levels.reshape(levels.shape[0], *grid, levels.shape[-1]), diagonal)[0]
    zero = torch.zeros(len(levels), dtype=levels.dtype, device=levels.device)
    if num_electrons is None:
        return simplex_energy(simplices, zero)[0]
    target = num_electrons / torch.Size(grid).numel()  # electrons per supercell
    lo, hi = levels.amin((1, 2)) - 1.0, levels.amax((1, 2)) + 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        too_many = simplex_energy(simplices, mid)[1] > target
        hi, lo = torch.where(too_many, mid, hi), torch.where(too_many, lo, mid)
        if bool(((hi - lo) < 1e-14 * (1 + mid.abs())).all()):
            break
    fermi = 0.5 * (lo + hi)
    return simplex_energy(simplices, fermi)[0] + fermi * target


def richardson(energies: torch.Tensor, grids, power: float = 2.0) -> torch.Tensor:
    """The n -> infinity limit of E(n) = E_inf + c / n^power from its values on the two finest
    grids: (n_2^p E_2 - n_1^p E_1) / (n_2^p - n_1^p).

    Args:
        energies: E on each grid, the grid index first.
        grids: the grid sizes n (one number per grid), ascending.

    Shapes:
        energies: (G, ...) -> (...)

    Raises:
        ValueError: for fewer than two grids or grids not ascending.
    """
    grids = [float(n) for n in grids]
    if len(grids) < 2 or len(grids) != len(energies) or grids != sorted(set(grids)):
        raise ValueError(f"richardson needs two or more ascending grids, one per energy, got {grids}")
    w1, w2 = grids[-2] ** power, grids[-1] ** power
    return (w2 * energies[-1] - w1 * energies[-2]) / (w2 - w1)
