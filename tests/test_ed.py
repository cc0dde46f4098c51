import math

import numpy as np
import pytest
import torch

import klmgraph
from conftest import random_rotation


def _momenta(L1, L2):
    """Phases theta_k = k . a_k on the L1 x L2 reciprocal grid, each (L1 * L2,)."""
    m1, m2 = np.meshgrid(np.arange(L1), np.arange(L2), indexing="ij")
    return 2 * np.pi * m1.ravel() / L1, 2 * np.pi * m2.ravel() / L2


def _free_energy_canonical(bands, num_electrons):
    """Sum of the lowest N_e levels of spin-degenerate bands."""
    levels = np.sort(np.repeat(np.concatenate(bands), 2))
    return levels[:num_electrons].sum()


def test_golden_square(golden_square):
    d = golden_square
    ed = klmgraph.ExactDiagonalization(klmgraph.square(6, 6, t1=float(d["t1"])), J=float(d["J"]),
                                       filling=float(d["filling"]))
    assert ed.num_electrons == int(d["n_electrons"])
    energy, field = ed.energy_and_field(torch.from_numpy(d["spins"]))
    np.testing.assert_allclose(energy.numpy(), d["energy"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(field.numpy(), d["field"], rtol=0, atol=1e-10)


def test_golden_triangular(golden_triangular):
    d = golden_triangular
    graph = klmgraph.triangular(12, 12, t1=float(d["t1"]), t3=float(d["t3"]))
    ed = klmgraph.ExactDiagonalization(graph, J=float(d["J"]), mu=float(d["mu"]))
    energy, field = ed.energy_and_field(torch.from_numpy(d["spins"]))
    np.testing.assert_allclose(energy.numpy(), d["energy"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(field.numpy(), d["field"], rtol=0, atol=1e-10)


def _ed_cases():
    return {
        "square-canonical": klmgraph.ExactDiagonalization(klmgraph.square(4, 4), J=7.0, filling=0.48),
        "triangular-grand": klmgraph.ExactDiagonalization(klmgraph.triangular(5, 5, t3=-0.85), J=-1.0, mu=-3.5),
        "kagome-finite-T": klmgraph.ExactDiagonalization(klmgraph.kagome(2, 2), J=2.0, filling=0.3, temperature=0.3),
        "honeycomb-grand-finite-T": klmgraph.ExactDiagonalization(klmgraph.honeycomb(3, 2), J=3.0, mu=0.2,
                                                                  temperature=0.2),
        # k-grid ED: B = -dE/dS of the energy per supercell
        "triangular-grand-k-grid": klmgraph.ExactDiagonalization(klmgraph.triangular(5, 5, t3=-0.85), J=-1.0,
                                                                 mu=-3.5, k_grid=(3, 2)),
        "triangular-canonical-k-grid": klmgraph.ExactDiagonalization(klmgraph.triangular(5, 5, t3=-0.85), J=3.0,
                                                                     filling=0.35, k_grid=(3, 2)),
        "triangular-canonical-finite-T-k-grid": klmgraph.ExactDiagonalization(
            klmgraph.triangular(5, 5, t3=-0.85), J=3.0, filling=0.35, temperature=0.1, k_grid=(3, 2)),
    }


@pytest.mark.parametrize("case", list(_ed_cases()))
def test_field_is_minus_gradient(case):
    """B = -dE/dS against central differences of every spin component (unconstrained)."""
    ed = _ed_cases()[case]
    spins = klmgraph.random_spins(ed.graph, seed=3)[None]
    _, field = ed._solve(spins)
    h = 1e-5
    numeric = torch.zeros_like(spins)
    for site in range(0, ed.num_sites, max(1, ed.num_sites // 5)):
        for a in range(3):
            plus, minus = spins.clone(), spins.clone()
            plus[0, site, a] += h
            minus[0, site, a] -= h
            numeric[0, site, a] = -(ed._solve(plus)[0] - ed._solve(minus)[0]) / (2 * h)
            assert abs(float(numeric[0, site, a] - field[0, site, a])) < 1e-7


def test_field_is_tangent_gradient_public_api():
    """The same through the public API: rotate one spin about an axis, dE/dphi = -B . (n x S)."""
    graph = klmgraph.square(4, 4)
    ed = klmgraph.ExactDiagonalization(graph, J=4.0, filling=0.4)
    spins = klmgraph.random_spins(graph, seed=1)
    _, field = ed.energy_and_field(spins)
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    axis /= axis.norm()

    def rotated(phi):
        s = spins.clone()
        v = s[5]
        s[5] = v * math.cos(phi) + torch.linalg.cross(axis, v) * math.sin(phi) + axis * (axis @ v) * (1 - math.cos(phi))
        return ed.energy_and_field(s)[0]

    h = 1e-5
    derivative = (rotated(h) - rotated(-h)) / (2 * h)
    assert abs(float(derivative + field[5] @ torch.linalg.cross(axis, spins[5]))) < 1e-7


@pytest.mark.parametrize("k_grid", [None, (2, 2)])
def test_rotation_invariance(k_grid):
    graph = klmgraph.triangular(5, 5, t3=-0.85)
    ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5, k_grid=k_grid)
    spins = klmgraph.random_spins(graph, batch=2, seed=2)
    R = random_rotation(4)
    e0, b0 = ed.energy_and_field(spins)
    e1, b1 = ed.energy_and_field(spins @ R.T)
    torch.testing.assert_close(e1, e0, rtol=0, atol=1e-12)
    torch.testing.assert_close(b1, b0 @ R.T, rtol=0, atol=1e-12)


def test_translation_permutes_field():
    graph = klmgraph.square(6, 4, t2=0.3)
    ed = klmgraph.ExactDiagonalization(graph, J=5.0, filling=0.3)
    spins = klmgraph.random_spins(graph, seed=5)
    perm = klmgraph.site_permutation(graph, translation=(2.0, 1.0))
    moved = torch.empty_like(spins)
    moved[perm] = spins
    e0, b0 = ed.energy_and_field(spins)
    e1, b1 = ed.energy_and_field(moved)
    torch.testing.assert_close(e1, e0, rtol=0, atol=1e-10)
    torch.testing.assert_close(b1[perm], b0, rtol=0, atol=1e-10)


def test_point_group_permutes_field():
    """Augmentation consistency: the ED field of a configuration moved by a point-group operation
    (the rotations of C6v and its mirrors) is the permuted field."""
    graph = klmgraph.triangular(6, 6, t3=-0.85)
    ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5)
    spins = klmgraph.random_spins(graph, seed=6)
    e0, b0 = ed.energy_and_field(spins)
    for perm in graph.symmetry_perm[1:]:
        moved = torch.empty_like(spins)
        moved[perm] = spins
        e1, b1 = ed.energy_and_field(moved)
        torch.testing.assert_close(e1, e0, rtol=0, atol=1e-10)
        torch.testing.assert_close(b1[perm], b0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["square", "triangular", "honeycomb", "kagome"])
def test_free_band_dispersion(name):
    """J = 0: the energy is the sum over the closed-form Bloch bands."""
    L1, L2 = 6, 6
    th1, th2 = _momenta(L1, L2)
    if name == "square":
        graph, bands = klmgraph.square(L1, L2, t2=0.3), [-2 * (np.cos(th1) + np.cos(th2))
                                                          - 2 * 0.3 * (np.cos(th1 + th2) + np.cos(th1 - th2))]
    elif name == "triangular":
        t1, t2, t3 = 1.0, 0.2, -0.85
        graph = klmgraph.triangular(L1, L2, t1=t1, t2=t2, t3=t3)
        bands = [-2 * t1 * (np.cos(th1) + np.cos(th2) + np.cos(th1 + th2))
                 - 2 * t2 * (np.cos(th1 - th2) + np.cos(th1 + 2 * th2) + np.cos(2 * th1 + th2))
                 - 2 * t3 * (np.cos(2 * th1) + np.cos(2 * th2) + np.cos(2 * th1 + 2 * th2))]
    elif name == "honeycomb":
        graph = klmgraph.honeycomb(L1, L2)
        f = np.abs(1 + np.exp(-1j * th1) + np.exp(-1j * th2))
        bands = [-f, f]
    else:
        graph = klmgraph.kagome(L1, L2)
        c = np.cos(th1 / 2) * np.cos(th2 / 2) * np.cos((th1 - th2) / 2)
        root = np.sqrt(1 + 8 * c)
        bands = [np.full_like(th1, 2.0), -(1 + root), -(1 - root)]  # the flat band sits at +2t
    spins = klmgraph.random_spins(graph, seed=0)
    for filling in (0.25, 0.5, 0.8):
        ed = klmgraph.ExactDiagonalization(graph, J=0.0, filling=filling)
        energy, field = ed.energy_and_field(spins)
        assert abs(float(energy) - _free_energy_canonical(bands, ed.num_electrons)) < 1e-9
        assert float(field.abs().max()) == 0.0


def test_kagome_flat_band_degeneracy():
    graph = klmgraph.kagome(4, 4)
    ed = klmgraph.ExactDiagonalization(graph, J=0.0, mu=0.0)
    levels = torch.linalg.eigvalsh(ed.hamiltonian(klmgraph.ferromagnet(graph)))
    # L1 L2 flat-band states per spin, plus one band touching at Gamma
    assert int(((levels - 2.0).abs() < 1e-9).sum()) == 2 * (16 + 1)


def _shell_occupations(levels, num_electrons, tol=1e-9):
    """T -> 0+ occupations: a degenerate shell at the Fermi level shares its electrons equally."""
    fermi = np.sort(levels)[num_electrons - 1]
    below = levels < fermi - tol
    shell = np.abs(levels - fermi) <= tol
    return below + shell * (num_electrons - below.sum()) / shell.sum()


@pytest.mark.parametrize("J, filling", [(7.0, 0.1), (7.0, 0.3), (-3.0, 0.1), (-3.0, 0.3)])
def test_ferromagnet_closed_form(J, filling):
    """All spins along n: bands eps_k -+ |J|/2; B = (|J|/2) (n_aligned - n_anti)/N n on every site,
    with the Fermi shell (partly filled at these fillings) shared equally."""
    L = 6
    graph = klmgraph.square(L, L)
    th1, th2 = _momenta(L, L)
    eps = -2 * (np.cos(th1) + np.cos(th2))
    n = torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64) / 3
    ed = klmgraph.ExactDiagonalization(graph, J=J, filling=filling)
    energy, field = ed.energy_and_field(klmgraph.ferromagnet(graph, n))
    levels = np.concatenate([eps - abs(J) / 2, eps + abs(J) / 2])
    # the lower band has spin along sign(J) n, so (J/2) <sigma> = (|J|/2) polarisation n
    polarisation = np.concatenate([np.ones_like(eps), -np.ones_like(eps)])
    f = _shell_occupations(levels, ed.num_electrons)
    assert abs(float(energy) - (f * levels).sum()) < 1e-9
    expected = (abs(J) / 2) * (f * polarisation).sum() / L**2 * n
    torch.testing.assert_close(field, expected.expand(L * L, 3), rtol=0, atol=1e-9)


def test_grand_canonical_ferromagnet():
    graph = klmgraph.triangular(6, 6)
    th1, th2 = _momenta(6, 6)
    eps = -2 * (np.cos(th1) + np.cos(th2) + np.cos(th1 + th2))
    ed = klmgraph.ExactDiagonalization(graph, J=2.0, mu=-1.3)
    energy, _ = ed.energy_and_field(klmgraph.ferromagnet(graph))
    levels = np.concatenate([eps - 1.0, eps + 1.0]) + 1.3
    assert abs(float(energy) - levels[levels < 0].sum()) < 1e-9


def test_zero_temperature_limit():
    graph = klmgraph.triangular(5, 5, t3=-0.85)
    spins = klmgraph.random_spins(graph, batch=2, seed=8)
    for kwargs in ({"mu": -3.5}, {"filling": 0.3}):
        e0, b0 = klmgraph.ExactDiagonalization(graph, J=-1.0, **kwargs).energy_and_field(spins)
        e1, b1 = klmgraph.ExactDiagonalization(graph, J=-1.0, temperature=1e-4, **kwargs).energy_and_field(spins)
        torch.testing.assert_close(e1, e0, rtol=0, atol=1e-8)
        torch.testing.assert_close(b1, b0, rtol=0, atol=1e-8)
        # and a real temperature changes the answer
        e2, _ = klmgraph.ExactDiagonalization(graph, J=-1.0, temperature=0.5, **kwargs).energy_and_field(spins)
        assert float((e2 - e0).abs().min()) > 1e-3


def test_canonical_equals_grand_canonical_in_gap():
    graph = klmgraph.square(4, 4)
    spins = klmgraph.random_spins(graph, seed=9)
    canonical = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
    levels = torch.linalg.eigvalsh(canonical.hamiltonian(spins))
    ne = canonical.num_electrons
    mu = float(levels[ne - 1] + levels[ne]) / 2
    assert float(levels[ne] - levels[ne - 1]) > 1e-3  # there is a gap to sit in
    e_c, b_c = canonical.energy_and_field(spins)
    e_g, b_g = klmgraph.ExactDiagonalization(graph, J=7.0, mu=mu).energy_and_field(spins)
    assert abs(float(e_g - (e_c - mu * ne))) < 1e-9
    torch.testing.assert_close(b_g, b_c, rtol=0, atol=1e-10)


def test_time_reversal_and_hermiticity():
    graph = klmgraph.triangular(5, 5, t2=0.4, t3=-0.85)
    ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5)
    spins = klmgraph.random_spins(graph, batch=2, seed=10)
    e0, b0 = ed.energy_and_field(spins)
    e1, b1 = ed.energy_and_field(-spins)
    torch.testing.assert_close(e1, e0, rtol=0, atol=1e-10)
    torch.testing.assert_close(b1, -b0, rtol=0, atol=1e-10)
    h = ed.hamiltonian(spins)
    assert h.shape == (2, 50, 50)
    torch.testing.assert_close(h, h.conj().transpose(-1, -2), rtol=0, atol=0)


def test_complex_hopping_hamiltonian_is_hermitian():
    lattice = klmgraph.BravaisLattice([(1, 0), (0, 1)], [(0, 0)],
                                      [(0, 0, (1, 0), complex(math.cos(0.3), math.sin(0.3))), (0, 0, (0, 1), 1.0)])
    graph = lattice.graph((4, 4))
    ed = klmgraph.ExactDiagonalization(graph, J=2.0, filling=0.4)
    h = ed.hamiltonian(klmgraph.random_spins(graph, seed=0))
    torch.testing.assert_close(h, h.conj().T, rtol=0, atol=0)
    assert float(h.imag.abs().max()) > 0.2


def test_batch_equals_one_by_one_and_dtype():
    graph = klmgraph.square(4, 4)
    ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
    spins = klmgraph.random_spins(graph, batch=3, seed=11)
    energy, field = ed.energy_and_field(spins)
    assert energy.shape == (3,) and field.shape == (3, 16, 3)
    for k in range(3):
        e, b = ed.energy_and_field(spins[k])
        assert e.shape == () and torch.allclose(e, energy[k], atol=1e-12) and torch.allclose(b, field[k], atol=1e-12)
    e32, b32 = ed.energy_and_field(spins.float())
    assert e32.dtype == torch.float32 and b32.dtype == torch.float32
    assert torch.allclose(e32.double(), energy, rtol=1e-6)


@pytest.mark.parametrize("spins, message", [
    (torch.zeros(16, 3), "unit vectors"),
    (torch.full((16, 3), float("nan")), "NaN"),
    (torch.ones(15, 3) / math.sqrt(3), "15 sites but the graph has 16"),
    (torch.ones(16, 2), "shape"),
    (torch.ones(16, 3, dtype=torch.int64), "floating-point"),
])
def test_bad_spins(spins, message):
    ed = klmgraph.ExactDiagonalization(klmgraph.square(4, 4), J=7.0, filling=0.48)
    with pytest.raises(ValueError, match=message):
        ed.energy_and_field(spins)


def test_slightly_non_unit_spins_rejected():
    graph = klmgraph.square(4, 4)
    ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
    spins = klmgraph.random_spins(graph, seed=0)
    ed.energy_and_field(spins * (1 + 5e-7))
    with pytest.raises(ValueError, match="deviates from 1 by 2e-06"):
        ed.energy_and_field(spins * (1 + 2e-6))


@pytest.mark.parametrize("kwargs, message", [
    ({"filling": 1.2}, r"filling must lie in \(0, 1\)"),
    ({"filling": 0.0}, r"filling must lie in \(0, 1\)"),
    ({"filling": 0.01}, "gives 0 electrons"),
    ({"filling": 0.4, "mu": 0.0}, "exactly one of filling"),
    ({}, "exactly one of filling"),
    ({"mu": 0.0, "temperature": -1.0}, "temperature must be >= 0"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        klmgraph.ExactDiagonalization(klmgraph.square(4, 4), J=7.0, **kwargs)
