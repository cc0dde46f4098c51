"""Device discipline without a GPU: the hot paths run on the ``meta`` device (tensors with a
shape and no values, so any host round-trip fails), and the stacked training path (one
neighbour table for configurations of one graph) equals the PyG-batch path.

``KLMGRAPH_TEST_DEVICE=cuda`` runs the same tests on a GPU (benchmarks/gpu_check.py does).
"""
import os

import pytest
import torch

import klmgraph
from klmgraph.data import SpinDataset
from klmgraph.providers import Heisenberg, SingleIonAnisotropy, Zeeman
from klmgraph.train import StackedData, loss_terms, predict, predict_stacked, stacked_loss_terms, _batches

META = torch.device(os.environ.get("KLMGRAPH_TEST_DEVICE", "meta"))


def on_test_device(tensor: torch.Tensor) -> bool:
    # by type: a tensor moved to torch.device("cuda") reports "cuda:0", which != "cuda"
    return tensor.device.type == META.type


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(graph, name):
    torch.manual_seed(0)
    if name == "ifnn":
        return klmgraph.nn.IFNN.for_graph(graph, cutoff=1.1, hidden=(4,))
    return klmgraph.ECNN.for_graph(graph, channels=2, num_interactions=2 if name == "ecnn-fast" else 1,
                                   implementation=name.removeprefix("ecnn-"))


@pytest.mark.parametrize("name", ["ecnn-fast", "ecnn-reference", "ifnn"])
def test_bound_model_energy_and_field_on_meta(name):
    graph = klmgraph.triangular(6, 6)
    bound = _model(graph, name).to(META).bind(graph)  # graph on the CPU, model on the device
    for spins in (klmgraph.random_spins(36, seed=0, dtype=torch.float32).to(META),
                  klmgraph.random_spins(36, batch=2, seed=0, dtype=torch.float32).to(META)):
        energy, field = bound.energy_and_field(spins)
        assert on_test_device(energy) and energy.shape == spins.shape[:-2] and field.shape == spins.shape


def _spin_only(graph):
    return {"heisenberg": Heisenberg(graph, 1.0), "anisotropy": SingleIonAnisotropy(0.2, (1, 1, 0)),
            "zeeman": Zeeman((0, 0, 0.3)),
            "sum": Heisenberg(graph, 1.0) + SingleIonAnisotropy(0.2) + Zeeman((0.1, 0, 0))}


@pytest.mark.parametrize("integrator", ["heun", "midpoint"])
@pytest.mark.parametrize("name", ["heisenberg", "anisotropy", "zeeman", "sum", "model"])
def test_llg_steps_on_meta(name, integrator):
    graph = klmgraph.square(4, 4)
    if name == "model":
        provider = _model(graph, "ecnn-fast").to(META).bind(graph)
        dtype = torch.float32
    else:
        provider, dtype = _spin_only(graph)[name], torch.float64
    llg = klmgraph.LLG(provider, dt=0.05, alpha=0.1, temperature=0.2, field=(0, 0, 0.1), integrator=integrator)
    # meta kernels are slow in Python: the model runs one shape (a batch) for two steps
    for shape in ((3, 16, 3),) if name == "model" else ((16, 3), (3, 16, 3)):
        # the NaN check is the step's one synchronisation: off here, counted in test_host_syncs.py
        spins = klmgraph.random_spins(16, batch=shape[0] if len(shape) == 3 else None, seed=0, dtype=dtype)
        out = llg.run(spins.to(META), 2, record_every=1, seed=1, check_finite=False)
        assert on_test_device(out.spins) and out.spins.shape == shape and out.energies.shape[0] == 3


def _dataset(graph, count=6):
    ed = klmgraph.ExactDiagonalization(graph, J=3.0, filling=0.4)
    spins = klmgraph.random_spins(graph, batch=count, seed=2)
    energy, field = ed.energy_and_field(spins)
    return SpinDataset(graph, spins, energy, field)


@pytest.mark.parametrize("name", ["ecnn-fast", "ifnn"])
def test_stacked_training_step_equals_pyg_batches(name):
    graph = klmgraph.square(4, 4)
    data = _dataset(graph)
    model = _model(graph, name).double()
    stacked = StackedData(model, data, torch.float64, torch.device("cpu"))
    order = torch.tensor([4, 1, 5, 0, 2, 3])
    new = stacked.batches(order, 3, torch.Generator().manual_seed(7), augment_data=True)
    old = _batches(data, order, 3, torch.float64, "cpu", torch.Generator().manual_seed(7), augment_data=True)
    for a, b in zip(new, old):
        e1, f1 = predict_stacked(model, stacked.prepared, a, training=True)
        l1 = sum(stacked_loss_terms(e1, f1, a))
        g1 = torch.autograd.grad(l1, list(model.parameters()))
        e2, f2 = predict(model, b, training=True)
        l2 = sum(loss_terms(e2, f2, b))
        g2 = torch.autograd.grad(l2, list(model.parameters()))
        assert torch.allclose(a.spins.reshape(-1, 3), b.spins)  # the same augmentation
        assert torch.allclose(e1, e2, atol=1e-12) and torch.allclose(f1.reshape(-1, 3), f2, atol=1e-12)
        assert torch.allclose(l1, l2, atol=1e-12)
        assert all(torch.allclose(x, y, atol=1e-10) for x, y in zip(g1, g2))


@pytest.mark.parametrize("name", ["ecnn-fast", "ifnn"])
def test_training_step_on_meta(name):
    graph = klmgraph.square(4, 4)
    data = _dataset(graph, 4)
    model = _model(graph, name).to(META)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    stacked = StackedData(model, data, torch.float32, META)
    for batch in stacked.batches(torch.arange(4), 2, torch.Generator().manual_seed(0), augment_data=True):
        energy, field = predict_stacked(model, stacked.prepared, batch, training=True)
        field_mse, energy_mse = stacked_loss_terms(energy, field, batch)
        optimizer.zero_grad()
        (field_mse + energy_mse).backward()
        optimizer.step()
    assert all(on_test_device(p) for p in model.parameters())


def test_noise_stream_on_meta():
    from klmgraph.noise import gaussian
    assert on_test_device(gaussian(3, 4, (2, 16, 3), device=META))


def _backward_nodes(tensor) -> set[str]:
    seen, stack, names = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def test_deterministic_tables_give_the_same_numbers_without_scatter_backward():
    graph = klmgraph.triangular(6, 6, t3=-0.85)
    model = klmgraph.ECNN.for_graph(graph, channels=2, num_interactions=2).double()
    model.fused = False  # the PyTorch ops that a GPU runs (on the CPU the compiled kernel takes over)
    spins = klmgraph.random_spins(graph, batch=2, seed=4).requires_grad_(True)
    results = {}
    for deterministic in (False, True):
        table = model.prepare(graph, deterministic=deterministic)
        energy = model.energy(spins, table)
        field = -torch.autograd.grad(energy.sum(), spins, create_graph=True)[0]
        grads = torch.autograd.grad((field ** 2).sum() + energy.sum(), list(model.parameters()))  # as training
        results[deterministic] = (energy, field, grads)
        # on a GPU an IndexSelectBackward is an atomic index_add; the deterministic path has none
        nodes = _backward_nodes(field)
        assert ("IndexSelectBackward0" in nodes) != deterministic, nodes
    (e0, f0, g0), (e1, f1, g1) = results[False], results[True]
    assert torch.allclose(e0, e1, atol=1e-12) and torch.allclose(f0, f1, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(g0, g1))
    assert model.bind(graph, deterministic=True).deterministic


def test_deterministic_is_refused_where_it_has_no_path():
    from klmgraph.nn.conv import TypedNeighbours
    with pytest.raises(ValueError, match="deterministic=True needs"):
        # two class-1 neighbours of site 2: a scatter-add
        TypedNeighbours(torch.tensor([[0, 1], [2, 2]]), torch.tensor([1, 1]), 3, 2, deterministic=True)
    graph = klmgraph.square(4, 4)
    with pytest.raises(ValueError, match="IFNN has no deterministic path"):
        klmgraph.nn.IFNN.for_graph(graph, cutoff=1.1, hidden=(4,)).bind(graph, deterministic=True)


@pytest.mark.parametrize("params", [dict(mu=-3.5), dict(filling=0.3), dict(filling=0.3, temperature=0.1),
                                    dict(mu=-3.5, k_grid=(2, 2)), dict(filling=0.3, k_grid=(2, 2))])
def test_exact_diagonalization_on_meta(params):
    """ED (Gamma and k-grid, both ensembles, T > 0) on the device of its spins, with no host
    round-trip in the solve. (KPM's sparse operator cannot exist on the meta device.)"""
    graph = klmgraph.triangular(5, 5, t3=-0.85)
    ed = klmgraph.ExactDiagonalization(graph, J=-1.0, **params)
    energy, field = ed.energy_and_field(klmgraph.random_spins(graph, batch=2, seed=0).to(META))
    assert on_test_device(energy) and on_test_device(field)
    assert energy.shape == (2,) and field.shape == (2, 25, 3)
