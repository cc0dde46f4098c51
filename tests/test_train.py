import csv
import json
import math
from dataclasses import replace

import pytest
import torch

import klmgraph
from klmgraph.cli import main
from klmgraph.train import (augment, augmentation_record, config_from_dict, evaluate, load_config,
                            recorded_augmentation, train)

SMALL_ECNN = {"type": "ecnn", "channels": 4, "num_interactions": 2}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    ed = klmgraph.ExactDiagonalization(klmgraph.square(4, 4), J=7.0, filling=0.48)
    train_path = klmgraph.generate_dataset(folder / "train.h5", ed, num_samples=6, seed=0, batch_size=3, progress=False)
    val_path = klmgraph.generate_dataset(folder / "val.h5", ed, num_samples=3, seed=1, batch_size=3, progress=False)
    return train_path, val_path


def _config(datasets, out, epochs, model=SMALL_ECNN, **optimizer):
    return config_from_dict({
        "data": {"train": str(datasets[0]), "validation": str(datasets[1])},
        "model": dict(model),
        "optimizer": {"name": "adam", "lr": 0.05, **optimizer},
        "training": {"out": str(out), "epochs": epochs, "batch_size": 2, "energy_weight": 1.0, "seed": 3},
    })


def _log(out):
    with open(out / "log.csv") as f:
        return list(csv.DictReader(f))


def test_training_lowers_the_loss(datasets, tmp_path):
    result = train(_config(datasets, tmp_path / "run", epochs=12), progress=False)
    losses = [row["train_loss"] for row in result["history"]]
    assert losses[-1] < 0.1 * losses[0]
    rows = _log(tmp_path / "run")
    assert len(rows) == 12 and all(math.isfinite(float(r["val_rmse_field"])) for r in rows)
    for name in ("best.pt", "final.pt", "last.pt", "config.json"):
        assert (tmp_path / "run" / name).exists()
    best = klmgraph.load_model(tmp_path / "run" / "best.pt")
    assert isinstance(best, klmgraph.ECNN)


def test_resume_continues_exactly(datasets, tmp_path):
    train(_config(datasets, tmp_path / "straight", epochs=4), progress=False)
    train(_config(datasets, tmp_path / "resumed", epochs=2), progress=False)
    train(_config(datasets, tmp_path / "resumed", epochs=4), progress=False)  # a larger budget resumes
    straight, resumed = _log(tmp_path / "straight"), _log(tmp_path / "resumed")
    assert len(resumed) == 4
    for a, b in zip(straight, resumed):
        assert float(a["train_loss"]) == float(b["train_loss"])
        assert float(a["val_rmse_field"]) == float(b["val_rmse_field"])


def test_finished_run_is_not_extended_by_a_rerun(datasets, tmp_path):
    config = _config(datasets, tmp_path / "run", epochs=50)
    # a budget of a few microseconds: the run stops after its first epoch
    config = replace(config, training=replace(config.training, minutes=1e-7))
    first = train(config, progress=False)
    assert first["epochs_run"] == 1
    again = train(config, progress=False)
    assert again["epochs_run"] == 1 and again["history"] == [] and len(_log(tmp_path / "run")) == 1
    # a larger budget continues it
    more = train(replace(config, training=replace(config.training, minutes=0.0, epochs=2)), progress=False)
    assert more["epochs_run"] == 2


def test_resume_refuses_other_config_and_damaged_checkpoint(datasets, tmp_path):
    train(_config(datasets, tmp_path / "run", epochs=1), progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train(_config(datasets, tmp_path / "run", epochs=2, lr=0.5), progress=False)
    # a one-cycle schedule is laid out over the epochs: a larger budget is another run
    train(_config(datasets, tmp_path / "cycle", epochs=1, schedule="onecycle"), progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train(_config(datasets, tmp_path / "cycle", epochs=2, schedule="onecycle"), progress=False)
    (tmp_path / "run" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="damaged"):
        train(_config(datasets, tmp_path / "run", epochs=2), progress=False)


def test_moved_run_folder_resumes(datasets, tmp_path, monkeypatch):
    import shutil

    # a run folder with its data inside, configured with paths relative to the working directory
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for path in datasets:
        shutil.copy(path, project / "data")
    relative = ("data/train.h5", "data/val.h5")
    monkeypatch.chdir(project)
    train(_config(relative, "runs/a", epochs=1), progress=False)
    straight = train(_config(datasets, tmp_path / "straight", epochs=2), progress=False)
    # moved elsewhere and resumed from another working directory with absolute paths
    shutil.move(str(project), str(tmp_path / "moved"))
    monkeypatch.chdir(tmp_path)
    moved = tmp_path / "moved"
    result = train(_config((moved / "data/train.h5", moved / "data/val.h5"), moved / "runs/a", epochs=2),
                   progress=False)
    assert result["epochs_run"] == 2 and len(result["history"]) == 1
    assert [float(r["train_loss"]) for r in _log(moved / "runs/a")] == [h["train_loss"] for h in straight["history"]]
    # the same relative layout with other data is another run
    other = tmp_path / "other"
    shutil.copytree(moved, other)
    shutil.copy(other / "data" / "val.h5", other / "data" / "train2.h5")
    with pytest.raises(ValueError, match="another configuration"):
        train(_config((other / "data/train2.h5", other / "data/val.h5"), other / "runs/a", epochs=3), progress=False)


def test_augmentation_keeps_labels_consistent():
    graph = klmgraph.triangular(6, 6, t3=-0.85)
    ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5)
    spins = klmgraph.random_spins(graph, batch=4, seed=0)
    energy, field = ed.energy_and_field(spins)
    data = klmgraph.SpinDataset(graph, spins, energy, field)
    items = augment([data[i] for i in range(4)], torch.Generator().manual_seed(1))
    moved = 0
    for item, original in zip(items, spins):
        e, b = ed.energy_and_field(item.spins)
        torch.testing.assert_close(b, item.field, rtol=0, atol=1e-10)
        moved += not torch.equal(item.spins, original)
    assert moved > 0


def test_run_records_its_augmentation_when_it_starts(datasets, tmp_path):
    run = tmp_path / "run"
    train(_config(datasets, run, epochs=1), progress=False)
    record = json.loads((run / "augmentation.json").read_text())
    # the square lattice's C4v: 4 rotations and 4 mirrors
    assert record == {"applied": True, "operations": 8, "mirrors": True,
                      "text": "each configuration under a random one of the lattice's 8 point-group operations "
                              "(rotations and mirrors)"}
    assert recorded_augmentation(run) == record["text"]
    # a resumed run keeps what it started with: a run from before the record stays without one
    (run / "augmentation.json").unlink()
    train(_config(datasets, run, epochs=2), progress=False)
    assert not (run / "augmentation.json").exists()
    assert recorded_augmentation(run).startswith("not recorded")
    config = _config(datasets, tmp_path / "off", epochs=1)
    train(replace(config, data=replace(config.data, augment=False)), progress=False)
    assert json.loads((tmp_path / "off" / "augmentation.json").read_text())["text"] == "none"


def test_augmentation_record_names_the_group():
    graph = klmgraph.triangular(6, 6)
    assert augmentation_record(graph, True)["operations"] == 12 and augmentation_record(graph, True)["mirrors"]
    rotations = torch.linalg.det(graph.symmetry_rotation) > 0  # C6 alone, as trained before the mirrors
    graph.symmetry_perm, graph.symmetry_rotation = graph.symmetry_perm[rotations], graph.symmetry_rotation[rotations]
    record = augmentation_record(graph, True)
    assert record["operations"] == 6 and not record["mirrors"] and record["text"].endswith("(rotations only)")
    graph.symmetry_perm, graph.symmetry_rotation = graph.symmetry_perm[:1], graph.symmetry_rotation[:1]
    assert not augmentation_record(graph, True)["applied"]
    assert augmentation_record(graph, True)["text"].startswith("none: the training graph")
    hand_made = klmgraph.square(4, 4)
    del hand_made.symmetry_rotation  # permutations without their matrices: mirrors unknown, not guessed
    record = augmentation_record(hand_made, True)
    assert record["operations"] == 8 and record["mirrors"] is None and "not known" in record["text"]


def test_evaluate_matches_hand_computed_rmse(datasets):
    data = klmgraph.load_dataset(datasets[1])
    torch.manual_seed(0)
    model = klmgraph.ECNN.for_graph(data.graph, channels=4, num_interactions=2).double()
    metrics = evaluate(model, data, batch_size=2)
    provider = model.bind(data.graph)
    energy, field = provider.energy_and_field(data.spins)
    assert metrics["rmse_field"] == pytest.approx(float(((field - data.field) ** 2).mean().sqrt()), rel=1e-10)
    per_site = (energy - data.energy) / data.graph.num_nodes
    assert metrics["rmse_energy_per_site"] == pytest.approx(float((per_site ** 2).mean().sqrt()), rel=1e-10)
    # the transverse part: the error perpendicular to each spin, by the cross product |S x dB|
    cross = torch.cross(data.spins, field - data.field, dim=-1)
    assert metrics["rmse_field_transverse"] == pytest.approx(float(cross.pow(2).sum(-1).mean().div(3).sqrt()),
                                                             rel=1e-10)
    assert metrics["rmse_field_transverse"] < metrics["rmse_field"]


def test_config_errors(datasets, tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['learning_rate'\] in \[optimizer\]"):
        config_from_dict({"data": {"train": "x.h5"}, "optimizer": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match="unknown config section"):
        config_from_dict({"data": {"train": "x.h5"}, "trainer": {}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['width'\] in \[model\]"):
        config_from_dict({"data": {"train": "x.h5"}, "model": {"type": "ecnn", "width": 3}})
    with pytest.raises(ValueError, match="type must be one of"):
        config_from_dict({"data": {"train": "x.h5"}, "model": {"type": "transformer"}})
    with pytest.raises(ValueError, match="a training data set is required"):
        config_from_dict({})
    (tmp_path / "bad.toml").write_text("[data\ntrain=")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    other = klmgraph.ExactDiagonalization(klmgraph.triangular(5, 5), J=-1.0, mu=-3.5)
    other_path = klmgraph.generate_dataset(tmp_path / "tri.h5", other, num_samples=1, progress=False)
    config = config_from_dict({"data": {"train": str(datasets[0]), "validation": str(other_path)},
                               "training": {"out": str(tmp_path / "run")}})
    with pytest.raises(ValueError, match="generated on triangular 5x5.*not on square 4x4"):
        train(config, progress=False)


def test_ifnn_physics():
    graph = klmgraph.square(8, 8)
    torch.manual_seed(0)
    model = klmgraph.nn.IFNN.for_graph(graph, cutoff=2.3, hidden=(16, 8)).double()
    provider = model.bind(graph)
    spins = klmgraph.random_spins(graph, seed=0)
    energy, field = provider.energy_and_field(spins)
    # global spin rotation: E invariant, B rotated
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    rot = q * torch.sign(torch.det(q))
    e_rot, b_rot = provider.energy_and_field(spins @ rot.T)
    torch.testing.assert_close(e_rot, energy, rtol=0, atol=1e-10)
    torch.testing.assert_close(b_rot, field @ rot.T, rtol=0, atol=1e-10)
    # translation: the field moves with the configuration
    perm = klmgraph.site_permutation(graph, translation=(3.0, 1.0))
    moved = torch.empty_like(spins)
    moved[perm] = spins
    torch.testing.assert_close(provider.energy_and_field(moved)[1][perm], field, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="too small for the IFNN cutoff"):
        model.bind(klmgraph.square(4, 4))
    for bad in ("pairs", 3.0, True):
        with pytest.raises(ValueError, match='bonds must be "all".*"centre".*or a radius in \\[0, cutoff\\], got'):
            klmgraph.nn.IFNN.for_graph(graph, cutoff=2.3, bonds=bad)
    # built from a description alone (no class count), it still runs on its lattice
    bare = klmgraph.nn.IFNN(graph.description, cutoff=2.3, hidden=(16, 8)).double()
    assert bare.bind(graph).energy_and_field(spins)[1].shape == (64, 3)
    with pytest.raises(ValueError, match="built for the lattice"):
        bare.bind(klmgraph.triangular(8, 8))


@pytest.mark.parametrize("lattice, cutoff, triangle_cutoff, bond_set",
                         [("square", math.sqrt(26), None, "all"), ("honeycomb", 2.0, 1.01, "all"),
                          ("kagome", 2.1, None, "all"), ("square", math.sqrt(26), None, "centre"),
                          ("kagome", 2.1, None, "centre"), ("square", math.sqrt(26), None, 2.3)])
def test_ifnn_descriptors_are_the_bond_variables_and_chiralities(lattice, cutoff, triangle_cutoff, bond_set):
    """The descriptors gathered from the per-bond-class table equal S_j . S_k and
    S_r . (S_j x S_k) computed directly on each site's neighbourhood."""
    graph = getattr(klmgraph, lattice)(12, 12) if lattice == "square" else getattr(klmgraph, lattice)(6, 6)
    model = klmgraph.nn.IFNN.for_graph(graph, cutoff=cutoff, triangle_cutoff=triangle_cutoff, hidden=(8,),
                                       bonds=bond_set).double()
    tables = model.prepare(graph)
    spins = klmgraph.random_spins(graph, seed=3).double()
    for b, geo in enumerate(model.geometry):
        hood = spins[tables.neighbourhoods[b]]  # (S, M, 3)
        pairs, triangles = torch.as_tensor(geo["pairs"]), torch.as_tensor(geo["triangles"])
        bonds = (hood[:, pairs[:, 0]] * hood[:, pairs[:, 1]]).sum(-1)
        chirality = (hood[:, :1] * torch.linalg.cross(hood[:, triangles[:, 0]], hood[:, triangles[:, 1]])).sum(-1)
        assert triangles.shape[0] > 0
        if bond_set == "centre":  # the centre with each neighbour, once
            assert pairs[:, 0].eq(0).all() and sorted(pairs[:, 1].tolist()) == list(range(1, len(geo["offsets"])))
        torch.testing.assert_close(model.descriptors(spins, tables, b), torch.cat([bonds, chirality], -1),
                                   rtol=0, atol=1e-14)
    if bond_set == "all":  # each unordered bond is one class: far fewer classes than pairs
        assert sum(len(g["displacements"]) for g in model.geometry) < min(len(g["pairs"]) for g in model.geometry) / 5
    elif bond_set == "centre" and lattice == "square":
        assert model.num_descriptors == [88 + 12]  # 88 neighbours within sqrt(26), 12 triangles of sides 1, 1, sqrt(2)
    elif lattice == "square":  # the centre's 88 bonds and the 190 pairs of its 20 neighbours within sqrt(5)
        assert model.num_descriptors == [88 + 190 + 12]


def test_cli_train_and_evaluate(datasets, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(f"""
[data]
train = "{datasets[0]}"
validation = "{datasets[1]}"
[model]
type = "ifnn"
cutoff = 1.5
hidden = [16, 8]
[optimizer]
name = "adam"
lr = 0.01
[training]
out = "{tmp_path / 'run'}"
epochs = 3
batch_size = 3
dtype = "float64"
""")
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    assert "3 epochs" in capsys.readouterr().out
    plot = tmp_path / "parity.png"
    assert main(["evaluate", str(tmp_path / "run" / "best.pt"), str(datasets[1]), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "rmse_field=" in out and "rmse_field_transverse=" in out and plot.stat().st_size > 1000


def test_cli_evaluate_names_a_missing_model_file(datasets, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothere.pt"), str(datasets[1])]) == 2
    assert "no model file at" in capsys.readouterr().err


def test_threads_setting(datasets, tmp_path):
    config = _config(datasets, tmp_path / "run", epochs=1)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        train(replace(config, training=replace(config.training, threads=-1)), progress=False)
    before = torch.get_num_threads()
    try:
        train(config, progress=False)
        # resuming with another thread count is the same run
        more = train(replace(config, training=replace(config.training, threads=1, epochs=2)), progress=False)
        assert more["epochs_run"] == 2 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
