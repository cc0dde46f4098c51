import math

import networkx as nx
import numpy as np
import pytest
import torch

import klmgraph
from klmgraph.graph import hermiticity_error


def _wrapped_displacement_ok(graph):
    """edge_vec equals pos[source] - pos[target] up to a supercell vector."""
    src, dst = graph.edge_index
    diff = (graph.pos[src] - graph.pos[dst] - graph.edge_vec).numpy()
    cell = graph.cell.numpy()
    dims = [k for k in range(3) if cell[k].any()]
    coeff = np.linalg.lstsq(cell[dims].T, diff.T, rcond=None)[0].T if dims else np.zeros((len(diff), 0))
    return np.allclose(coeff, np.rint(coeff), atol=1e-9) and np.allclose(coeff @ cell[dims], diff, atol=1e-9)


def test_square_site_order_and_edges():
    g = klmgraph.square(4, 5)
    assert g.num_nodes == 20 and g.num_edge_types == 5
    i1, i2 = np.divmod(np.arange(20), 5)  # n = i1 * L2 + i2
    assert np.allclose(g.pos[:, 0].numpy(), i1) and np.allclose(g.pos[:, 1].numpy(), i2)
    # edge direction: row 0 is the neighbour (source), row 1 the centre (target)
    k = g.edge_classes.index("(1, 0)")
    src, dst = g.edge_index[:, g.edge_type == k]
    assert torch.equal(src, ((dst // 5 + 1) % 4) * 5 + dst % 5)
    assert _wrapped_displacement_ok(g)
    assert (g.edge_type == 0).sum() == 20 and torch.equal(*g.edge_index[:, g.edge_type == 0])
    assert hermiticity_error(g) == 0.0


def test_triangular_offsets_and_distances():
    g = klmgraph.triangular(6, 6, t1=1.0, t2=0.3, t3=-0.85)
    assert g.num_edge_types == 19
    length = g.edge_vec.norm(dim=-1)
    t = g.hopping
    assert torch.allclose(length[t == 1.0], torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(length[t == 0.3], torch.tensor(math.sqrt(3), dtype=torch.float64))
    assert torch.allclose(length[t == -0.85], torch.tensor(2.0, dtype=torch.float64))
    assert _wrapped_displacement_ok(g)
    # DESIGN.md: nearest neighbours at offsets +-(1,0), +-(0,1), +-(1,1)
    for name in ["(1, 0)", "(-1, 0)", "(0, 1)", "(0, -1)", "(1, 1)", "(-1, -1)"]:
        k = g.edge_classes.index(name)
        assert torch.all(t[g.edge_type == k] == 1.0)


@pytest.mark.parametrize("build, degree, n", [
    (lambda: klmgraph.honeycomb(4, 4), 3, 32),
    (lambda: klmgraph.kagome(3, 4), 4, 36),
    (lambda: klmgraph.cubic(3, 3, 4), 6, 36),
])
def test_coordination(build, degree, n):
    g = build()
    assert g.num_nodes == n
    counts = torch.bincount(g.edge_index[1][g.edge_type > 0], minlength=n)
    assert torch.all(counts == degree)
    assert hermiticity_error(g) == 0.0
    assert _wrapped_displacement_ok(g)
    # nearest-neighbour bonds all have the same length
    length = g.edge_vec[g.edge_type > 0].norm(dim=-1)
    assert torch.allclose(length, length[0])


def test_open_boundaries_drop_bonds():
    g = klmgraph.square(4, 5, periodic=False)
    bonds = int((g.edge_type > 0).sum()) // 2
    assert bonds == 3 * 5 + 4 * 4
    assert hermiticity_error(g) == 0.0


@pytest.mark.parametrize("build, message", [
    (lambda: klmgraph.square(2, 6), r"offset \(1, 0\) duplicates offset \(-1, 0\).*2x6.*smallest valid size is 3x3"),
    (lambda: klmgraph.triangular(4, 4, t3=-0.85), r"offset \(2, 0\) duplicates.*smallest valid size is 5x5"),
    (lambda: klmgraph.square(1, 4), r"offset \(1, 0\) wraps onto the site itself"),
    (lambda: klmgraph.honeycomb(1, 3), r"smallest valid size is 2x2"),
])
def test_lattice_too_small(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_small_lattice_fine_when_open():
    g = klmgraph.square(2, 2, periodic=False)
    assert int((g.edge_type > 0).sum()) == 8


def test_bad_hopping_lists():
    with pytest.raises(ValueError, match="given twice"):
        klmgraph.BravaisLattice([(1, 0), (0, 1)], [(0, 0)], [(0, 0, (1, 0), 1.0), (0, 0, (-1, 0), 1.0)]).graph((6, 6))
    with pytest.raises(ValueError, match="on-site term"):
        klmgraph.BravaisLattice([(1, 0), (0, 1)], [(0, 0)], [(0, 0, (0, 0), 1.0)])
    with pytest.raises(ValueError, match="sublattice 2"):
        klmgraph.BravaisLattice([(1, 0), (0, 1)], [(0, 0)], [(0, 2, (1, 0), 1.0)])
    with pytest.raises(ValueError, match="linearly dependent"):
        klmgraph.BravaisLattice([(1, 0), (2, 0)], [(0, 0)], [(0, 0, (1, 0), 1.0)])


@pytest.mark.parametrize("build, order", [
    (lambda: klmgraph.square(6, 6, t2=0.2), 8),  # C4v
    (lambda: klmgraph.square(6, 4), 4),  # a rectangle keeps C2v
    (lambda: klmgraph.triangular(6, 6, t3=-0.85), 12),  # C6v
    (lambda: klmgraph.honeycomb(3, 3), 6),  # C3v about a site
    (lambda: klmgraph.cubic(3, 3, 3), 48),  # Oh
    (lambda: klmgraph.square(5, 5, periodic=False), 8),
])
def test_symmetry_permutations_preserve_hoppings(build, order):
    g = build()
    assert g.symmetry_perm.shape == (order, g.num_nodes)
    assert torch.equal(g.symmetry_perm[0], torch.arange(g.num_nodes))
    t = g.hopping_matrix()
    for p in g.symmetry_perm:
        assert torch.equal(torch.sort(p).values, torch.arange(g.num_nodes))
        moved = torch.empty_like(t)
        moved[p[:, None], p[None, :]] = t  # T'[p(i), p(j)] = T[i, j]
        assert torch.allclose(moved, t)
    for k, rot in enumerate(g.symmetry_rotation):
        assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64))
        assert (torch.det(rot) > 0) == (k < order // 2)  # the rotations, then as many improper ones


def test_site_permutation_translation():
    g = klmgraph.triangular(6, 6)
    p = klmgraph.site_permutation(g, translation=(-0.5, math.sqrt(3) / 2))  # a2
    i1, i2 = divmod(7, 6)
    assert int(p[7]) == i1 * 6 + (i2 + 1) % 6
    with pytest.raises(ValueError, match="does not map"):
        klmgraph.site_permutation(g, translation=(0.5, 0.0))
    # a 4x6 supercell is not invariant under C4: every site has an image, but not a distinct one
    with pytest.raises(ValueError, match="does not map"):
        klmgraph.site_permutation(klmgraph.square(4, 6), rotation=[[0, -1, 0], [1, 0, 0], [0, 0, 1]])


def test_custom_lattice_description_round_trip():
    lat = klmgraph.BravaisLattice([(1, 0), (0.5, math.sqrt(3) / 2)], [(0, 0), (0.5, math.sqrt(3) / 6)],
                                  [(0, 1, (0, 0), 1.0), (0, 1, (-1, 0), 1.0), (0, 1, (0, -1), 0.5 + 0.5j)],
                                  name="my-honeycomb")
    g = lat.graph((3, 4))
    assert g.is_complex and hermiticity_error(g) < 1e-15
    again = klmgraph.graph_from_description(g.description)
    assert torch.equal(again.edge_index, g.edge_index) and torch.equal(again.hopping, g.hopping)
    assert again.same_lattice(g.description) and not klmgraph.square(3, 4).same_lattice(g.description)


def test_from_networkx_matches_builder():
    g_nx = klmgraph.from_networkx(nx.grid_2d_graph(6, 6, periodic=True))
    g = klmgraph.square(6, 6)
    assert hermiticity_error(g_nx) == 0.0
    assert torch.equal(g_nx.hopping_matrix(), g.hopping_matrix())
    assert g_nx.num_edge_types == 2  # self loop and one undirected class


def test_from_networkx_classes_positions_and_errors():
    G = nx.Graph()
    G.add_node("a", pos=(0, 0))
    G.add_node("b", pos=(1, 0))
    G.add_node("c", pos=(0, 2))
    G.add_edge("a", "b", t=1.0, kind="short")
    G.add_edge("a", "c", t=0.5, kind="long")
    G.add_edge("c", "c", t=0.25)  # on-site energy -0.25
    g = klmgraph.from_networkx(G, edge_class="kind")
    assert g.edge_classes == ["self", "short", "long"]
    t = g.hopping_matrix()
    assert t[0, 1] == 1.0 and t[1, 0] == 1.0 and t[0, 2] == 0.5 and t[2, 2] == 0.25
    assert torch.allclose(g.edge_vec[(g.edge_index[1] == 0) & (g.edge_index[0] == 2)],
                          torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64))
    other = klmgraph.from_networkx(nx.path_graph(3))
    assert not other.same_lattice(g.description)

    D = nx.DiGraph()
    D.add_edge(0, 1, t=1j)
    with pytest.raises(ValueError, match="no reverse edge"):
        klmgraph.from_networkx(D)
    D.add_edge(1, 0, t=1j)
    with pytest.raises(ValueError, match="conjugate"):
        klmgraph.from_networkx(D)
    with pytest.raises(ValueError, match="multigraph"):
        klmgraph.from_networkx(nx.MultiGraph([(0, 1), (0, 1)]))


def test_supercell_is_the_same_lattice_renumbered():
    """The 48-site magnetic cell of the triangular model: one cell twisted at the three twists
    that the 12 x 12 lattice (three such cells) allows has the 12 x 12 lattice's spectrum."""
    lattice = klmgraph.triangular_lattice(1.0, 0.0, -0.85)
    cell = lattice.supercell([[8, 4], [4, 8]])
    assert cell.num_basis == 48
    g48, g12 = cell.graph((1, 1)), klmgraph.triangular(12, 12, t1=1.0, t3=-0.85)
    # every site keeps its 12 neighbours (6 at distance 1, 6 at distance 2)
    lengths = g48.edge_vec.norm(dim=-1)
    assert int((lengths > 0).sum()) == 48 * 12
    assert int(((lengths - 1).abs() < 1e-9).sum()) == int(((lengths - 2).abs() < 1e-9).sum()) == 48 * 6
    s48 = klmgraph.skyrmion_crystal(g48, m_z=0.3)
    s12 = klmgraph.skyrmion_crystal(g12, m_z=0.3)
    ed48 = klmgraph.ExactDiagonalization(g48, J=-1.0, mu=-3.5)
    ed12 = klmgraph.ExactDiagonalization(g12, J=-1.0, mu=-3.5)
    twists = [(0.0, 0.0), (2 * math.pi / 3, 4 * math.pi / 3), (4 * math.pi / 3, 2 * math.pi / 3)]
    levels = torch.cat([torch.linalg.eigvalsh(ed48.hamiltonian(s48, twist=t)) for t in twists]).sort().values
    torch.testing.assert_close(levels, torch.linalg.eigvalsh(ed12.hamiltonian(s12)), atol=1e-12, rtol=0)
    # a diagonal supercell is the larger lattice itself, up to site order
    sq = klmgraph.square_lattice(1.0).supercell([[2, 0], [0, 3]]).graph((2, 2))
    assert sq.num_nodes == 24 and int((sq.edge_vec.norm(dim=-1) > 0).sum()) == 24 * 4
    for bad, message in (([[1, 2]], "2x2 integers"), ([[1, 2], [2, 4]], "determinant 0"),
                         ([[1.5, 0], [0, 1]], "integers")):
        with pytest.raises(ValueError, match=message):
            lattice.supercell(bad)
