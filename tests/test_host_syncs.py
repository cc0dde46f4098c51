"""Host synchronisations and file writes per LLG step, counted on the CPU (tests/hostsync.py).

A GPU run stalls at every item/tolist/numpy/cpu/bool/float/int of a tensor; these tests count
them around klmgraph.simulate with a model provider and its default recording
(record_every = 1, snapshot_every = 100). Before issue 16 a step cost 14.2 such calls
(per-call spin checks of the model and of the skyrmion number, two NaN checks, three host
copies of the observables); now one (the NaN check), plus a few per snapshot.
"""
from pathlib import Path

import h5py
import pytest
import torch

import klmgraph
from klmgraph.providers import Heisenberg, SingleIonAnisotropy, Zeeman
from hostsync import count_host_syncs

FIXTURES = Path(__file__).parent / "fixtures"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ml_llg():
    torch.manual_seed(0)
    graph = klmgraph.triangular(6, 6)
    model = klmgraph.ECNN.for_graph(graph, channels=2, num_interactions=1).double()
    llg = klmgraph.LLG(model.bind(graph), dt=0.1, alpha=0.1, temperature=0.01, field=(0, 0, 0.005))
    return graph, llg, klmgraph.random_spins(graph, seed=0, dtype=torch.float64)


def _syncs(graph, llg, spins, steps, folder, **kwargs):
    with count_host_syncs() as syncs:
        klmgraph.simulate(llg, graph, spins, steps, folder, cell_sites=48, **kwargs)
    return syncs


def test_at_most_one_host_sync_per_llg_step(ml_llg, tmp_path):
    graph, llg, spins = ml_llg
    default = _syncs(graph, llg, spins, 60, tmp_path / "a")  # record_every=1, snapshot_every=100
    assert default.total <= 60 + 25, default  # one per step, the rest once per run or snapshot
    # the cost of 50 more steps and one more snapshot
    short = _syncs(graph, llg, spins, 50, tmp_path / "b", snapshot_every=50)
    long = _syncs(graph, llg, spins, 100, tmp_path / "c", snapshot_every=50)
    assert long.total - short.total <= 50 + 5, long  # 50 NaN checks + one snapshot's copies


def test_simulate_writes_the_file_at_snapshots_only(ml_llg, tmp_path, monkeypatch):
    graph, llg, spins = ml_llg
    writes = []
    original = h5py.Dataset.__setitem__

    def counting(self, key, value):
        writes.append(self.name)
        return original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", counting)
    klmgraph.simulate(llg, graph, spins, 40, tmp_path, snapshot_every=10, record_every=1, cell_sites=48)
    # 5 snapshots (steps 0, 10, .., 40), each one write per dataset: step, time, energy,
    # magnetization, skyrmion_number, spins, spins_step; before: 5 writes per step
    assert len(writes) <= 5 * 7, sorted(set(writes))
    traj = klmgraph.read_trajectory(tmp_path / "trajectory.h5")
    assert traj.step.tolist() == list(range(41)) and traj.spins_step.tolist() == [0, 10, 20, 30, 40]


def test_buffered_records_equal_direct_measurements(ml_llg, tmp_path):
    graph, llg, spins = ml_llg
    klmgraph.simulate(llg, graph, spins, 6, tmp_path, snapshot_every=3, record_every=1, cell_sites=48)
    traj = klmgraph.read_trajectory(tmp_path / "trajectory.h5")
    for k, step in enumerate(traj.spins_step):
        s = torch.from_numpy(traj.spins[k])
        row = list(traj.step).index(step)
        assert torch.allclose(klmgraph.magnetization(graph, s), torch.from_numpy(traj.magnetization[row]))
        assert abs(float(klmgraph.skyrmion_number(graph, s)) - traj.skyrmion_number[row]) < 1e-12
        assert abs(float(llg.energy_and_field(s)[0]) - traj.energy[row]) < 1e-10


@pytest.mark.parametrize("provider", ["heisenberg", "anisotropy", "zeeman"])
def test_spin_only_providers_do_not_sync(provider):
    graph = klmgraph.square(4, 4)
    term = {"heisenberg": Heisenberg(graph, 1.0), "anisotropy": SingleIonAnisotropy(0.3),
            "zeeman": Zeeman((0, 0, 0.2))}[provider]
    llg = klmgraph.LLG(term, dt=0.05, alpha=0.2, temperature=0.1)
    spins = klmgraph.random_spins(graph, seed=0, dtype=torch.float64)
    with count_host_syncs() as syncs:
        llg.run(spins, 10, seed=0, check_finite=False)
    assert syncs.total <= 3, syncs  # the start: one spin check (2) and nothing per step


def test_old_generator_trajectory_reads_and_refuses_to_resume(tmp_path):
    old = FIXTURES / "trajectory_v1_generator.h5"  # written by klmgraph 469cd2e (torch generator noise)
    traj = klmgraph.read_trajectory(old)
    assert traj.step.tolist() == list(range(7)) and traj.spins_step.tolist() == [0, 3, 6]
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "trajectory.h5").write_bytes(old.read_bytes())
    graph = klmgraph.square(4, 4)
    llg = klmgraph.LLG(Heisenberg(graph, 1.0) + SingleIonAnisotropy(0.2), dt=0.05, alpha=0.1, temperature=0.1)
    with pytest.raises(ValueError, match="older klmgraph whose noise came from a stored torch generator"):
        klmgraph.simulate(llg, graph, klmgraph.random_spins(16, seed=1), 9, folder, snapshot_every=3, seed=2)


def test_heisenberg_field_equals_scatter_reference():
    graph = klmgraph.triangular(4, 5)
    j = [0.0] + [0.7 if "2" not in c else -0.3 for c in graph.edge_classes[1:]]
    term = Heisenberg(graph, j)
    spins = klmgraph.random_spins(graph, batch=2, seed=1, dtype=torch.float64)
    w = torch.tensor(j, dtype=torch.float64)[graph.edge_type]
    src, dst = graph.edge_index
    reference = torch.zeros_like(spins)
    reference.index_add_(-2, dst, 0.5 * w[:, None] * spins[..., src, :])
    reference.index_add_(-2, src, 0.5 * w[:, None] * spins[..., dst, :])
    energy, field = term.energy_and_field(spins)
    assert torch.allclose(field, reference, atol=1e-14)
    assert torch.allclose(energy, -0.5 * (w * (spins[..., src, :] * spins[..., dst, :]).sum(-1)).sum(-1))
