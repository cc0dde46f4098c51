"""The active-learning loop: selection, provenance, configuration errors, and resuming after a
kill at every stage without relabelling or retraining."""
import json

import pytest
import torch

import klmgraph
from klmgraph.cli import main
from klmgraph.electrons import ExactDiagonalization
from klmgraph.learn import STAGES, learn_config_from_dict, run_learning, select_by_spread
from klmgraph.learn import loop as loop_module
from klmgraph.nn.committee import calibration_factor

TINY = {
    "system": {"lattice": "square", "size": [4, 4], "J": 7.0, "filling": 0.48},
    "initial": {"train_samples": 6, "validation_samples": 3},
    "model": {"committee": 2, "channels": 2, "num_interactions": 1},
    "optimizer": {"name": "adam", "lr": 0.02},
    "training": {"epochs": 3, "batch_size": 3, "energy_weight": 1.0},
    "finetune": {"epochs": 2, "energy_weight": 5.0},
    "explore": {"conditions": [{"hz": 0.0, "T": 0.0}, {"hz": 0.3, "T": 0.05}], "runs": 2, "steps": 8, "dt": 0.5,
                "snapshot_every": 2},
    "select": {"labels": 3, "holdout": 2, "min_gap": 2},
    "loop": {"iterations": 1},
}


def test_selection_takes_the_highest_spread_first():
    spread = torch.tensor([0.1, 0.9, 0.5, 0.8, 0.3, 0.7])
    run = torch.tensor([0, 0, 1, 1, 2, 2])
    step = torch.tensor([0, 10, 0, 10, 0, 10])
    one = torch.zeros(6, dtype=torch.long)
    assert select_by_spread(spread, run, step, one, 3).tolist() == [1, 3, 5]
    # within min_gap of a chosen state of the same run: skipped while others are left
    close = torch.tensor([0, 1, 0, 1, 0, 1])
    assert select_by_spread(spread, run, close, one, 3, min_gap=5).tolist() == [1, 3, 5]
    one_run, steps = torch.zeros(6, dtype=torch.long), torch.tensor([0, 10, 20, 30, 40, 50])
    assert select_by_spread(spread, one_run, steps, one, 3, min_gap=15).tolist() == [1, 3, 5]
    # too close everywhere: the best far-enough state (step 50), then the rest fills up by spread
    assert select_by_spread(spread, one_run, steps, one, 3, min_gap=25).tolist() == [1, 5, 3]
    # every condition gets its share before a second pass by spread
    condition = torch.tensor([0, 0, 0, 0, 1, 1])
    assert select_by_spread(spread, run, step, condition, 2).tolist() == [1, 5]
    with pytest.raises(ValueError, match="cannot select 7"):
        select_by_spread(spread, run, step, one, 7)


def test_selection_skips_states_it_already_took():
    """min_distance: a converged relaxation's snapshots (the same state) are labelled once; the
    distance counts across runs; the fill-up pass still takes them when nothing else is left."""
    base = torch.nn.functional.normalize(torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    # candidates 0-2: one run sitting at state 0 (tiny changes); 3: another run at state 0 too;
    # 4, 5: states 1 and 2
    spins = torch.stack([base[0], base[0] + 1e-4, base[0] - 1e-4, base[0] + 2e-4, base[1], base[2]])
    spread = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    run = torch.tensor([0, 0, 0, 1, 2, 3])
    step = torch.tensor([0, 100, 200, 100, 100, 100])
    one = torch.zeros(6, dtype=torch.long)
    assert select_by_spread(spread, run, step, one, 3, min_gap=50).tolist() == [0, 1, 2]
    assert select_by_spread(spread, run, step, one, 3, min_gap=50, spins=spins, min_distance=0.01).tolist() == [0, 4, 5]
    assert select_by_spread(spread, run, step, one, 4, spins=spins, min_distance=0.01).tolist() == [0, 4, 5, 1]
    with pytest.raises(ValueError, match="min_distance > 0 needs the candidates' spins"):
        select_by_spread(spread, run, step, one, 3, min_distance=0.01)


def test_provenance_round_trips_through_hdf5(tmp_path):
    ed = ExactDiagonalization(klmgraph.square(4, 4), J=7.0, filling=0.48)
    a = klmgraph.generate_dataset(tmp_path / "a.h5", ed, num_samples=2, seed=0, progress=False)
    b = klmgraph.generate_dataset(tmp_path / "b.h5", ed, spins=klmgraph.random_spins(ed.graph, batch=3, seed=5),
                                  progress=False)
    prov = {"iteration": [1, 1, 2], "condition": [0, 1, 1], "step": [20, 40, 60]}
    merged = klmgraph.data.merge_datasets(tmp_path / "m.h5", [(a, None), (b, prov)], conditions=[{"hz": 0}, {"hz": 1}])
    data = klmgraph.load_dataset(merged)
    assert data.provenance["iteration"].tolist() == [-1, -1, 1, 1, 2]
    assert data.provenance["condition"].tolist() == [-1, -1, 0, 1, 1]
    assert data.provenance["step"].tolist() == [-1, -1, 20, 40, 60]
    assert data.provenance["conditions"] == [{"hz": 0}, {"hz": 1}]
    both = [klmgraph.load_dataset(a), klmgraph.load_dataset(b)]
    assert torch.equal(data.spins, torch.cat([d.spins for d in both]))
    assert torch.equal(data.field, torch.cat([d.field for d in both]))
    again = klmgraph.data.merge_datasets(tmp_path / "m2.h5", [(merged, "stored")], conditions=[])
    assert klmgraph.load_dataset(again).provenance["step"].tolist() == [-1, -1, 20, 40, 60]
    assert klmgraph.load_dataset(a).provenance is None
    with pytest.raises(ValueError, match="provenance step"):
        klmgraph.data.merge_datasets(tmp_path / "bad.h5", [(b, {**prov, "step": [1]})])


@pytest.mark.parametrize("change, message", [
    ({"explore": {"bogus": 1}}, r"unknown key\(s\) \['bogus'\] in \[explore\]"),
    ({"select": {"labels": 30}}, r"\[select\] labels \+ holdout = 32 but \[explore\] yields only 20"),
    ({"system": {"lattice": "hexagon"}}, r"\[system\] lattice must be one of"),
    ({"system": {"mu": -1.0}}, r"\[system\] give exactly one of filling"),
    ({"model": {"committee": 1}}, r"\[model\] committee must be >= 2"),
    ({"loop": {"ed_budget": 10}}, r"\[loop\] ed_budget = 10 is less than one iteration needs \(14"),
    ({"training": {"out": "x"}}, r"\[training\] out is set by klmgraph learn"),
    ({"optimizer": {"name": "sgd"}}, r"\[optimizer\] name must be"),
    ({"explore": {"conditions": [{"hz": 0, "B": 1}]}}, r"\[explore\] conditions\[0\]"),
    ({"what": {}}, r"unknown section\(s\) \['what'\]"),
    ({"select": {"by": "energy"}}, r"\[select\] by must be one of \['rmse_field', 'max_site_error'\]"),
    ({"select": {"min_distance": -0.1}}, r"\[select\] min_distance must be a number in \[0, 2\)"),
    ({"finetune": {"energy_weight": -1.0}}, r"\[finetune\] energy_weight must be a number >= 0"),
])
def test_config_errors_name_the_key(change, message):
    raw = {k: dict(v) for k, v in TINY.items()}
    for section, values in change.items():
        raw.setdefault(section, {}).update(values)
    with pytest.raises(ValueError, match=message):
        learn_config_from_dict(raw)


def test_quick_overrides_apply_only_with_quick():
    raw = {**TINY, "quick": {"explore.steps": 4, "loop.iterations": 0}}
    assert learn_config_from_dict(raw).explore.steps == 8
    quick = learn_config_from_dict(raw, quick=True)
    assert quick.explore.steps == 4 and quick.loop.iterations == 0


class _Killed(Exception):
    pass


def test_loop_resumes_after_a_kill_at_every_stage(tmp_path, monkeypatch, one_thread):
    """Killed right after every stage (each once), then rerun: ED labels every configuration
    once, trains every committee once, explores every condition once, and ends where an
    uninterrupted loop ends."""
    config = learn_config_from_dict(TINY)
    labelled, trained = [], []
    ed_call = ExactDiagonalization.energy_and_field
    monkeypatch.setattr(ExactDiagonalization, "energy_and_field",
                        lambda self, spins: labelled.append(spins.reshape(-1, spins.shape[-2], 3).shape[0])
                        or ed_call(self, spins))
    train_call = loop_module.train
    monkeypatch.setattr(loop_module, "train", lambda *a, **k: trained.append(1) or train_call(*a, **k))
    explored = []
    llg_run = loop_module.LLG.run
    monkeypatch.setattr(loop_module.LLG, "run", lambda *a, **k: explored.append(1) or llg_run(*a, **k))

    reference = run_learning(config, tmp_path / "straight", progress=False, log=lambda line: None)
    labels_straight, trainings_straight, explorations_straight = sum(labelled), len(trained), len(explored)
    labelled.clear(), trained.clear(), explored.clear()

    seen, kills = set(), []

    def kill(name, k):
        if (name, k) not in seen:
            seen.add((name, k))
            kills.append(name)
            raise _Killed(name)

    while True:
        try:
            result = run_learning(config, tmp_path / "killed", progress=False, log=lambda line: None, on_stage=kill)
            break
        except _Killed:
            continue
    assert set(kills) == set(STAGES)  # every stage was interrupted at least once
    assert sum(labelled) == labels_straight == result["iterations"][-1]["labels"]
    assert len(trained) == trainings_straight == 2
    # a condition explored before the kill is read back, not run again
    assert len(explored) == explorations_straight == 2 * len(config.explore.conditions)
    assert not list((tmp_path / "killed").glob("iter*/explore_parts"))
    for a, b in zip(reference["iterations"], result["iterations"]):
        for key in ("labels", "explored_rmse_field", "predicted_rmse_field", "val_rmse_field"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    report = json.loads((tmp_path / "killed" / "report.json").read_text())
    assert [e["iteration"] for e in report["iterations"]] == [0, 1]
    assert report["stopped"] == "1 iteration(s) done"
    for name in ("report.md", "error_vs_iteration.png", "true_vs_predicted.png"):
        assert (tmp_path / "killed" / name).is_file()
    # the explored labels carry their provenance into the next iteration's training set
    data = klmgraph.load_dataset(tmp_path / "killed" / "iter001" / "train.h5")
    prov = data.provenance
    assert (prov["iteration"] == -1).sum() == 6 and (prov["iteration"] == 0).sum() == 3
    explored = prov["iteration"] == 0
    assert set(prov["condition"][explored].tolist()) <= {0, 1} and (prov["step"][explored] >= 0).all()
    # the fine-tuning has its own energy weight
    for k, weight in ((0, 1.0), (1, 5.0)):
        run_config = json.loads((tmp_path / "straight" / f"iter{k:03d}" / "training" / "config.json").read_text())
        assert run_config["training"]["energy_weight"] == weight
    # every committee is refitted on its own exploration's hold-out states (the first one was
    # calibrated on random data); each state's prediction uses the factor of the others (leave one out)
    first = reference["iterations"][0]
    assert first["calibration_source"].startswith("these hold-out states, leave one out")
    assert reference["iterations"][1]["calibration_source"] == first["calibration_source"]
    committee = klmgraph.load_model(tmp_path / "straight" / "iter000" / "model.pt").double()
    held = klmgraph.load_dataset(tmp_path / "straight" / "iter000" / "holdout.h5")
    u = committee.bind(held.graph).uncertainty(held.spins)
    spread, error = u.field_error / committee.calibration, u.field - held.field
    assert committee.calibration == pytest.approx(calibration_factor(spread, error), rel=1e-4) == first["calibration"]
    for j in range(len(held)):
        others = [i for i in range(len(held)) if i != j]
        c = calibration_factor(spread[others], error[others])
        assert first["holdout_predicted"][j] == pytest.approx(c * float(spread[j].pow(2).mean().sqrt()), rel=1e-4)
    # and a finished loop run again does nothing more
    labelled.clear(), trained.clear()
    run_learning(config, tmp_path / "killed", progress=False, log=lambda line: None)
    assert not labelled and not trained


def test_cli_learn_names_a_bad_key(tmp_path, capsys):
    path = tmp_path / "learn.toml"
    path.write_text('[system]\nlattice = "square"\nsize = [4, 4]\nJ = 7.0\nfilling = 0.48\n'
                    '[select]\nlabel = 3\n')
    assert main(["learn", "--config", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "unknown key(s) ['label'] in [select]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_examples_configurations_are_valid():
    from pathlib import Path

    from klmgraph.learn import load_learn_config

    examples = Path(__file__).parent.parent / "examples"
    for name in ("learn_square.toml", "learn_triangular.toml", "learn_triangular_phases.toml"):
        for quick in (False, True):
            config = load_learn_config(examples / name, quick=quick)
            assert config.train["model"]["committee"] >= 2


@pytest.mark.parametrize("by, key", [("rmse_field", "predicted_rmse_field"), ("max_site_error", "max_site_error")])
def test_select_ranks_by_the_configured_spread(tmp_path, by, key):
    import numpy as np

    raw = {k: dict(v) for k, v in TINY.items()}
    raw["select"] = {"labels": 3, "holdout": 2, "min_gap": 0, "by": by}
    loop = loop_module._Loop(learn_config_from_dict(raw), tmp_path, "cpu", False, lambda line: None, None)
    loop.it(0).mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    n = 20
    rmse, largest = torch.rand(n, generator=gen, dtype=torch.float64), torch.rand(n, generator=gen, dtype=torch.float64)
    np.savez(loop.it(0) / "explore.npz", spins=np.zeros((n, 16, 3)), run=np.arange(n), step=np.zeros(n, dtype=int),
             condition=np.zeros(n, dtype=int), predicted_rmse_field=rmse.numpy(), max_site_error=largest.numpy())
    loop.select(0)
    chosen = json.loads((loop.it(0) / "selection.json").read_text())["labels"]
    ranking = {"predicted_rmse_field": rmse, "max_site_error": largest}[key]
    assert chosen == torch.argsort(ranking, descending=True)[:3].tolist()


def test_initial_data_sets_join_the_first_training_and_every_later_one(tmp_path, one_thread):
    """[initial] data: labelled data sets (here two ferromagnets, relative to the configuration
    file) train the first committee beside the random configurations and stay in the
    fine-tunings' data; a data set of another Hamiltonian is refused by name."""
    from klmgraph.learn import load_learn_config

    raw = {k: dict(v) for k, v in TINY.items()}
    config = learn_config_from_dict(raw)
    ed = config.system.solver()
    extra = torch.stack([klmgraph.ferromagnet(ed.graph), -klmgraph.ferromagnet(ed.graph)])
    klmgraph.generate_dataset(tmp_path / "extra.h5", ed, spins=extra, progress=False)
    toml = tmp_path / "learn.toml"
    toml.write_text('[system]\nlattice = "square"\nsize = [4, 4]\nJ = 7.0\nfilling = 0.48\n'
                    '[initial]\ndata = ["extra.h5"]\n')
    assert load_learn_config(toml).initial.data == [str((tmp_path / "extra.h5").resolve())]

    raw["initial"] = {**raw["initial"], "data": [str(tmp_path / "extra.h5")]}
    result = run_learning(learn_config_from_dict(raw), tmp_path / "out", progress=False, log=lambda line: None)
    first = json.loads((tmp_path / "out" / "iter000" / "training" / "config.json").read_text())
    assert first["data"]["train"].endswith("initial_train.h5")
    initial = klmgraph.load_dataset(tmp_path / "out" / "data" / "initial_train.h5")
    assert len(initial) == 6 + 2
    assert torch.equal(initial.spins[6:], extra.double()) and torch.equal(initial.field[6:], klmgraph.load_dataset(
        tmp_path / "extra.h5").field)
    later = klmgraph.load_dataset(tmp_path / "out" / "iter001" / "train.h5")
    assert torch.equal(later.spins[:8], initial.spins) and len(later) == 8 + 3
    assert result["iterations"][1]["training_configurations"] == 8 + 3

    other = ExactDiagonalization(ed.graph, J=5.0, filling=0.48)
    klmgraph.generate_dataset(tmp_path / "other.h5", other, spins=extra, progress=False)
    raw["initial"]["data"] = [str(tmp_path / "other.h5")]
    with pytest.raises(ValueError, match=r"\[initial\] data .*other\.h5 holds another Hamiltonian than \[system\]"):
        run_learning(learn_config_from_dict(raw), tmp_path / "out2", progress=False, log=lambda line: None)
    assert not (tmp_path / "out2" / "data").exists()  # refused before any ED
    raw["initial"]["data"] = [str(tmp_path / "absent.h5")]
    with pytest.raises(ValueError, match=r"absent\.h5 does not exist"):
        run_learning(learn_config_from_dict(raw), tmp_path / "out3", progress=False, log=lambda line: None)
    raw["initial"]["data"] = "extra.h5"
    with pytest.raises(ValueError, match=r"\[initial\] data must be a list of data set paths"):
        learn_config_from_dict(raw)


def test_explore_runs_start_from_the_states_of_a_file(tmp_path, one_thread):
    """init = "file:PATH": every configuration of the file starts one run of its condition (the
    committee relaxes given states, e.g. the candidates of a phase diagram), run numbers stay
    distinct across conditions, a relative path is read from the configuration file's folder,
    and a file of another lattice, a missing file or a rewritten one is refused by name."""
    import numpy as np

    from klmgraph.learn import load_learn_config

    raw = {k: dict(v) for k, v in TINY.items()}
    graph = learn_config_from_dict(raw).system.solver().graph
    starts = torch.stack([klmgraph.ferromagnet(graph), klmgraph.random_spins(graph, seed=3),
                          klmgraph.random_spins(graph, seed=4)]).float() * 2.0  # not unit length: normalised
    np.save(tmp_path / "starts.npy", starts.numpy())
    raw["explore"] = {**raw["explore"], "conditions": [{"hz": 0.1, "T": 0.0, "init": f"file:{tmp_path / 'starts.npy'}"},
                                                       {"hz": 0.3, "T": 0.05}]}
    raw["loop"] = {"iterations": 0}
    out = tmp_path / "out"
    run_learning(learn_config_from_dict(raw), out, progress=False, log=lambda line: None)
    with np.load(out / "iter000" / "explore.npz") as z:
        run, step, condition, spins = (torch.from_numpy(z[k]) for k in ("run", "step", "condition", "spins"))
    assert sorted(set(run[condition == 0].tolist())) == [0, 1, 2]  # one run per configuration of the file
    assert sorted(set(run[condition == 1].tolist())) == [3, 4]  # [explore] runs = 2, numbered after them
    first = spins[(condition == 0) & (step == 0)]
    assert torch.allclose(first, (starts / starts.norm(dim=-1, keepdim=True)).double(), atol=1e-6)
    assert json.loads((out / "config.json").read_text())["start_files_sha256"]

    toml = tmp_path / "learn.toml"
    toml.write_text('[system]\nlattice = "square"\nsize = [4, 4]\nJ = 7.0\nfilling = 0.48\n'
                    '[explore]\nconditions = [{hz = 0.1, init = "file:starts.npy"}]\n')
    assert load_learn_config(toml).explore.conditions[0].init == f"file:{(tmp_path / 'starts.npy').resolve()}"

    np.save(tmp_path / "starts.npy", starts[:2].numpy())  # rewritten under the same name
    with pytest.raises(ValueError, match="holds a learning run with another configuration"):
        run_learning(learn_config_from_dict(raw), out, progress=False, log=lambda line: None)
    np.save(tmp_path / "wrong.npy", torch.zeros(2, 9, 3).numpy() + 1.0)
    for name, message in (("wrong.npy", r"conditions\[0\]\.init: .*wrong\.npy holds configurations of shape "
                                        r"\(9, 3\); the lattice .* needs \(16, 3\)"),
                          ("absent.npy", r"conditions\[0\]\.init: spin file .*absent\.npy does not exist")):
        raw["explore"]["conditions"][0]["init"] = f"file:{tmp_path / name}"
        with pytest.raises(ValueError, match=message):
            run_learning(learn_config_from_dict(raw), tmp_path / "out2", progress=False, log=lambda line: None)
    assert not (tmp_path / "out2").exists()  # refused before anything is written
    for bad in ("file:", 3):
        raw["explore"]["conditions"][0]["init"] = bad
        with pytest.raises(ValueError, match=r"init must be random, ferromagnet, ansatz or file:PATH"):
            learn_config_from_dict(raw)


def test_new_keys_at_their_defaults_leave_the_stored_configuration_as_it_was():
    """[initial] model, [select] min_distance: absent from to_dict() at their defaults, so a loop
    stored before them still resumes (its config.json compares equal)."""
    config = learn_config_from_dict({k: dict(v) for k, v in TINY.items()})
    stored = config.to_dict()
    assert "model" not in stored["initial"] and "min_distance" not in stored["select"]
    assert "start_files_sha256" not in stored


def test_loop_continues_from_a_given_committee(tmp_path, one_thread):
    """[initial] model: the given committee is iteration 0's (not retrained), explores, and is
    fine-tuned from; a single network, a committee that [model] does not describe and a missing
    file are refused by name before any ED."""
    from klmgraph.learn import load_learn_config
    from klmgraph.nn.modelfile import save_model

    raw = {k: dict(v) for k, v in TINY.items()}
    raw["loop"] = {"iterations": 0}
    first = run_learning(learn_config_from_dict(raw), tmp_path / "a", progress=False, log=lambda line: None)
    given = klmgraph.load_model(first["model"])

    raw["loop"] = {"iterations": 1}
    raw["initial"] = {**raw["initial"], "model": first["model"], "seed": 5}
    lines = []
    result = run_learning(learn_config_from_dict(raw), tmp_path / "b", progress=False, log=lines.append)
    assert any("[iteration 0] the committee of" in line for line in lines)
    assert not (tmp_path / "b" / "iter000" / "training").exists()  # not trained again
    start = klmgraph.load_model(tmp_path / "b" / "iter000" / "model.pt")
    for name, value in given.state_dict().items():  # the same weights (its calibration is refitted)
        assert torch.equal(start.state_dict()[name], value), name
    fine = json.loads((tmp_path / "b" / "iter001" / "training" / "config.json").read_text())
    assert fine["training"]["init"].endswith("iter000/model.pt")
    assert result["iterations"][0]["training_configurations"] is None
    assert "| 0 | 11 | given |" in (tmp_path / "b" / "report.md").read_text()

    toml = tmp_path / "learn.toml"
    toml.write_text('[system]\nlattice = "square"\nsize = [4, 4]\nJ = 7.0\nfilling = 0.48\n'
                    '[initial]\nmodel = "a/iter000/model.pt"\n')
    assert load_learn_config(toml).initial.model == str((tmp_path / "a" / "iter000" / "model.pt").resolve())

    single = save_model(given.members()[0], tmp_path / "one.pt")
    for model, change, message in (
            (single, {}, r"\[initial\] model: .*one\.pt holds another model \(ECNN, .*the configured one \(Committee"),
            (first["model"], {"channels": 3}, r"\[initial\] model: .*holds another model \(Committee.* than the configured"),
            (tmp_path / "absent.pt", {}, r"\[initial\] model: .*absent\.pt")):
        bad = {k: dict(v) for k, v in raw.items()}
        bad["initial"]["model"] = str(model)
        bad["model"].update(change)
        with pytest.raises(ValueError, match=message):
            run_learning(learn_config_from_dict(bad), tmp_path / "c", progress=False, log=lambda line: None)
        assert not (tmp_path / "c").exists()  # refused before anything is written
