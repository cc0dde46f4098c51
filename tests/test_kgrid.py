"""k-grid ED: a periodic supercell with twisted boundary conditions is the tiled lattice, exactly."""
import math

import networkx as nx
import pytest
import torch

import klmgraph

# (lattice, supercell, k-grid, Hamiltonian): both ensembles, T = 0 and T > 0, 2D and 3D, a basis
CASES = {
    "triangular-grand": (klmgraph.triangular_lattice(1.0, 0.0, -0.85), (6, 6), (2, 3), dict(J=-1.0, mu=-3.5)),
    "square-canonical": (klmgraph.square_lattice(), (4, 4), (3, 2), dict(J=7.0, filling=0.48)),
    "kagome-canonical-T": (klmgraph.kagome_lattice(), (2, 2), (2, 2), dict(J=2.0, filling=0.3, temperature=0.1)),
    "honeycomb-grand-T": (klmgraph.honeycomb_lattice(), (2, 3), (3, 2), dict(J=3.0, mu=0.2, temperature=0.2)),
    "cubic-canonical": (klmgraph.cubic_lattice(), (3, 3, 3), (2, 1, 2), dict(J=4.0, filling=0.4)),
}


def first_copy(graph, tiled, copy=None):
    """Indices of the tiled lattice's sites that form one copy of ``graph`` (by default the
    first; ``copy`` = its offset in supercells), in graph order."""
    size = graph.description["size"]
    big = tiled.description["size"]
    nb = graph.num_nodes // math.prod(size)
    cells = torch.cartesian_prod(*[torch.arange(n) for n in size]).reshape(-1, len(size))
    if copy is not None:
        cells = cells + torch.tensor(copy) * torch.tensor(size)
    strides = torch.tensor([math.prod(big[k + 1:]) for k in range(len(big))])
    return ((cells @ strides)[:, None] * nb + torch.arange(nb)).reshape(-1)


@pytest.mark.parametrize("case", list(CASES))
def test_k_grid_equals_tiled_lattice(case):
    lattice, size, grid, params = CASES[case]
    graph = lattice.graph(size)
    spins = klmgraph.random_spins(graph, batch=2, seed=1)
    tiled, tiled_spins = klmgraph.tile_spins(graph, spins, grid)
    ed_k = klmgraph.ExactDiagonalization(graph, k_grid=grid, **params)
    ed_tiled = klmgraph.ExactDiagonalization(tiled, **params)
    assert ed_k.num_electrons == ed_tiled.num_electrons
    e_k, b_k = ed_k.energy_and_field(spins)
    e_t, b_t = ed_tiled.energy_and_field(tiled_spins)
    copies = math.prod(grid)
    torch.testing.assert_close(e_k, e_t / copies, rtol=0, atol=1e-11 * graph.num_nodes)
    # every copy carries the supercell's field
    torch.testing.assert_close(b_t[:, first_copy(graph, tiled)], b_k, rtol=0, atol=1e-11)
    last = first_copy(graph, tiled, copy=[n - 1 for n in grid])
    torch.testing.assert_close(b_t[:, last], b_k, rtol=0, atol=1e-11)


def test_degenerate_shell_shared_over_twists():
    """A ferromagnet fills a degenerate shell at the Fermi level; the k-grid shares it as the
    tiled lattice does (the electrons are counted over all twists together)."""
    graph = klmgraph.square(4, 4)
    spins = klmgraph.ferromagnet(graph, direction=(1.0, 2.0, 2.0))
    tiled, tiled_spins = klmgraph.tile_spins(graph, spins, (2, 2))
    params = dict(J=2.0, filling=0.3)
    e_k, b_k = klmgraph.ExactDiagonalization(graph, k_grid=(2, 2), **params).energy_and_field(spins)
    e_t, b_t = klmgraph.ExactDiagonalization(tiled, **params).energy_and_field(tiled_spins)
    torch.testing.assert_close(e_k, e_t / 4, rtol=0, atol=1e-11)
    torch.testing.assert_close(b_k, b_t[first_copy(graph, tiled)], rtol=0, atol=1e-11)
    # and the field is uniform, as the symmetry demands
    assert float((b_k - b_k[0]).abs().max()) < 1e-12


def test_batched_and_split_calls_equal_one_by_one():
    graph = klmgraph.triangular(5, 5, t3=-0.85)
    spins = klmgraph.random_spins(graph, batch=3, seed=2)
    for params in (dict(J=-1.0, mu=-3.5), dict(J=-1.0, filling=0.2)):
        whole = klmgraph.ExactDiagonalization(graph, k_grid=(3, 2), **params)
        # one Hamiltonian per batched eigh call: the calls split configurations and twists
        small = klmgraph.ExactDiagonalization(graph, k_grid=(3, 2), max_batch_bytes=1, **params)
        e, b = whole.energy_and_field(spins)
        for i in range(3):
            e_i, b_i = small.energy_and_field(spins[i])
            torch.testing.assert_close(e_i, e[i], rtol=0, atol=1e-12)
            torch.testing.assert_close(b_i, b[i], rtol=0, atol=1e-13)


def test_gamma_grid_is_todays_ed_bit_for_bit():
    graph = klmgraph.square(6, 6)
    spins = klmgraph.random_spins(graph, batch=2, seed=4)
    for params in (dict(J=7.0, filling=0.48), dict(J=7.0, mu=0.5, temperature=0.1)):
        e0, b0 = klmgraph.ExactDiagonalization(graph, **params).energy_and_field(spins)
        e1, b1 = klmgraph.ExactDiagonalization(graph, k_grid=(1, 1), **params).energy_and_field(spins)
        assert torch.equal(e0, e1) and torch.equal(b0, b1)
    assert klmgraph.ExactDiagonalization(graph, J=1.0, mu=0.0, k_grid=(1, 1)).parameters() == \
        klmgraph.ExactDiagonalization(graph, J=1.0, mu=0.0).parameters()


def test_twisted_hamiltonian_is_hermitian_and_gamma_at_zero():
    ed = klmgraph.ExactDiagonalization(klmgraph.kagome(2, 3), J=2.0, filling=0.4)
    spins = klmgraph.random_spins(ed.graph, seed=7)
    h = ed.hamiltonian(spins, twist=(0.7, -1.9))
    assert float((h - h.mH).abs().max()) < 1e-14
    assert torch.equal(ed.hamiltonian(spins, twist=(0.0, 0.0)), ed.hamiltonian(spins))
    # a twist of 2 pi is no twist: the phases are periodic
    torch.testing.assert_close(ed.hamiltonian(spins, twist=(2 * math.pi, 0.0)), ed.hamiltonian(spins),
                               rtol=0, atol=1e-13)


def test_k_grid_parameters_and_solver_name():
    ed = klmgraph.ExactDiagonalization(klmgraph.square(4, 4), J=7.0, filling=0.5, k_grid=(4, 2))
    assert ed.parameters()["k_grid"] == [4, 2]
    assert ed.num_electrons == 2 * 16 * 8 // 2
    assert ed.solver == "ED, k-grid 4x2"
    assert klmgraph.ExactDiagonalization(klmgraph.square(4, 4), J=7.0, filling=0.5).solver == "ED at Gamma"


@pytest.mark.parametrize("k_grid, match", [((0, 2), "positive"), ((-1, 1), "positive"), ((2,), "2 dimensions"),
                                           ((2.5, 2), "integers"), ("22", "integers"), ((1, 1, 1, 1), "1 to 3")])
def test_bad_k_grid(k_grid, match):
    with pytest.raises(ValueError, match=match):
        klmgraph.ExactDiagonalization(klmgraph.square(4, 4), J=1.0, mu=0.0, k_grid=k_grid)


def test_k_grid_refuses_open_and_irregular_graphs():
    with pytest.raises(ValueError, match="periodic boundaries"):
        klmgraph.ExactDiagonalization(klmgraph.square(4, 4, periodic=False), J=1.0, mu=0.0, k_grid=(2, 2))
    with pytest.raises(ValueError, match="no supercell"):
        klmgraph.ExactDiagonalization(klmgraph.from_networkx(nx.cycle_graph(6)), J=1.0, mu=0.0, k_grid=(2,))
    # Gamma is still fine on both
    klmgraph.ExactDiagonalization(klmgraph.square(4, 4, periodic=False), J=1.0, mu=0.0, k_grid=(1, 1))


def test_tile_spins_checks():
    graph = klmgraph.square(3, 3)
    with pytest.raises(ValueError, match="positive integers"):
        klmgraph.tile_spins(graph, klmgraph.random_spins(graph), (2, 0))
    with pytest.raises(ValueError, match="periodic Bravais"):
        g = klmgraph.square(3, 3, periodic=False)
        klmgraph.tile_spins(g, klmgraph.random_spins(g), (2, 2))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("gamma", [False, True])
def test_energy_alone_equals_energy_and_field(case, gamma):
    # eigenvalues only: the same energy as the full solve, both ensembles, T = 0 and T > 0
    lattice, size, grid, params = CASES[case]
    graph = lattice.graph(size)
    spins = klmgraph.random_spins(graph, batch=2, seed=3)
    ed = klmgraph.ExactDiagonalization(graph, k_grid=None if gamma else grid, max_batch_bytes=2 ** 20, **params)
    torch.testing.assert_close(ed.energy(spins), ed.energy_and_field(spins)[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(ed.energy(spins[1]), ed.energy_and_field(spins[1])[0], rtol=0, atol=1e-10)
