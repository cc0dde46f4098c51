"""Domains with halos (klmgraph.domains) and chunked evaluation: bind(graph, chunk_sites=n) equals
the unchunked call on every kind of graph; a halo narrower than the receptive field is refused."""
import networkx as nx
import pytest
import torch

import klmgraph
from klmgraph.domains import decompose, hop_distances, partition
from klmgraph.nn import IFNN

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(channels=2, lmax=1, num_interactions=1)  # receptive field: 2 hops


def _irregular():
    G = nx.random_regular_graph(3, 60, seed=0)
    for u in G:
        G.nodes[u]["pos"] = (u % 8, u // 8)
    return klmgraph.from_networkx(G)


GRAPHS = {
    "square": lambda: klmgraph.square(16, 16),
    "triangular": lambda: klmgraph.triangular(20, 18, t3=-0.85),
    "kagome": lambda: klmgraph.kagome(8, 8),
    "cubic": lambda: klmgraph.cubic(10, 10, 10),
    "square-open": lambda: klmgraph.square(14, 12, periodic=False),
    "networkx": _irregular,
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_chunked_equals_unchunked(name, dtype, atol):
    graph = GRAPHS[name]()
    torch.manual_seed(0)
    model = klmgraph.ECNN.for_graph(graph, **SMALL).to(dtype)
    spins = klmgraph.random_spins(graph, seed=1).to(dtype)
    energy, field = model.bind(graph).energy_and_field(spins)
    parts = 8 if name == "cubic" else 4
    chunked = model.bind(graph, chunk_sites=graph.num_nodes // parts)
    assert len(chunked.chunks) >= parts
    # the halos are real: no chunk sees the whole lattice
    assert all(c.domain.num_local < graph.num_nodes for c in chunked.chunks), name
    e, b = chunked.energy_and_field(spins)
    scale = float(field.abs().max())
    assert abs(float(e - energy)) <= atol * max(1.0, abs(float(energy))) * 10
    assert float((b - field).abs().max()) <= atol * max(1.0, scale)
    assert torch.allclose(chunked.energy(spins), energy, atol=10 * atol)
    # a batch of configurations goes through the same chunks
    batch = torch.stack([spins, klmgraph.random_spins(graph, seed=2).to(dtype)])
    eb, bb = chunked.energy_and_field(batch)
    assert float((bb[0] - field).abs().max()) <= atol * max(1.0, scale)


def test_chunked_ifnn_equals_unchunked():
    graph = klmgraph.square(14, 14)
    torch.manual_seed(0)
    model = IFNN.for_graph(graph, cutoff=2.0, hidden=(16,)).double()
    # the receptive field from breadth-first search: a distance-2 neighbour is 2 hops away
    assert model.receptive_hops(graph) == 2
    spins = klmgraph.random_spins(graph, seed=3)
    energy, field = model.bind(graph).energy_and_field(spins)
    chunked = model.bind(graph, chunk_sites=49)
    assert len(chunked.chunks) == 4 and all(c.domain.num_local < graph.num_nodes for c in chunked.chunks)
    e, b = chunked.energy_and_field(spins)
    assert abs(float(e - energy)) < 1e-10 and float((b - field).abs().max()) < 1e-12


def test_narrow_halo_is_refused():
    graph = klmgraph.square(16, 16)
    model = klmgraph.ECNN.for_graph(graph, **SMALL)
    assert model.receptive_hops(graph) == 2
    with pytest.raises(ValueError, match="narrower than the receptive field.*2 hops"):
        model.bind(graph, chunk_sites=64, halo_hops=1)
    with pytest.raises(ValueError, match="chunk_sites"):
        model.bind(graph, chunk_sites=0)


def test_auto_chunk_sites_picks_a_size_and_agrees():
    graph = klmgraph.square(12, 12)
    torch.manual_seed(0)
    model = klmgraph.ECNN.for_graph(graph, **SMALL).double()
    bound = model.bind(graph, chunk_sites="auto")
    assert bound.chunk_sites >= 1
    spins = klmgraph.random_spins(graph, seed=0)
    e0, b0 = model.bind(graph).energy_and_field(spins)
    e, b = bound.energy_and_field(spins)
    assert torch.allclose(b, b0, atol=1e-12) and torch.allclose(e, e0, atol=1e-10)


@pytest.mark.parametrize("name", ["square", "triangular", "cubic", "networkx"])
@pytest.mark.parametrize("parts", [2, 3, 4, 7])
def test_partition_covers_every_site_once(name, parts):
    graph = GRAPHS[name]()
    owner = partition(graph, parts)
    counts = torch.bincount(owner, minlength=parts)
    assert owner.shape == (graph.num_nodes,) and len(counts) == parts and counts.min() > 0
    # balanced to within a slab of cells (or one site for bisection)
    assert counts.max() - counts.min() <= graph.num_nodes // min(parts, 4)
    domains = decompose(graph, parts, 1)
    assert torch.equal(torch.sort(torch.cat([d.owned for d in domains])).values, torch.arange(graph.num_nodes))
    for d in domains:  # a halo of one hop is exactly the neighbours of the owned sites
        src, dst = graph.edge_index
        inside = torch.isin(dst, d.owned)
        expected = set(src[inside].tolist()) - set(d.owned.tolist())
        assert set(d.halo.tolist()) == expected


def test_blocks_on_a_lattice_and_hops():
    graph = klmgraph.square(16, 16)
    owner = partition(graph, 16, halo_hops=1).reshape(16, 16)
    # a 4 x 4 grid of 4 x 4 blocks (slabs of one row would have a halo twice as large)
    assert torch.equal(owner[:4, :4], torch.zeros(4, 4, dtype=torch.long))
    assert torch.equal(owner[12:, 12:], torch.full((4, 4), 15))
    graph = klmgraph.square(8, 8)
    assert hop_distances(graph, 0, [9, 18]) == 4  # (1, 1) and (2, 2) on the square lattice
    with pytest.raises(ValueError, match="number of parts"):
        partition(graph, 65)
