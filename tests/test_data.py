import h5py
import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

import klmgraph
from klmgraph.cli import main


@pytest.fixture
def ed():
    return klmgraph.ExactDiagonalization(klmgraph.square(4, 4), J=7.0, filling=0.48)


def test_round_trip_and_batching(tmp_path, ed):
    path = klmgraph.generate_dataset(tmp_path / "d.h5", ed, num_samples=5, seed=3, batch_size=2, progress=False)
    data = klmgraph.load_dataset(path, graph=ed.graph)
    assert len(data) == 5
    spins = klmgraph.random_spins(ed.graph, batch=5, seed=3)
    energy, field = ed.energy_and_field(spins)
    assert torch.equal(data.spins, spins)
    torch.testing.assert_close(data.energy, energy, rtol=0, atol=1e-12)
    torch.testing.assert_close(data.field, field, rtol=0, atol=1e-12)
    assert data.hamiltonian["J"] == 7.0 and data.hamiltonian["num_electrons"] == 15
    batch = next(iter(DataLoader(data, batch_size=3)))
    assert batch.spins.shape == (48, 3) and batch.energy.shape == (3,) and batch.field.shape == (48, 3)
    assert batch.edge_index.max() == 47 and batch.num_graphs == 3
    assert batch.symmetry_perm.shape == (8, 48)  # C4v, permutations offset per graph
    torch.testing.assert_close(batch.field[16:32], field[1], rtol=0, atol=1e-12)
    # the stored graph rebuilds the same lattice when no graph is given
    stored = klmgraph.load_dataset(path).graph
    assert torch.equal(stored.edge_index, ed.graph.edge_index) and stored.same_lattice(ed.graph.description)


def test_resume_after_interruption(tmp_path, ed, monkeypatch):
    path = tmp_path / "d.h5"
    calls = {"n": 0}
    original = ed.energy_and_field

    def failing(spins):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(spins)

    monkeypatch.setattr(ed, "energy_and_field", failing)
    with pytest.raises(KeyboardInterrupt):
        klmgraph.generate_dataset(path, ed, num_samples=6, seed=1, progress=False)
    with h5py.File(path, "r") as f:
        assert int(f.attrs["num_done"]) == 2
    with pytest.raises(ValueError, match=r"unfinished \(2 of 6 samples\)"):
        klmgraph.load_dataset(path)
    assert len(klmgraph.load_dataset(path, allow_partial=True)) == 2

    monkeypatch.setattr(ed, "energy_and_field", original)
    klmgraph.generate_dataset(path, ed, num_samples=6, seed=1, progress=False)
    resumed = klmgraph.load_dataset(path)
    fresh = klmgraph.load_dataset(klmgraph.generate_dataset(tmp_path / "f.h5", ed, num_samples=6, seed=1,
                                                            progress=False))
    assert torch.equal(resumed.energy, fresh.energy) and torch.equal(resumed.field, fresh.field)


def test_partly_written_sample_is_not_read(tmp_path, ed):
    path = klmgraph.generate_dataset(tmp_path / "d.h5", ed, num_samples=3, progress=False)
    with h5py.File(path, "r+") as f:  # as if killed after writing labels of sample 2, before num_done
        f.attrs["num_done"] = 2
        f["field"][2] = 123.0
    data = klmgraph.load_dataset(path, allow_partial=True)
    assert len(data) == 2 and float(data.field.abs().max()) < 100
    klmgraph.generate_dataset(path, ed, num_samples=3, progress=False)  # resumes and recomputes sample 2
    assert float(klmgraph.load_dataset(path).field.abs().max()) < 100


def test_given_configurations(tmp_path, ed):
    spins = klmgraph.skyrmion_crystal(ed.graph, q=np.pi / 2)[None]
    np.save(tmp_path / "s.npy", spins.numpy())
    given = klmgraph.read_spins(tmp_path / "s.npy")
    path = klmgraph.generate_dataset(tmp_path / "d.h5", ed, spins=given, progress=False)
    data = klmgraph.load_dataset(path)
    torch.testing.assert_close(data.energy, ed.energy_and_field(spins)[0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="unit vectors"):
        klmgraph.generate_dataset(tmp_path / "e.h5", ed, spins=2 * spins, progress=False)


def test_mismatches_and_bad_files(tmp_path, ed):
    path = klmgraph.generate_dataset(tmp_path / "d.h5", ed, num_samples=2, progress=False)
    other = klmgraph.ExactDiagonalization(klmgraph.square(4, 4), J=5.0, filling=0.48)
    with pytest.raises(ValueError, match="different hamiltonian"):
        klmgraph.generate_dataset(path, other, num_samples=2, progress=False)
    with pytest.raises(ValueError, match="different seed"):
        klmgraph.generate_dataset(path, ed, num_samples=2, seed=5, progress=False)
    klmgraph.generate_dataset(path, other, num_samples=2, progress=False, overwrite=True)
    assert klmgraph.load_dataset(path).hamiltonian["J"] == 5.0
    with pytest.raises(ValueError, match="generated on square 4x4.*not on triangular 6x6"):
        klmgraph.load_dataset(path, graph=klmgraph.triangular(6, 6))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="cannot read data set"):
        klmgraph.load_dataset(junk)
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="not a klmgraph data set"):
        klmgraph.load_dataset(tmp_path / "foreign.h5")
    with pytest.raises(ValueError, match="does not exist"):
        klmgraph.load_dataset(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="exactly one of num_samples"):
        klmgraph.generate_dataset(tmp_path / "x.h5", ed, progress=False)


def test_cli_generate_and_info(tmp_path, capsys):
    out = tmp_path / "tri.h5"
    assert main(["generate", "--preset", "triangular-paper", "--size", "6", "6", "--samples", "2",
                 "--out", str(out), "--quiet"]) == 0
    data = klmgraph.load_dataset(out, graph=klmgraph.triangular(6, 6, t3=-0.85))
    assert data.hamiltonian["mu"] == -3.5 and data.hamiltonian["J"] == -1.0
    assert main(["info", str(out)]) == 0
    assert "2 complete configurations on triangular 6x6" in capsys.readouterr().out
    assert main(["generate", "--lattice", "kagome", "--size", "2", "2", "--J", "2", "--filling", "0.3",
                 "--samples", "1", "--out", str(tmp_path / "k.h5"), "--quiet"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--size", "2", "2"], "smallest valid size is 3x3"),
    (["--filling", "1.5"], r"filling must lie in \(0, 1\)"),
    (["--filling", "0.4", "--mu", "0"], "exactly one of filling"),
    (["--lattice", "honeycomb", "--t3", "0.5"], "--t3 is not available for the honeycomb lattice"),
    (["--spins", "missing.npy"], "does not exist"),
])
def test_cli_errors(tmp_path, capsys, argv, message):
    assert main(["generate", "--out", str(tmp_path / "o.h5"), "--quiet", *argv]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err or \
        __import__("re").search(message, capsys.readouterr().err)


class _DeviceRecorder:
    """ED behind a solver that records which device its spins arrive on. The CPU cannot run ED
    on the meta device, so the labels come from the host copy of the configurations it was told
    to expect (one call: batch_size = all)."""

    def __init__(self, ed, host_spins):
        self.ed, self.graph, self.host_spins, self.devices = ed, ed.graph, host_spins, []

    def parameters(self):
        return self.ed.parameters()

    def energy_and_field(self, spins):
        self.devices.append(spins.device.type)
        assert spins.shape == self.host_spins.shape
        return self.ed.energy_and_field(self.host_spins)


def test_generate_sends_the_solver_work_to_the_device(tmp_path, ed):
    """Random configurations are drawn on the host (a seed gives one data set on any device),
    the file keeps them on the host, and the solver gets them on ``device``."""
    host = klmgraph.random_spins(ed.graph, batch=3, seed=3)
    solver = _DeviceRecorder(ed, host)
    path = klmgraph.generate_dataset(tmp_path / "d.h5", solver, num_samples=3, seed=3, batch_size=3,
                                     progress=False, device="meta")
    assert solver.devices == ["meta"]
    data = klmgraph.load_dataset(path)
    assert torch.equal(data.spins, host)
    torch.testing.assert_close(data.field, ed.energy_and_field(host)[1], rtol=0, atol=1e-12)
    # given configurations too: stored from the host, solved on ``device``
    solver.devices.clear()
    path = klmgraph.generate_dataset(tmp_path / "e.h5", solver, spins=host, batch_size=3, progress=False,
                                     device="meta")
    assert solver.devices == ["meta"] and torch.equal(klmgraph.load_dataset(path).spins, host)


def test_generate_with_k_grid_records_it(tmp_path):
    ed = klmgraph.ExactDiagonalization(klmgraph.triangular(5, 5, t3=-0.85), J=-1.0, mu=-3.5, k_grid=(2, 2))
    path = klmgraph.generate_dataset(tmp_path / "k.h5", ed, num_samples=2, seed=1, progress=False)
    data = klmgraph.load_dataset(path)
    assert data.hamiltonian["k_grid"] == [2, 2]
    torch.testing.assert_close(data.energy, ed.energy_and_field(data.spins)[0], rtol=0, atol=1e-12)


def test_a_file_written_with_rotations_alone_augments_with_mirrors_too(tmp_path):
    """Files from before mirrors joined the point group store C6 alone; loading gives C6v, so
    training on them augments with every operation that leaves their labels as they are."""
    ed = klmgraph.ExactDiagonalization(klmgraph.triangular(6, 6, t3=-0.85), J=-1.0, mu=-3.5)
    path = klmgraph.generate_dataset(tmp_path / "d.h5", ed, num_samples=2, seed=0, progress=False)
    with h5py.File(path, "r+") as f:  # made old: rotations alone, no mark
        assert f["graph"].attrs["point_group"] == "rotations and mirrors"
        del f["graph"].attrs["point_group"]
        proper = np.linalg.det(f["graph/symmetry_rotation"][()]) > 0
        for key in ("symmetry_perm", "symmetry_rotation"):
            kept = f["graph"][key][()][proper]
            del f["graph"][key]
            f["graph"][key] = kept
    with h5py.File(path, "r") as f:
        assert f["graph/symmetry_perm"].shape == (6, 36)
    data = klmgraph.load_dataset(path)
    assert torch.equal(data.graph.symmetry_perm, ed.graph.symmetry_perm)
    assert data.graph.symmetry_perm.shape == (12, 36)
    # the labels of a mirrored configuration are the moved labels (what the augmentation assumes)
    perm = data.graph.symmetry_perm[6]
    moved = torch.empty_like(data.spins[0])
    moved[perm] = data.spins[0]
    energy, field = ed.energy_and_field(moved)
    torch.testing.assert_close(energy, data.energy[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(field[perm], data.field[0], rtol=0, atol=1e-10)
