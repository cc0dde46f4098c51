"""HDF5 trajectories round-trip and the figures draw."""
import matplotlib
import numpy as np
import pytest

import klmgraph
from klmgraph.dynamics import Heisenberg, SingleIonAnisotropy
from klmgraph.measure import locality, magnetization, skyrmion_number, structure_factor
from klmgraph import plot
from klmgraph.trajectory import TrajectoryWriter, read_trajectory

matplotlib.use("Agg")


def small_run(tmp_path, batch=None, spins_every=2):
    graph = klmgraph.triangular(12, 12)
    llg = klmgraph.LLG(Heisenberg(graph, 1.0) + SingleIonAnisotropy(0.2), dt=0.05, alpha=0.3,
                       temperature=0.1, field=(0, 0, 0.5))
    spins = klmgraph.skyrmion_crystal(graph, m_z=0.3)
    if batch:
        spins = spins.expand(batch, -1, -1).clone()
    path = tmp_path / "run.h5"
    with TrajectoryWriter(path, graph, llg, spins_every=spins_every, metadata={"note": "test"}) as writer:
        out = llg.run(spins, 20, record_every=5, record_spins=True, seed=0, callback=writer)
    return graph, llg, out, path


@pytest.mark.parametrize("batch", [None, 2])
def test_trajectory_round_trip(tmp_path, batch):
    graph, llg, out, path = small_run(tmp_path, batch)
    traj = read_trajectory(path)
    np.testing.assert_allclose(traj.time, out.times.numpy())
    assert traj.step.tolist() == [0, 5, 10, 15, 20]
    np.testing.assert_allclose(traj.energy, out.energies.numpy(), rtol=1e-12)
    snapshots = out.snapshots  # (M, [B,] N, 3)
    flat = snapshots.reshape(-1, graph.num_nodes, 3)
    m = magnetization(graph, flat).reshape(*snapshots.shape[:-2], 3)
    nsk = skyrmion_number(graph, flat).reshape(snapshots.shape[:-2])
    np.testing.assert_allclose(traj.magnetization, m.numpy(), atol=1e-12)
    np.testing.assert_allclose(traj.skyrmion_number, nsk.numpy(), atol=1e-12)
    assert np.abs(traj.skyrmion_number - np.round(traj.skyrmion_number)).max() < 1e-9
    assert traj.spins_step.tolist() == [0, 10, 20]
    np.testing.assert_allclose(traj.spins, snapshots[::2].numpy(), atol=1e-7)  # stored as float32
    assert traj.graph == graph.description and traj.llg["dt"] == llg.dt
    assert traj.llg["field"] == [0.0, 0.0, 0.5] and traj.metadata == {"note": "test"}
    assert traj.num_sites == graph.num_nodes


def test_trajectory_refuses_to_overwrite_and_foreign_files(tmp_path):
    graph, llg, _, path = small_run(tmp_path)
    with pytest.raises(FileExistsError):
        TrajectoryWriter(path, graph, llg)
    import h5py
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="not a klmgraph trajectory"):
        read_trajectory(tmp_path / "other.h5")


def test_figures_draw(tmp_path):
    import matplotlib.pyplot as plt
    graph, llg, out, path = small_run(tmp_path)
    spins = out.spins
    plot.plot_spins(graph, spins)
    plot.plot_structure_factor(structure_factor(graph, spins), log=True, zones=2)
    plot.plot_time_series(read_trajectory(path), keys=("energy", "mz", "skyrmion_number"))
    plot.plot_time_series(out, keys=("energy",), num_sites=graph.num_nodes)
    ax = plot.plot_locality(locality(Heisenberg(graph, 1.0), graph, spins, site=3))
    ax.figure.savefig(tmp_path / "locality.png")
    assert (tmp_path / "locality.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="one configuration"):
        plot.plot_spins(graph, spins[None])
    plt.close("all")


def test_read_spins_of_a_trajectory_stops_at_the_commit_counter(tmp_path):
    import h5py

    graph, llg, out, path = small_run(tmp_path)
    stored = read_trajectory(path).spins
    assert len(stored) >= 2
    np.testing.assert_allclose(klmgraph.read_spins(path).numpy(), stored)
    # a writer interrupted after appending a snapshot but before committing it
    with h5py.File(path, "r+") as f:
        f.attrs["num_snapshots"] = len(stored) - 1
    np.testing.assert_allclose(klmgraph.read_spins(path).numpy(), stored[:-1])
    with h5py.File(path, "r+") as f:
        f.attrs["num_snapshots"] = 0
    with pytest.raises(ValueError, match="no complete configuration"):
        klmgraph.read_spins(path)
