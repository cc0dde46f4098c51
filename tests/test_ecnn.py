"""The ECNN model: fast == reference, symmetries, batching, forces, time reversal, save/load."""
import networkx as nx
import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch

import klmgraph
from klmgraph.nn import ECNN, compute_field
from klmgraph.nn import fused as fused_kernel


def small_model(graph, dtype=torch.float64, seed=0, **kwargs):
    """A model with random weights; 2 channels keep the reference path quick."""
    torch.manual_seed(seed)
    hp = dict(channels=3, num_interactions=2)
    hp.update(kwargs)
    model = ECNN.for_graph(graph, **hp).to(dtype)
    # random, not-small weights everywhere (biases included) so that every path matters
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def irregular_graph(seed=0):
    G = nx.gnm_random_graph(14, 26, seed=seed)
    for k, (u, v, data) in enumerate(G.edges(data=True)):
        data["edge_type"] = "abc"[k % 3]
    return klmgraph.from_networkx(G)


GRAPHS = {
    "triangular": lambda: klmgraph.triangular(6, 6, 1.0, 0.0, -0.85),
    "square-open": lambda: klmgraph.square(5, 4, periodic=False),
    "kagome": lambda: klmgraph.kagome(3, 3),
    "cubic": lambda: klmgraph.cubic(3, 3, 3),
    "irregular": irregular_graph,
}


def spins_for(graph, batch=None, seed=1, dtype=torch.float64):
    return klmgraph.random_spins(graph, batch=batch, seed=seed, dtype=dtype)


def expect_kernel(model, graph_name, graph):
    """The "default" cases test the compiled kernel where it is taken (a Bravais lattice on a
    CPU with a compiler and AVX-512), not a silent fallback to the eager path."""
    applies = model.kernel_applies(spins_for(graph), model.prepare(graph))
    if not model.fused or graph_name == "irregular":
        assert not applies
    elif fused_kernel.faster_than_eager():
        assert applies


@pytest.mark.parametrize("fused", [True, False], ids=["default", "eager"])
@pytest.mark.parametrize("graph_name", list(GRAPHS))
def test_fast_equals_reference_float64(graph_name, fused):
    graph = GRAPHS[graph_name]()
    model = small_model(graph)
    model.fused = fused  # the compiled kernel where it applies (default), or the eager path
    expect_kernel(model, graph_name, graph)
    provider = model.bind(graph)
    spins = spins_for(graph, batch=2)
    e_fast, b_fast = provider.energy_and_field(spins)
    model.implementation = "reference"
    e_ref, b_ref = provider.energy_and_field(spins)
    assert e_fast.shape == (2,) and b_fast.shape == spins.shape
    assert b_ref.abs().max() > 1e-3
    # the provider freezes the weights during the call only
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(e_fast, e_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(b_fast, b_ref, rtol=0, atol=1e-10 * b_ref.abs().max().item())


def test_fast_equals_reference_float32_published_size():
    graph = GRAPHS["irregular"]()
    model = ECNN.for_graph(graph)  # published hyper-parameters, e3nn initialisation
    provider = model.bind(graph)
    spins = spins_for(graph, dtype=torch.float32)
    e_fast, b_fast = provider.energy_and_field(spins)
    model.implementation = "reference"
    e_ref, b_ref = provider.energy_and_field(spins)
    assert abs(e_fast - e_ref) <= 1e-5 * abs(e_ref)
    assert (b_fast - b_ref).abs().max() <= 1e-5 * b_ref.abs().max()


@pytest.mark.parametrize("fused", [True, False], ids=["default", "eager"])
@pytest.mark.parametrize("graph_name", list(GRAPHS))
def test_training_gradients_equal_reference_float64(graph_name, fused):
    """The trainer's path (energy + force loss, double backward, the parameters' gradient) on
    every kind of graph: the fast path's gradients are the e3nn reference's."""
    graph = GRAPHS[graph_name]()
    model = small_model(graph)
    model.fused = fused
    expect_kernel(model, graph_name, graph)
    spins = spins_for(graph, batch=2)
    target = torch.randn(spins.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def gradients(implementation):
        model.implementation = implementation
        s = spins.clone().requires_grad_(True)
        energy = model.energy(s, model.prepare(graph))
        field = compute_field(energy, s, training=True)
        loss = ((field - target) ** 2).mean() + 0.1 * (energy / graph.num_nodes + 1.0).pow(2).sum()
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.autograd.grad(loss, params)

    fast, reference = gradients("fast"), gradients("reference")
    scale = max(g.abs().max().item() for g in reference)
    assert scale > 1e-3
    for g_fast, g_ref in zip(fast, reference):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("graph_name", list(GRAPHS))
def test_rotation_equivariance_on_every_graph(graph_name):
    graph = GRAPHS[graph_name]()
    provider = small_model(graph).bind(graph)
    spins = spins_for(graph)
    rot = o3.rand_matrix(dtype=torch.float64)
    e, b = provider.energy_and_field(spins)
    e_rot, b_rot = provider.energy_and_field(spins @ rot.T)
    assert abs(e_rot - e) <= 1e-10 * abs(e)  # float64 throughout (the float32 test is below)
    assert (b_rot - b @ rot.T).abs().max() <= 1e-10 * b.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rotation_equivariance(dtype):
    graph = klmgraph.triangular(6, 6, 1.0, 0.0, -0.85)
    model = small_model(graph, dtype=dtype)
    provider = model.bind(graph)
    spins = spins_for(graph, dtype=dtype)
    rot = o3.rand_matrix(dtype=torch.float64).to(dtype)
    e, b = provider.energy_and_field(spins)
    e_rot, b_rot = provider.energy_and_field(spins @ rot.T)
    # e3nn's Clebsch-Gordan tables are float32-exact, hence 1e-5 in both precisions
    assert abs(e_rot - e) <= 1e-5 * abs(e)
    assert (b_rot - b @ rot.T).abs().max() <= 1e-5 * b.abs().max()


def test_translation_equivariance():
    L1, L2 = 6, 6
    graph = klmgraph.triangular(L1, L2, 1.0, 0.0, -0.85)
    provider = small_model(graph).bind(graph)
    spins = spins_for(graph)
    i1, i2 = torch.meshgrid(torch.arange(L1), torch.arange(L2), indexing="ij")
    shifted = (((i1 + 1) % L1) * L2 + (i2 + 2) % L2).reshape(-1)  # site n moves to shifted[n]
    moved = torch.empty_like(spins)
    moved[shifted] = spins
    e, b = provider.energy_and_field(spins)
    e_t, b_t = provider.energy_and_field(moved)
    torch.testing.assert_close(e_t, e, rtol=1e-12, atol=0)
    torch.testing.assert_close(b_t[shifted], b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("graph_name", list(GRAPHS))
def test_field_is_minus_gradient(graph_name):
    graph = GRAPHS[graph_name]()
    model = small_model(graph)
    nb = model.neighbours(graph.edge_index, graph.edge_type, graph.num_nodes)
    spins = spins_for(graph)
    _, b = model.bind(graph).energy_and_field(spins)
    direction = torch.randn_like(spins)
    eps = 1e-5
    with torch.no_grad():
        slope = (model.energy(spins + eps * direction, nb) - model.energy(spins - eps * direction, nb)) / (2 * eps)
    torch.testing.assert_close(slope, -(b * direction).sum(), rtol=1e-6, atol=1e-8)


def test_batch_equals_graphs_one_by_one_and_no_cross_talk():
    # two sizes with the same point group (HoppingGraph batches stack symmetry_perm per graph)
    graphs = [klmgraph.triangular(6, 6, 1.0, 0.0, -0.85), klmgraph.triangular(12, 12, 1.0, 0.0, -0.85)]
    model = small_model(graphs[0])
    datas = []
    for k, g in enumerate(graphs):
        data = g.clone()
        data.spins = spins_for(g, seed=k).requires_grad_(True)
        datas.append(data)
    batch = Batch.from_data_list(datas)
    spins = batch.spins.detach().requires_grad_(True)
    batch.spins = spins
    energies = model(batch)
    assert energies.shape == (2,)
    for k, g in enumerate(graphs):
        e, b = model.bind(g).energy_and_field(datas[k].spins.detach())
        torch.testing.assert_close(energies[k], e, rtol=1e-12, atol=0)
    # the energy of configuration 0 does not depend on the spins of configuration 1
    (grad,) = torch.autograd.grad(energies[0], spins)
    assert grad[batch.batch == 1].abs().max() == 0
    assert grad[batch.batch == 0].abs().max() > 0
    # a bound model takes a (B, N, 3) stack of configurations
    provider = model.bind(graphs[1])
    stack = spins_for(graphs[1], batch=3)
    e_stack, b_stack = provider.energy_and_field(stack)
    for k in range(3):
        e_k, b_k = provider.energy_and_field(stack[k])
        torch.testing.assert_close(e_stack[k], e_k, rtol=1e-12, atol=0)
        torch.testing.assert_close(b_stack[k], b_k, rtol=0, atol=1e-12)


def test_time_reversal_option():
    graph = klmgraph.square(6, 6)
    model = small_model(graph, time_reversal=True)
    provider = model.bind(graph)
    spins = spins_for(graph)
    e, b = provider.energy_and_field(spins)
    e_flip, b_flip = provider.energy_and_field(-spins)
    assert e_flip == e  # exactly: (e(S) + e(-S)) / 2 is symmetric term by term
    torch.testing.assert_close(b_flip, -b, rtol=0, atol=1e-14)
    plain = small_model(graph)  # same seed, same weights, no symmetrisation
    assert abs(plain.bind(graph).energy_and_field(-spins)[0] - plain.bind(graph).energy_and_field(spins)[0]) > 1e-6


def test_training_step_double_backward():
    graph = klmgraph.square(4, 5)
    model = small_model(graph)
    data = graph.clone()
    data.spins = spins_for(graph).requires_grad_(True)
    target = torch.randn(graph.num_nodes, 3, dtype=torch.float64)
    energy = model(data)
    field = compute_field(energy, data.spins, training=True)
    loss = ((field - target) ** 2).mean() + (energy - 1.0).pow(2).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    with pytest.raises(ValueError, match="require grad"):
        compute_field(energy, data.spins.detach())


def test_provider_checks_spins_and_graph():
    graph = klmgraph.square(4, 4)
    provider = small_model(graph).bind(graph)
    with pytest.raises(ValueError, match="unit"):
        provider.energy_and_field(2 * spins_for(graph))
    with pytest.raises(ValueError, match="sites"):
        provider.energy_and_field(spins_for(klmgraph.square(4, 5)))
    with pytest.raises(ValueError, match="neighbour classes"):
        small_model(graph).bind(klmgraph.triangular(6, 6))


def test_hyper_parameter_validation():
    with pytest.raises(ValueError, match="num_interactions"):
        ECNN(5, num_interactions=0)
    with pytest.raises(ValueError, match="sh_normalization"):
        ECNN(5, sh_normalization="unit")
    with pytest.raises(ValueError, match="edge class names"):
        ECNN(5, edge_classes=["self", "x"])
    model = ECNN(5)  # published defaults
    assert str(model.irreps_hidden) == "8x0e+8x1e+8x2e"
    assert len(model.blocks) == 4 and [b.residual for b in model.blocks] == [False, True, True, True]
    assert [l.irreps_out.dim for l in model.output.linears] == [4, 2, 1]


# ----------------------------------------------------------------------------- save / load

def test_save_load_round_trip(tmp_path):
    graph = klmgraph.triangular(6, 6, 1.0, 0.0, -0.85)
    ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5)
    model = small_model(graph, time_reversal=True)
    model.hamiltonian = ed.parameters()
    path = model.save(tmp_path / "model.pt")
    loaded = klmgraph.load_model(path, graph)
    assert loaded.config == model.config
    assert loaded.hamiltonian["mu"] == -3.5 and loaded.time_reversal
    assert next(loaded.parameters()).dtype == torch.float64
    spins = spins_for(graph)
    e1, b1 = model.bind(graph).energy_and_field(spins)
    e2, b2 = loaded.bind(graph).energy_and_field(spins)
    assert e1 == e2 and torch.equal(b1, b2)
    # any size of the same lattice is fine
    klmgraph.load_model(path, klmgraph.triangular(12, 12, 1.0, 0.0, -0.85))
    # the file holds plain containers: loadable with weights_only=True
    # a single network is written as format version 1 (older klmgraph reads it); only committees need 2
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 1 < klmgraph.io.FORMAT_VERSION and isinstance(payload["config"], str)


def test_load_refuses_other_lattices_and_bad_files(tmp_path):
    graph = klmgraph.triangular(6, 6, 1.0, 0.0, -0.85)
    path = small_model(graph).save(tmp_path / "model.pt")
    with pytest.raises(ValueError, match="neighbour classes"):
        klmgraph.load_model(path, klmgraph.square(6, 6))
    with pytest.raises(ValueError, match="lattice"):  # same classes, other hoppings
        klmgraph.load_model(path, klmgraph.triangular(6, 6, 1.0, 0.0, -0.5))
    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match="corrupted"):
        klmgraph.load_model(corrupted)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a readable"):
        klmgraph.load_model(garbage)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format version"):
        klmgraph.load_model(tmp_path / "future.pt")
    with pytest.raises(FileNotFoundError):
        klmgraph.load_model(tmp_path / "missing.pt")


def test_gather_backward_used_on_gpus_gives_the_same_field():
    graph = klmgraph.triangular(6, 6, 1.0, 0.0, -0.85)
    provider = small_model(graph).bind(graph)
    spins = spins_for(graph, batch=2)
    e1, b1 = provider.energy_and_field(spins)
    provider._neighbours.gather_backward = True  # the default on CUDA devices
    e2, b2 = provider.energy_and_field(spins)
    assert e1.equal(e2)
    torch.testing.assert_close(b2, b1, rtol=0, atol=1e-13)


@pytest.mark.parametrize("reps", [(2, 2), (1, 3)])
def test_energy_per_site_and_field_of_a_tiled_lattice_equal_the_original(reps):
    # message passing commutes with the covering map of a periodic lattice onto a tiling of it, so
    # the triangular recipe trains on 12 x 12 for every lattice that tiles it (learn_triangular.toml)
    graph = klmgraph.triangular(6, 6, 1.0, 0.0, -0.85)
    tiled, spins_tiled = klmgraph.tile_spins(graph, spins_for(graph, batch=2), reps)
    copies = reps[0] * reps[1]
    model = small_model(graph, num_interactions=3)
    energy, field = model.bind(graph).energy_and_field(spins_for(graph, batch=2))
    energy_t, field_t = model.bind(tiled).energy_and_field(spins_tiled)
    _, index = klmgraph.spins.tiling(graph, reps)
    torch.testing.assert_close(energy_t / copies, energy, rtol=1e-12, atol=0)
    torch.testing.assert_close(field_t, field[:, index], rtol=1e-12, atol=1e-12)
