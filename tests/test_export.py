"""Output for big runs and other tools: compressed chunked spins in trajectories (old files still
read), OVF 2.0 read back by discretisedfield (and an irregular mesh by parsing it), VTK by meshio,
and `klmgraph export`."""
import h5py
import numpy as np
import pytest
import torch

import klmgraph
from klmgraph.cli import main
from klmgraph.export import export_snapshot, rectangular_mesh, write_ovf, write_vtu
from klmgraph.providers import Heisenberg
from klmgraph.trajectory import read_trajectory

pytestmark = pytest.mark.usefixtures("one_thread")


def run(tmp_path, graph, steps=6, name="run"):
    llg = klmgraph.LLG(Heisenberg(graph, 1.0), dt=0.1, alpha=0.5, temperature=0.1, field=(0, 0, 0.2))
    klmgraph.simulate(llg, graph, klmgraph.random_spins(graph, seed=0), steps, tmp_path / name, snapshot_every=2)
    return tmp_path / name / "trajectory.h5"


def read_ovf(path):
    """Header dict and data rows of an OVF 2.0 file with Binary 8 data (a reader written from the spec)."""
    raw = path.read_bytes()
    start = raw.index(b"# Begin: Data Binary 8\n") + len(b"# Begin: Data Binary 8\n")
    header = {}
    for line in raw[:start].decode("ascii").splitlines():
        key, _, value = line[2:].partition(": ")
        header[key.strip().lower()] = value.strip()
    end = raw.index(b"\n# End: Data Binary 8")
    data = np.frombuffer(raw[start:end], dtype="<f8")
    assert data[0] == 123456789012345.0  # the format's check value
    return header, data[1:]


@pytest.mark.parametrize("graph", [klmgraph.square(6, 4), klmgraph.cubic(3, 4, 5), klmgraph.square(5, 3, periodic=False)])
def test_ovf_rectangular_mesh_reads_back_with_discretisedfield(tmp_path, graph):
    df = pytest.importorskip("discretisedfield", reason="discretisedfield (the test extra) is not installed")
    spins = klmgraph.random_spins(graph, seed=1)
    assert write_ovf(graph.description, spins, tmp_path / "m.ovf") == "rectangular"
    field = df.Field.from_file(str(tmp_path / "m.ovf"))
    size = graph.description["size"] + [1] * (3 - len(graph.description["size"]))
    assert list(field.mesh.n) == size
    # cell (ix, iy, iz) is site (ix * L2 + iy) * L3 + iz, the lattice's row-major order
    assert np.array_equal(field.array.reshape(-1, 3), spins.numpy())
    centre = field.mesh.index2point((1, 2, 0))
    assert np.allclose(centre, graph.pos[(1 * size[1] + 2) * size[2]].numpy() + 0.5 * np.array([1, 1, 1]))


def test_ovf_irregular_mesh_for_other_lattices(tmp_path):
    graph = klmgraph.triangular(4, 5)
    assert rectangular_mesh(graph.description) is None
    spins = klmgraph.random_spins(graph, seed=2)
    with pytest.raises(ValueError, match="positions"):
        write_ovf(graph.description, spins, tmp_path / "t.ovf")
    assert write_ovf(graph.description, spins, tmp_path / "t.ovf", positions=graph.pos) == "irregular"
    header, data = read_ovf(tmp_path / "t.ovf")
    assert header["meshtype"] == "irregular" and int(header["pointcount"]) == graph.num_nodes
    rows = data.reshape(-1, 6)
    assert np.array_equal(rows[:, :3], graph.pos.numpy()) and np.array_equal(rows[:, 3:], spins.numpy())


def test_vtu_reads_back_with_meshio(tmp_path):
    meshio = pytest.importorskip("meshio")
    graph = klmgraph.kagome(3, 4)
    spins = klmgraph.random_spins(graph, seed=3)
    write_vtu(spins, graph.pos, tmp_path / "k.vtu")
    mesh = meshio.read(tmp_path / "k.vtu")
    assert np.allclose(mesh.points, graph.pos.numpy())
    assert np.array_equal(mesh.point_data["spins"], spins.numpy())
    assert np.array_equal(mesh.point_data["Sz"], spins[:, 2].numpy())
    assert mesh.cells[0].type == "vertex" and len(mesh.cells[0].data) == graph.num_nodes


def test_export_command_last_and_given_step(tmp_path, capsys):
    meshio = pytest.importorskip("meshio")
    df = pytest.importorskip("discretisedfield", reason="discretisedfield (the test extra) is not installed")
    graph = klmgraph.square(6, 6)
    path = run(tmp_path, graph)
    traj = read_trajectory(path)
    assert main(["export", str(path), "--format", "ovf", "--out", str(tmp_path / "last.ovf")]) == 0
    field = df.Field.from_file(str(tmp_path / "last.ovf"))
    assert np.allclose(field.array.reshape(-1, 3), traj.spins[-1])
    assert main(["export", str(tmp_path / "run"), "--format", "vtu", "--step", "2", "--out", str(tmp_path / "s2.vtu")]) == 0
    assert np.allclose(meshio.read(tmp_path / "s2.vtu").point_data["spins"], traj.spins[1])
    assert main(["export", str(path), "--format", "vtu", "--step", "3", "--out", str(tmp_path / "x.vtu")]) == 2
    assert "no snapshot at step 3" in capsys.readouterr().err


def test_export_of_a_networkx_run_says_what_to_do(tmp_path):
    import networkx as nx

    graph = klmgraph.from_networkx(nx.cycle_graph(8))
    path = run(tmp_path, graph, steps=2)
    with pytest.raises(ValueError, match="positions the file does not hold"):
        export_snapshot(path, tmp_path / "x.vtu", "vtu")


def test_large_snapshots_are_chunked_and_compressed_and_old_files_still_read(tmp_path):
    graph = klmgraph.square(48, 48)
    path = run(tmp_path, graph, steps=4)
    with h5py.File(path, "r") as f:
        ds = f["spins"]
        assert ds.compression == "gzip" and ds.shuffle and ds.chunks == (1, graph.num_nodes, 3)
        stored = ds[:]
    # a file as older versions wrote it (spins uncompressed, one chunk per snapshot) reads the same
    with h5py.File(path, "r+") as f:
        del f["spins"]
        f.create_dataset("spins", data=stored, maxshape=(None, graph.num_nodes, 3), chunks=(1, graph.num_nodes, 3))
    old = read_trajectory(path)
    assert np.array_equal(old.spins, stored)
    # and a run continues from it (its new snapshots appended to the old layout)
    llg = klmgraph.LLG(Heisenberg(graph, 1.0), dt=0.1, alpha=0.5, temperature=0.1, field=(0, 0, 0.2))
    result = klmgraph.simulate(llg, graph, klmgraph.random_spins(graph, seed=0), 6, tmp_path / "run", snapshot_every=2)
    assert result.resumed_from == 4 and list(read_trajectory(path).spins_step) == [0, 2, 4, 6]
