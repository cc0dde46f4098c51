"""The linear tetrahedron method: T = 0 band energies on k-grids against closed forms."""
import math

import numpy as np
import pytest
import torch

import klmgraph
from klmgraph.electrons.tetrahedron import richardson, short_diagonal, tetrahedron_energy


def chain(length):
    lattice = klmgraph.BravaisLattice(vectors=[(1.0, 0.0)], basis=[(0.0, 0.0)], hoppings=[(0, 0, (1,), 1.0)])
    return lattice.graph((length,))


def band_1d(m):
    """Per site and spin, T = 0: the mean over k of min(-2 cos k - m, 0) (grand potential of a chain)."""
    kf = np.arccos(np.clip(-m / 2, -1.0, 1.0))
    return (-4 * np.sin(kf) - 2 * m * kf) / (2 * np.pi)


def band_2d(mu):
    """The square lattice's T = 0 grand potential per site and spin: the chain's over k1 with
    mu + 2 cos k1, Gauss-Legendre between the k1 where a subband empties or fills."""
    kinks = [np.arccos(c) for c in ((-2 - mu) / 2, (2 - mu) / 2) if -1 < c < 1]
    edges = np.unique([0.0, np.pi, *kinks])
    x, w = np.polynomial.legendre.leggauss(200)
    total = 0.0
    for a, b in zip(edges, edges[1:]):
        k = 0.5 * (b - a) * x + 0.5 * (b + a)
        total += 0.5 * (b - a) * np.sum(w * band_1d(mu + 2 * np.cos(k)))
    return total / np.pi


def test_chain_grand_canonical_converges_as_one_over_n_squared():
    graph = chain(3)
    spins = klmgraph.ferromagnet(graph)
    J, mu = 1.0, -0.3  # exchange splits the bands to effective mu +- J/2
    exact = 3 * (band_1d(mu + J / 2) + band_1d(mu - J / 2))  # per 3-site supercell
    errors, tetra = {}, []
    for n in (32, 64, 128):
        ed = klmgraph.ExactDiagonalization(graph, J=J, mu=mu, k_grid=(n,))
        tetra.append(float(ed.energy(spins, integration="tetrahedron")))
        errors[n] = tetra[-1] - exact
        errors[n, "sum"] = float(ed.energy(spins)) - exact
    assert 3.5 < errors[32] / errors[64] < 4.5 and 3.5 < errors[64] / errors[128] < 4.5  # smooth 1 / n^2
    limit = float(richardson(torch.tensor(tetra), (32, 64, 128)))
    # the plain sum is 2.4e-5 off at 128 and not monotonic in n
    assert abs(limit - exact) < 1e-7 and abs(errors[128, "sum"]) > 1e-5


def test_chain_canonical_closed_form():
    graph = chain(3)
    filling = 0.3  # J = 0: each spin's Fermi sea is |k| < pi n
    exact = 3 * 2 * (-2 * math.sin(math.pi * filling) / math.pi)
    energies = []
    for n in (20, 40):  # 2 * 3 * 0.3 * n electrons: whole numbers
        ed = klmgraph.ExactDiagonalization(graph, J=0.0, filling=filling, k_grid=(n,))
        energies.append(ed.energy(klmgraph.ferromagnet(graph), integration="tetrahedron"))
    assert abs(float(richardson(torch.stack(energies), (20, 40))) - exact) < 1e-6
    assert abs(float(energies[1]) - exact) < 5e-3


@pytest.mark.parametrize("mu", [-1.0, 0.7])
def test_square_lattice_against_quadrature(mu):
    """2D triangles: the error falls as 1 / n^2 and the extrapolation meets the quadrature (the 3 x 3
    supercell folds the band into crossing ones, whose kinks leave an O(1 / n^3) remainder)."""
    graph = klmgraph.square(3, 3)
    exact = 9 * 2 * band_2d(mu)
    spins = klmgraph.ferromagnet(graph)
    tetra = torch.stack([klmgraph.ExactDiagonalization(graph, J=0.0, mu=mu, k_grid=(n, n)).energy(
        spins, integration="tetrahedron") for n in (32, 64)])
    ratio = float(tetra[0] - exact) / float(tetra[1] - exact)
    assert 3.8 < ratio < 4.2
    assert abs(float(richardson(tetra, (32, 64))) - exact) < 2e-5 < abs(float(tetra[1] - exact)) / 50


def test_batch_and_diagonal():
    graph = klmgraph.triangular(6, 6, t1=1.0, t3=-0.85)
    spins = klmgraph.random_spins(graph, batch=2, seed=3)
    ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5, k_grid=(4, 4))
    both = ed.energy(spins, integration="tetrahedron")
    one = torch.stack([ed.energy(s, integration="tetrahedron") for s in spins])
    torch.testing.assert_close(both, one, rtol=0, atol=1e-12)
    # on the grid points the interpolation is exact: a flat band's energy is the plain sum's
    levels = torch.full((1, 16, 1), -0.25, dtype=torch.float64)
    for diagonal in (0, 1):
        assert float(tetrahedron_energy(levels, (4, 4), diagonal=diagonal)) == pytest.approx(-0.25, abs=1e-15)


def test_short_diagonal_cuts_along_the_shorter_reciprocal_diagonal():
    """A 60 degree cell has reciprocal vectors at 120 degrees (b1 + b2 is the short diagonal, 0), a
    120 degree cell the reverse (1); on a dispersive band both cuts reach one limit, the short one
    with the smaller error."""
    root3 = 3 ** 0.5
    assert short_diagonal(torch.tensor([[1.0, 0.0], [0.5, root3 / 2]])) == 0
    assert short_diagonal(torch.tensor([[1.0, 0.0], [-0.5, root3 / 2]])) == 1
    graph = klmgraph.triangular(3, 3)  # klmgraph's triangular vectors are 120 degrees apart
    short = short_diagonal(graph.cell[:2, :2])
    assert short == 1
    spins = klmgraph.ferromagnet(graph)
    ed = klmgraph.ExactDiagonalization(graph, J=0.0, mu=-1.0, k_grid=(64, 64))
    levels = ed.twist_levels(spins[None]).reshape(1, 64, 64, -1) + 1.0  # measured from mu
    grids = (16, 32, 64)
    energies = {d: torch.stack([tetrahedron_energy(levels[:, ::64 // n, ::64 // n].reshape(1, n * n, -1), (n, n),
                                                   diagonal=d)[0] for n in grids]) for d in (0, 1)}
    limit = {d: float(richardson(energies[d][1:], grids[1:])) for d in (0, 1)}
    assert abs(limit[0] - limit[1]) < 1e-4
    assert abs(float(energies[short][1]) - limit[short]) < abs(float(energies[1 - short][1]) - limit[short])


def test_errors_name_the_problem():
    graph = chain(3)
    spins = klmgraph.ferromagnet(graph)
    with pytest.raises(ValueError, match="integration must be"):
        klmgraph.ExactDiagonalization(graph, J=1.0, mu=0.0, k_grid=(4,)).energy(spins, integration="simpson")
    with pytest.raises(ValueError, match="needs a k-grid and temperature 0"):
        klmgraph.ExactDiagonalization(graph, J=1.0, mu=0.0).energy(spins, integration="tetrahedron")
    with pytest.raises(ValueError, match="needs a k-grid and temperature 0"):
        klmgraph.ExactDiagonalization(graph, J=1.0, mu=0.0, temperature=0.1, k_grid=(4,)).energy(
            spins, integration="tetrahedron")
    with pytest.raises(ValueError, match="1D and 2D"):
        tetrahedron_energy(torch.zeros(1, 8, 2), (2, 2, 2))
    with pytest.raises(ValueError, match="tetrahedron_energy needs a k-grid"):
        klmgraph.ExactDiagonalization(graph, J=1.0, mu=0.0).tetrahedron_energy(torch.zeros(1, 1, 6))
    with pytest.raises(ValueError, match="two or more ascending grids"):
        richardson(torch.zeros(2), (32, 16))


def test_nested_grid_is_a_slice_of_the_finer_one():
    graph = klmgraph.triangular(6, 6, t1=1.0, t3=-0.85)
    spins = klmgraph.random_spins(graph, seed=5)
    fine = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5, k_grid=(4, 6))
    coarse = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5, k_grid=(2, 3))
    sliced = fine.twist_levels(spins).reshape(4, 6, -1)[::2, ::2].reshape(1, 6, -1)
    torch.testing.assert_close(sliced[0], coarse.twist_levels(spins), rtol=0, atol=1e-12)
    torch.testing.assert_close(fine.tetrahedron_energy(sliced, (2, 3)),
                               coarse.energy(spins[None], integration="tetrahedron"), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="needs a k-grid"):
        klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5).twist_levels(spins)
