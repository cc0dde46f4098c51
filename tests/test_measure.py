"""Observables: triangulation, skyrmion number, structure factor, magnetic cell, locality."""
import math

import pytest
import torch

import klmgraph
from klmgraph.dynamics import Heisenberg
from klmgraph.measure import (abs_mz, elementary_triangles, energy_per_site, locality, magnetic_cell_sites,
                              magnetization, minimum_image_distance, skyrmion_number,
                              skyrmion_number_per_cell, structure_factor)

LATTICES = {
    "square": lambda: klmgraph.square(6, 6),
    "triangular": lambda: klmgraph.triangular(6, 6),
    "honeycomb": lambda: klmgraph.honeycomb(4, 4),
    "kagome": lambda: klmgraph.kagome(4, 4),
}


def analytic_skyrmion(graph, radius, core=-1.0, vorticity=1, helicity=0.0):
    """S = (sin t cos p, sin t sin p, cos t) around the supercell centre (minimum image),
    t = pi (1 - r / R) inside R with the core along core * z, uniform outside; p = m phi + helicity."""
    centre = graph.cell[:2].sum(0) / 2 + torch.tensor([0.123, 0.0571, 0.0], dtype=torch.float64)
    delta = graph.pos - centre
    frac = delta @ torch.linalg.pinv(graph.cell[:2])
    delta = delta - torch.round(frac) @ graph.cell[:2]
    r = delta[:, :2].norm(dim=-1)
    theta = torch.where(r < radius, math.pi * (1 - r / radius), torch.zeros_like(r))
    phi = vorticity * torch.atan2(delta[:, 1], delta[:, 0]) + helicity
    s = torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], -1)
    return s * torch.tensor([1.0, 1.0, -core], dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(LATTICES))
def test_triangles_tile_the_supercell_once(name):
    graph = LATTICES[name]()
    tri, area = elementary_triangles(graph)
    cell_area = abs(float(torch.linalg.det(graph.cell[:2, :2])))
    assert float(area.sum()) == pytest.approx(cell_area, rel=1e-12)
    # a closed surface: every directed edge of the triangles occurs once, and so does its reverse
    edges = torch.cat([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    keys = edges[:, 0] * graph.num_nodes + edges[:, 1]
    assert len(torch.unique(keys)) == len(keys)
    reverse = edges[:, 1] * graph.num_nodes + edges[:, 0]
    assert torch.equal(torch.sort(keys).values, torch.sort(reverse).values)
    # counter-clockwise and elementary: corners are nearest neighbours in the unwrapped geometry
    spins = klmgraph.random_spins(graph, batch=4, seed=0)
    n_sk = skyrmion_number(graph, spins)
    torch.testing.assert_close(n_sk, torch.round(n_sk), atol=1e-10, rtol=0)


def test_triangles_on_open_boundaries_and_errors():
    tri, area = elementary_triangles(klmgraph.square(5, 4, periodic=False))
    assert len(tri) == 2 * 4 * 3 and float(area.sum()) == pytest.approx(12.0)
    with pytest.raises(ValueError, match="2D lattice"):
        elementary_triangles(klmgraph.cubic(3, 3, 3))
    import networkx as nx
    with pytest.raises(ValueError, match="2D lattice"):
        skyrmion_number(klmgraph.from_networkx(nx.cycle_graph(4)), klmgraph.ferromagnet(4))


@pytest.mark.parametrize("builder", [klmgraph.square, klmgraph.triangular])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_analytic_skyrmion_has_unit_charge(builder, dtype):
    graph = builder(40, 40)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for core, vorticity, expected in [(-1.0, 1, -1.0), (1.0, 1, 1.0), (-1.0, -1, 1.0)]:
        for helicity in (0.0, math.pi / 2):
            s = analytic_skyrmion(graph, 12.0, core, vorticity, helicity).to(dtype)
            assert float(skyrmion_number(graph, s)) == pytest.approx(expected, abs=tol)
    assert float(skyrmion_number(graph, klmgraph.ferromagnet(graph, (0.3, 0.2, 1.0)))) == pytest.approx(0, abs=1e-12)
    # the same texture, cut out by open boundaries, still carries nearly all of its charge
    open_graph = builder(40, 40, periodic=False)
    s = analytic_skyrmion(graph, 12.0)
    assert float(skyrmion_number(open_graph, s)) == pytest.approx(-1.0, abs=1e-10)


@pytest.mark.parametrize("builder", [klmgraph.honeycomb, klmgraph.kagome])
def test_analytic_skyrmion_on_lattices_with_a_basis(builder):
    graph = builder(24, 24)
    assert float(skyrmion_number(graph, analytic_skyrmion(graph, 8.0))) == pytest.approx(-1.0, abs=1e-10)
    assert float(skyrmion_number(graph, analytic_skyrmion(graph, 8.0, core=1.0))) == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("size", [12, 24])
def test_triple_q_ansatz_has_one_skyrmion_per_magnetic_cell(size):
    graph = klmgraph.triangular(size, size)
    spins = klmgraph.skyrmion_crystal(graph, q=math.pi / 3, m_z=0.3)
    assert magnetic_cell_sites(graph, spins) == 48  # DESIGN.md: |Q| = pi / 3 -> 48 sites
    cells = size * size // 48
    # cores point down in an up background: n_sk = -1 per cell in our orientation
    assert float(skyrmion_number(graph, spins)) == pytest.approx(-cells, abs=1e-9)
    assert float(skyrmion_number_per_cell(graph, spins)) == pytest.approx(-1.0, abs=1e-9)
    assert float(skyrmion_number_per_cell(graph, spins, cell_sites=48)) == pytest.approx(-1.0, abs=1e-9)
    flipped = spins * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)  # a mirror flips the charge
    assert float(skyrmion_number_per_cell(graph, flipped, 48)) == pytest.approx(1.0, abs=1e-9)
    # batched input
    batch = torch.stack([spins, flipped])
    torch.testing.assert_close(skyrmion_number_per_cell(graph, batch),
                               torch.tensor([-1.0, 1.0], dtype=torch.float64), atol=1e-9, rtol=0)


def test_structure_factor_sum_rule_and_spiral_peaks():
    graph = klmgraph.square(12, 8)
    q = (2 * math.pi * 3 / 12, 2 * math.pi * 2 / 8)
    spins = klmgraph.spiral(graph, q)
    sf = structure_factor(graph, spins)
    assert sf.value.shape == (12, 8) and sf.q.shape == (12, 8, 3)
    assert float(sf.value.sum()) == pytest.approx(graph.num_nodes, rel=1e-12)
    peaks = sf.peaks()
    assert sorted(p["index"] for p in peaks) == [(-3, -2), (3, 2)]
    assert all(p["value"] == pytest.approx(graph.num_nodes / 2) for p in peaks)
    # each peak's q belongs to its centred index: (3, 2) -> +Q, (-3, -2) -> -Q
    for peak in peaks:
        sign = 1.0 if peak["index"][0] > 0 else -1.0
        torch.testing.assert_close(peak["q"], sign * torch.tensor([*q, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="do not span"):
        magnetic_cell_sites(graph, spins)
    ferro = structure_factor(graph, klmgraph.ferromagnet(graph))
    assert float(ferro.value[0, 0]) == pytest.approx(graph.num_nodes)


@pytest.mark.parametrize("name", ["honeycomb", "kagome", "triangular"])
def test_structure_factor_matches_the_direct_sum(name):
    graph = LATTICES[name]()
    spins = klmgraph.random_spins(graph, batch=2, seed=1)
    sf = structure_factor(graph, spins)
    q = sf.q.reshape(-1, 3)
    phase = torch.exp(-1j * (q @ graph.pos.T))  # (Q, N)
    amp = torch.einsum("qn,bnc->bqc", phase, spins.to(torch.complex128))
    direct = (amp.abs() ** 2).sum(-1) / graph.num_nodes
    torch.testing.assert_close(sf.value.reshape(2, -1), direct, atol=1e-10, rtol=1e-10)


def test_magnetization_and_energy_per_site():
    graph = klmgraph.square(4, 4)
    spins = klmgraph.ferromagnet(graph, (0.0, 0.6, -0.8))
    torch.testing.assert_close(magnetization(graph, spins), torch.tensor([0.0, 0.6, -0.8], dtype=torch.float64))
    assert float(abs_mz(graph, spins)) == pytest.approx(0.8)
    batch = klmgraph.random_spins(graph, batch=3, seed=2)
    assert magnetization(graph, batch).shape == (3, 3) and abs_mz(graph, batch).shape == (3,)
    ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
    torch.testing.assert_close(energy_per_site(ed, batch), ed.energy_and_field(batch)[0] / 16)
    with pytest.raises(ValueError, match="sites"):
        magnetization(graph, klmgraph.ferromagnet(5))


def test_minimum_image_distances():
    graph = klmgraph.triangular(8, 8)
    d = minimum_image_distance(graph, site=9)
    assert float(d[9]) == 0.0
    assert int((d - 1).abs().lt(1e-12).sum()) == 6 and int((d - 2).abs().lt(1e-12).sum()) == 6
    assert float(d.max()) <= 8 / math.sqrt(3) + 1e-12  # corner of the hexagonal Wigner-Seitz cell


def test_locality_of_heisenberg_and_ed_fields():
    graph = klmgraph.square(8, 8)
    spins = klmgraph.random_spins(graph, seed=3)
    # a nearest-neighbour exchange field changes only on the four neighbours
    loc = locality(Heisenberg(graph, 1.0), graph, spins, site=10)
    changed = loc.ratio > 1e-12
    assert int(changed.sum()) == 4 and torch.allclose(loc.distance[changed], torch.ones(4, dtype=torch.float64))
    # the electronic field is not strictly local but decays with distance (paper Fig. S3). On
    # 12 x 12 random configurations (seeds 0-4) the largest ratio beyond distance 5 is 5-10 %
    # of the nearest-neighbour one; 8 x 8 is too small to show the decay.
    graph = klmgraph.square(12, 12)
    ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
    loc = locality(ed, graph, klmgraph.random_spins(graph, seed=0), site=10)
    shells, top = loc.profile()
    assert float(shells[0]) == 0.0 and float(shells[-1]) == pytest.approx(6 * math.sqrt(2))
    near = float(top[shells.eq(1.0)])
    far = float(top[shells.ge(5.0)].max())
    assert near > 1e-2 and far < 0.15 * near


def test_hop_distance_counts_edges_of_the_graph():
    graph = klmgraph.square(8, 8)
    hops = klmgraph.hop_distance(graph, 0).reshape(8, 8)
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    manhattan = torch.minimum(i, 8 - i) + torch.minimum(j, 8 - j)  # periodic
    assert torch.equal(hops, manhattan)
    with pytest.raises(ValueError, match=r"site must lie in \[0, 64\)"):
        klmgraph.hop_distance(graph, 64)
    # two separate triangles: the other one is unreachable (-1), and its spins count as far
    import networkx as nx
    two = klmgraph.from_networkx(nx.disjoint_union(nx.cycle_graph(3), nx.cycle_graph(3)))
    assert klmgraph.hop_distance(two, 0).tolist() == [0, 1, 1, -1, -1, -1]
    exchange = Heisenberg(two, 1.0)
    assert klmgraph.locality_floor(exchange, two, [1, 5], samples=4).floor.eq(0).all()
    assert klmgraph.locality_floor(exchange, two, [0], samples=4).floor[0] > 0.5


def test_locality_floor_is_zero_beyond_the_reach_and_exact_for_heisenberg():
    """Redrawing the spins beyond d hops leaves the field of a model of reach <= d unchanged: the
    nearest-neighbour exchange (reach 1) and an ECNN with K interaction blocks plus its output
    convolution (each site's energy sees K + 1 hops, its field 2 (K + 1)). Within the reach the
    floor is positive; for the exchange B_0 = sum of the 4 neighbour spins, redrawn at d = 0,
    half the mean square change per component is 4 / 3 in expectation."""
    graph = klmgraph.square(12, 12)
    exchange = klmgraph.locality_floor(Heisenberg(graph, 1.0), graph, [0, 1, 3], samples=1000, seed=1)
    assert float(exchange.floor[0]) == pytest.approx(math.sqrt(4 / 3), rel=0.05)  # 1000 samples: ~1.5 % noise
    assert exchange.floor[1:].eq(0).all() and exchange.samples == 1000 and exchange.site == 0
    # every reach uses the same draws: asking for d = 0 alone gives the same floor
    alone = klmgraph.locality_floor(Heisenberg(graph, 1.0), graph, [0], samples=1000, seed=1)
    assert torch.equal(alone.floor[0], exchange.floor[0])
    torch.manual_seed(0)
    model = klmgraph.ECNN.for_graph(graph, channels=4, num_interactions=1)
    floor = klmgraph.locality_floor(model.bind(graph), graph, [2, 3, 4, 5], samples=3, site=7).floor
    assert (floor[:2] > 0).all() and floor[2:].eq(0).all()
    with pytest.raises(ValueError, match="hops must be a non-empty list of integers >= 0"):
        klmgraph.locality_floor(Heisenberg(graph, 1.0), graph, [-1])
    with pytest.raises(ValueError, match="hops must be a non-empty list of integers >= 0"):
        klmgraph.locality_floor(Heisenberg(graph, 1.0), graph, [True])
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="samples must be an integer >= 1"):
            klmgraph.locality_floor(Heisenberg(graph, 1.0), graph, [1], samples=bad)


def test_skyrmion_number_of_a_magnetic_supercell_lattice():
    """A lattice whose unit cell is a 48-site magnetic cell (a basis of 48 sites) is triangulated
    as quickly as a Bravais lattice, and counts the skyrmions of its tiling."""
    import json
    from pathlib import Path

    state = json.loads((Path(__file__).parents[1] / "data" / "states" / "triangular_sk1_hz0.008.json").read_text())
    lattice = klmgraph.triangular_lattice(1.0, 0.0, -0.85).supercell([[8, 4], [4, 8]], name="magnetic cell")
    cell = lattice.graph((1, 1), symmetries=False)
    spins = torch.tensor(state["spins"], dtype=torch.float64)
    triangles, areas = elementary_triangles(cell)
    assert triangles.shape == (2 * 48, 3) and float(areas.sum()) == pytest.approx(48 * math.sqrt(3) / 2)
    n_cell = float(skyrmion_number(cell, spins))
    assert abs(n_cell) == pytest.approx(1.0, abs=1e-9)
    tiled, tiled_spins = klmgraph.tile_spins(cell, spins, (2, 3))
    assert float(skyrmion_number(tiled, tiled_spins)) == pytest.approx(6 * n_cell, abs=1e-9)


@pytest.mark.parametrize("make", [
    lambda: klmgraph.square_lattice().supercell([[1, 0], [3, 1]]).graph((4, 4)),
    lambda: klmgraph.triangular_lattice().supercell([[1, 0], [5, 1]]).graph((3, 3)),
    lambda: klmgraph.kagome_lattice().supercell([[1, 0], [3, 1]]).graph((3, 3)),
    lambda: klmgraph.honeycomb_lattice().supercell([[2, 1], [-1, 1]]).graph((3, 3)),
])
def test_skewed_supercells_are_triangulated_as_their_lattice(make):
    """A skewed supercell (a thin cell) triangulates the plane once: an integer skyrmion number for
    random spins on a periodic lattice, and triangles covering the area."""
    graph = make()
    triangles, areas = elementary_triangles(graph)
    vectors = torch.tensor(graph.description["vectors"], dtype=torch.float64)[:, :2]
    cell_area = float(torch.linalg.det(vectors).abs()) * math.prod(graph.description["size"])
    assert float(areas.sum()) == pytest.approx(cell_area, rel=1e-12)
    n = skyrmion_number(graph, klmgraph.random_spins(graph, batch=4, seed=0, dtype=torch.float64))
    torch.testing.assert_close(n, n.round(), rtol=0, atol=1e-9)
