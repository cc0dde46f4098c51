import math

import pytest
import torch

import klmgraph


def test_random_spins_unit_seeded_and_isotropic():
    graph = klmgraph.square(20, 20)
    a = klmgraph.random_spins(graph, batch=10, seed=1)
    assert a.shape == (10, 400, 3) and a.dtype == torch.float64
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(10, 400, dtype=torch.float64))
    assert torch.equal(a, klmgraph.random_spins(graph, batch=10, seed=1))
    assert not torch.equal(a, klmgraph.random_spins(graph, batch=10, seed=2))
    # uniform on the sphere: <S> = 0 and <S_a S_b> = delta_ab / 3 (4000 samples, 5 sigma)
    flat = a.reshape(-1, 3)
    assert float(flat.mean(0).abs().max()) < 5 / math.sqrt(3 * len(flat))
    torch.testing.assert_close(flat.T @ flat / len(flat), torch.eye(3, dtype=torch.float64) / 3, atol=0.03, rtol=0)
    assert klmgraph.random_spins(7, seed=0, dtype=torch.float32).dtype == torch.float32


def test_ferromagnet():
    s = klmgraph.ferromagnet(klmgraph.square(3, 3), (0, 3, 4))
    torch.testing.assert_close(s, torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64).expand(9, 3))
    with pytest.raises(ValueError, match="non-zero"):
        klmgraph.ferromagnet(9, (0, 0, 0))


def test_spiral_is_periodic_and_in_plane():
    graph = klmgraph.square(8, 8)
    s = klmgraph.spiral(graph, (2 * math.pi / 4, 0.0))
    assert float(s[:, 2].abs().max()) == 0.0
    # period 4 along x: site (i1, i2) equals site (i1 + 4, i2)
    torch.testing.assert_close(s[: 4 * 8], s[4 * 8 :])
    # neighbouring spins along x turn by 90 degrees
    torch.testing.assert_close((s[0] * s[8]).sum(), torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="orthonormal"):
        klmgraph.spiral(graph, (1.0, 0.0), plane=((1, 0, 0), (1, 1, 0)))


def test_multi_q_and_skyrmion_crystal():
    graph = klmgraph.triangular(12, 12)
    s = klmgraph.multi_q(graph, [(math.pi / 3, 0.0), (0.0, math.pi / 3)], phases=[0.3, 1.1])
    torch.testing.assert_close(s.norm(dim=-1), torch.ones(144, dtype=torch.float64))
    sk = klmgraph.skyrmion_crystal(graph, m_z=0.5)
    torch.testing.assert_close(sk.norm(dim=-1), torch.ones(144, dtype=torch.float64))
    # the core at the origin points against z, the offset m_z raises the mean S^z
    assert float(sk[0, 2]) == pytest.approx(-1.0)
    assert float(sk[:, 2].mean()) > float(klmgraph.skyrmion_crystal(graph, m_z=0.0)[:, 2].mean())
    # |Q| = pi/3: the magnetic cell (48 sites) is spanned by 8 a1 + 4 a2 = (6, 2 sqrt 3) and its
    # rotations; translating by it maps the texture onto itself, translating by 6 a1 does not
    perm = klmgraph.site_permutation(graph, translation=(6.0, 2 * math.sqrt(3)))
    torch.testing.assert_close(sk[perm], sk)
    assert not torch.allclose(sk[klmgraph.site_permutation(graph, translation=(6.0, 0.0))], sk)


def test_ansatz_that_vanishes_is_refused():
    graph = klmgraph.square(4, 4)
    with pytest.raises(ValueError, match="vanishes at sites"):
        klmgraph.multi_q(graph, [(math.pi, 0.0)], planes=[((1, 0, 0), (0, 1, 0))], uniform=(-1.0, 0, 0))


def test_spirals_need_positions():
    import networkx as nx

    with pytest.raises(ValueError, match="no site positions"):
        klmgraph.spiral(klmgraph.from_networkx(nx.path_graph(4)), (1.0, 0.0))


@pytest.mark.parametrize("size", [12, 24])
def test_double_skyrmion_crystal_has_two_skyrmions_per_cell(size):
    graph = klmgraph.triangular(size, size)
    cells = graph.num_nodes / 48
    for m_z in (0.0, 0.3, 0.6):
        s = klmgraph.double_skyrmion_crystal(graph, m_z=m_z)
        torch.testing.assert_close(s.norm(dim=-1), torch.ones(graph.num_nodes, dtype=torch.float64))
        assert abs(float(klmgraph.skyrmion_number(graph, s)) / cells) == pytest.approx(2.0, abs=1e-9)
    # a large offset unwinds it (a trivial triple-Q state), while the one-skyrmion ansatz has 1
    assert float(klmgraph.skyrmion_number(graph, klmgraph.double_skyrmion_crystal(graph, m_z=1.2))) == \
        pytest.approx(0.0, abs=1e-9)
    one = klmgraph.skyrmion_crystal(graph, m_z=0.3)
    assert abs(float(klmgraph.skyrmion_number(graph, one)) / cells) == pytest.approx(1.0, abs=1e-9)
    # periodic on the 48-site magnetic cell, like the one-skyrmion crystal
    s = klmgraph.double_skyrmion_crystal(graph, m_z=0.3)
    perm = klmgraph.site_permutation(graph, translation=(6.0, 2 * math.sqrt(3)))
    torch.testing.assert_close(s[perm], s)
    with pytest.raises(ValueError, match="three ordering vectors"):
        klmgraph.double_skyrmion_crystal(graph, qs=[(1.0, 0.0), (0.0, 1.0)])
