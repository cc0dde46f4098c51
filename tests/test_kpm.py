"""The kernel polynomial method against exact diagonalization, and its own consistency."""
import json
import math

import networkx as nx
import pytest
import torch

import klmgraph
from conftest import random_rotation
from klmgraph.electrons.chebyshev import (chebyshev_nodes, grand_potential_coefficients,
                                          quadrature_coefficients, step_coefficients)
from klmgraph.electrons.kpm import hopping_bounds
from klmgraph.electrons.probing import distance_colouring

ENSEMBLES = {
    "grand canonical": {"mu": -1.0},
    "canonical": {"filling": 0.3},
    "grand canonical T>0": {"mu": -1.0, "temperature": 0.3},
    "canonical T>0": {"filling": 0.3, "temperature": 0.3},
}
EXACT = 100  # a probe distance beyond the diameter of the test graphs: one colour per site


def errors(graph, spins, params, **kpm_args):
    """(field RMSE, max |dE| per site) of KPM against ED."""
    e_ref, b_ref = klmgraph.ExactDiagonalization(graph, **params)(spins)
    e, b = klmgraph.KPM(graph, **params, **kpm_args)(spins)
    return float((b - b_ref).pow(2).mean().sqrt()), float((e - e_ref).abs().max()) / graph.num_nodes


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kernel", ["none", "jackson"])
@pytest.mark.parametrize("ensemble", list(ENSEMBLES))
def test_converges_to_ed_with_order_and_probes(ensemble, kernel):
    graph = klmgraph.square(6, 6)
    spins = klmgraph.random_spins(graph, batch=2, seed=1)
    params = {"J": 3.0, **ENSEMBLES[ensemble]}
    coarse = errors(graph, spins, params, order=32, probe_distance=2, kernel=kernel)
    middle = errors(graph, spins, params, order=128, probe_distance=4, kernel=kernel)
    fine = errors(graph, spins, params, order=384, probe_distance=EXACT, kernel=kernel)
    for k, name in enumerate(("field", "energy")):
        assert fine[k] < middle[k] < coarse[k], (name, coarse, middle, fine)
        assert fine[k] < coarse[k] / 10, (name, coarse, fine)
    if "T>0" in ensemble and kernel == "none":
        # an exact trace of an analytic function: the series converges exponentially, to rounding
        assert max(fine) < 1e-10, fine
    else:
        # at T = 0 the levels nearest the Fermi energy of a 36-site lattice limit the convergence,
        # and the Jackson kernel broadens every level by ~ pi * scale / order
        field_bound, energy_bound = {("none", False): (5e-3, 2e-4), ("jackson", False): (1.5e-2, 5e-4),
                                     ("jackson", True): (5e-4, 5e-4)}[kernel, "T>0" in ensemble]
        assert fine[0] < field_bound and fine[1] < energy_bound, fine


def test_finite_temperature_tends_to_the_step():
    graph = klmgraph.triangular(6, 6, t3=-0.85)
    spins = klmgraph.random_spins(graph, seed=2)
    for params in ({"J": -1.0, "mu": -3.5}, {"J": -1.0, "filling": 0.2}):
        e0, b0 = klmgraph.KPM(graph, order=128, probe_distance=3, **params)(spins)
        differences = []
        for T in (3e-2, 3e-3):
            e, b = klmgraph.KPM(graph, order=128, probe_distance=3, temperature=T, **params)(spins)
            differences.append((abs(float(e - e0)) / graph.num_nodes, float((b - b0).abs().max())))
        # below the series' resolution (~ pi * scale / order ~ 0.15) T changes less and less
        assert differences[1][0] < differences[0][0] / 3 and differences[1][1] < differences[0][1] / 3
        assert differences[1][0] < 1e-5 and differences[1][1] < 3e-4, differences


@pytest.mark.parametrize("ensemble", list(ENSEMBLES))
def test_field_is_minus_the_gradient_of_the_energy(ensemble):
    # every probe is deterministic (fixed phases), so E is a smooth function of the spins
    graph = klmgraph.triangular(5, 5, t3=-0.85)
    spins = klmgraph.random_spins(graph, seed=3)
    kpm = klmgraph.KPM(graph, J=3.0, order=41, probe_distance=2, **ENSEMBLES[ensemble])
    _, field = kpm(spins)
    direction = torch.randn(spins.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    direction -= (direction * spins).sum(-1, keepdim=True) * spins  # tangent to every spin
    h = 1e-5

    def energy(step):
        moved = spins + step * direction
        return float(kpm(moved / moved.norm(dim=-1, keepdim=True))[0])

    # normalising moves the spins at O(h^2) only, which central differences cancel
    slope = (energy(h) - energy(-h)) / (2 * h)
    assert slope == pytest.approx(-float((field * direction).sum()), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("ensemble", ["grand canonical", "canonical T>0"])
def test_batch_equals_one_by_one(ensemble):
    graph = klmgraph.square(6, 6)
    spins = klmgraph.random_spins(graph, batch=3, seed=5)
    kpm = klmgraph.KPM(graph, J=3.0, order=64, probe_distance=3, **ENSEMBLES[ensemble])
    energy, field = kpm(spins)
    assert energy.shape == (3,) and field.shape == spins.shape
    for k in range(3):
        e, b = kpm(spins[k])
        assert e.shape == () and b.shape == spins[k].shape
        assert torch.allclose(e, energy[k], rtol=0, atol=1e-10)
        assert torch.allclose(b, field[k], rtol=0, atol=1e-10)


@pytest.mark.parametrize("ensemble", ["grand canonical", "canonical"])
def test_rotation_equivariance(ensemble):
    # the probes carry the identity in spin space, so a global rotation leaves E exactly unchanged
    graph = klmgraph.triangular(6, 6, t3=-0.85)
    spins = klmgraph.random_spins(graph, seed=6)
    kpm = klmgraph.KPM(graph, J=-1.0, order=64, probe_distance=3, **ENSEMBLES[ensemble])
    rotation = random_rotation(7)
    energy, field = kpm(spins)
    energy_rotated, field_rotated = kpm(spins @ rotation.T)
    assert float(energy_rotated) == pytest.approx(float(energy), rel=1e-11, abs=1e-11)
    assert torch.allclose(field_rotated, field @ rotation.T, rtol=0, atol=1e-10)


def test_open_boundaries():
    graph = klmgraph.square(6, 5, periodic=False)
    spins = klmgraph.random_spins(graph, seed=8)
    params = {"J": 2.0, "filling": 0.4, "temperature": 0.2}
    coarse = errors(graph, spins, params, order=32, probe_distance=2)
    fine = errors(graph, spins, params, order=256, probe_distance=EXACT)
    assert fine[0] < coarse[0] / 10 and fine[0] < 1e-3
    assert fine[1] < coarse[1] and fine[1] < 1e-4


def test_networkx_graph_with_complex_hoppings():
    # a ring of 12 sites threaded by a flux, with one on-site energy and a chord
    G = nx.Graph()
    for k in range(12):
        G.add_edge(k, (k + 1) % 12, t=complex(math.cos(0.3), math.sin(0.3)))
    G.add_edge(0, 6, t=0.5)
    G.add_edge(3, 3, t=0.4)
    graph = klmgraph.from_networkx(G)
    assert graph.is_complex
    spins = klmgraph.random_spins(graph, seed=9)
    params = {"J": 2.0, "mu": 0.1, "temperature": 0.2}
    coarse = errors(graph, spins, params, order=32, probe_distance=1)
    fine = errors(graph, spins, params, order=256, probe_distance=EXACT)
    assert fine[0] < coarse[0] / 10 and fine[0] < 1e-3
    assert fine[1] < 1e-4


def test_parameters_name_the_solver():
    graph = klmgraph.square(6, 6)
    kpm = klmgraph.KPM(graph, J=7.0, filling=0.48, order=64, probe_distance=3)
    params = json.loads(json.dumps(kpm.parameters()))
    assert params["solver"] == "kpm" and params["order"] == 64 and params["probe_distance"] == 3
    assert params["num_probes"] == kpm.num_probes == 2 * (int(kpm.colours.max()) + 1)
    assert params["num_electrons"] == round(2 * 36 * 0.48) and params["mu"] is None
    lower, upper = params["bounds"]
    levels = torch.linalg.eigvalsh(klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48).hamiltonian(
        klmgraph.random_spins(graph, seed=10)))
    assert lower < float(levels.min()) and float(levels.max()) < upper


def test_float32_spins_give_float32_results():
    graph = klmgraph.square(6, 6)
    spins = klmgraph.random_spins(graph, seed=11)
    kpm = klmgraph.KPM(graph, J=3.0, mu=-1.0, order=32, probe_distance=2)
    e64, b64 = kpm(spins)
    e32, b32 = kpm(spins.float())
    assert e32.dtype == b32.dtype == torch.float32
    assert torch.allclose(b32.double(), b64, atol=1e-5)


def test_colouring_separates_equal_colours():
    graph = klmgraph.triangular(7, 6, t3=-0.85)
    G = nx.Graph()
    G.add_edges_from(graph.edge_index.T.tolist())
    G.remove_edges_from(nx.selfloop_edges(G))
    hops = dict(nx.all_pairs_shortest_path_length(G))
    for distance in (1, 2, 3):
        colours = distance_colouring(graph.edge_index, graph.num_nodes, distance)
        for i in range(graph.num_nodes):
            for j in range(i + 1, graph.num_nodes):
                if colours[i] == colours[j]:
                    assert hops[i][j] >= distance
    assert int(distance_colouring(graph.edge_index, graph.num_nodes, 1).max()) == 0


def test_chebyshev_coefficients():
    x_m = torch.tensor([-0.3, 0.55], dtype=torch.float64)
    nodes = chebyshev_nodes(20000)
    # the closed forms against quadrature of the same functions (quadrature is exact to ~1/K)
    step = quadrature_coefficients((nodes[None] < x_m[:, None]).double())[:, :40]
    assert torch.allclose(step_coefficients(x_m, 40), step, atol=1e-3)
    potential = quadrature_coefficients(((nodes[None] - x_m[:, None]) * (nodes[None] < x_m[:, None])))[:, :40]
    assert torch.allclose(grand_potential_coefficients(x_m, 40), potential, atol=1e-6)
    # a polynomial is reproduced exactly: x^3 = (3 T_1 + T_3) / 4
    cubic = quadrature_coefficients(chebyshev_nodes(16)[None] ** 3)[0]
    assert torch.allclose(cubic[:5], torch.tensor([0, 0.75, 0, 0.25, 0], dtype=torch.float64), atol=1e-14)
    # a chemical potential beyond the bounds: all levels empty, or all full (F = x - x_m)
    assert grand_potential_coefficients(torch.tensor([-1.5], dtype=torch.float64), 8).abs().max() < 1e-15
    full = grand_potential_coefficients(torch.tensor([1.5], dtype=torch.float64), 8)[0]
    assert torch.allclose(full, torch.tensor([-1.5, 1, 0, 0, 0, 0, 0, 0], dtype=torch.float64), atol=1e-14)


def test_hopping_bounds_enclose_the_band():
    graph = klmgraph.triangular(9, 9, t3=-0.85)
    levels = torch.linalg.eigvalsh(-graph.hopping_matrix())
    lower, upper = hopping_bounds(graph)
    assert lower <= float(levels.min()) + 1e-9 and float(levels.max()) - 1e-9 <= upper
    assert upper - lower < 1.05 * float(levels.max() - levels.min())


def test_bad_input():
    graph = klmgraph.square(6, 6)
    with pytest.raises(ValueError, match="order"):
        klmgraph.KPM(graph, J=1.0, mu=0.0, order=1)
    with pytest.raises(ValueError, match="kernel"):
        klmgraph.KPM(graph, J=1.0, mu=0.0, kernel="lorentz")
    with pytest.raises(ValueError, match="probe distance"):
        klmgraph.KPM(graph, J=1.0, mu=0.0, probe_distance=0)
    with pytest.raises(ValueError, match="bounds"):
        klmgraph.KPM(graph, J=1.0, mu=0.0, bounds=(-1.0, math.inf))
    with pytest.raises(ValueError, match="bounds"):
        klmgraph.KPM(graph, J=1.0, mu=0.0, bounds=(2.0, 1.0))
    # a filling with no electron to place: no chemical potential to bracket
    with pytest.raises(ValueError, match="filling"):
        klmgraph.KPM(graph, J=1.0, filling=0.001)
    with pytest.raises(ValueError, match="exactly one of filling"):
        klmgraph.KPM(graph, J=1.0)
    kpm = klmgraph.KPM(graph, J=1.0, mu=0.0, order=16, probe_distance=2)
    with pytest.raises(ValueError, match="spins must have shape"):
        kpm(torch.zeros(36, 2))
    with pytest.raises(ValueError, match="graph has 36"):
        kpm(klmgraph.random_spins(klmgraph.square(5, 5), seed=0))
    # bounds inside the spectrum make the Chebyshev recursion diverge: detected, not returned
    narrow = klmgraph.KPM(graph, J=1.0, mu=0.0, order=64, probe_distance=2, bounds=(-1.0, 1.0))
    with pytest.raises(ValueError, match="do not enclose the spectrum"):
        narrow(klmgraph.random_spins(graph, seed=0))


def test_command_line_kpm_labels_and_provider(tmp_path):
    from klmgraph import cli

    out = tmp_path / "kpm.h5"
    cli.main(["generate", "--preset", "square-paper", "--size", "6", "6", "--samples", "2", "--solver", "kpm",
              "--kpm-order", "32", "--kpm-probe-distance", "2", "--out", str(out), "--quiet"])
    data = klmgraph.load_dataset(out)
    assert data.hamiltonian["solver"] == "kpm" and data.hamiltonian["order"] == 32
    kpm = klmgraph.KPM(data.graph, J=7.0, filling=0.48, order=32, probe_distance=2)
    energy, field = kpm(data.spins)
    assert torch.allclose(data.energy.double().reshape(energy.shape), energy, atol=1e-9)
    assert torch.allclose(data.field.double(), field, atol=1e-9)

    args = cli.make_parser().parse_args(["simulate", "--preset", "triangular-paper", "--size", "6", "6",
                                         "--provider", "kpm", "--kpm-order", "48", "--dt", "1", "--steps", "1"])
    ed = cli.build_model(args)
    provider = cli.build_provider(args.provider, ed, kpm_options=cli.kpm_options(args))
    assert isinstance(provider, klmgraph.KPM) and provider.order == 48 and provider.mu == -3.5


def test_solver_name_names_its_settings():
    kpm = klmgraph.KPM(klmgraph.square(4, 4), J=2.0, mu=0.0, order=64, probe_distance=3)
    assert kpm.solver == "KPM, order 64, probe distance 3"
