"""Committees: mean and spread against the members one by one, the file format, calibration,
committee training, and the uncertainty recorded (and acted on) during dynamics."""
import json
import warnings

import numpy as np
import pytest
import torch

import klmgraph
from klmgraph.cli import main
from klmgraph.nn.committee import Committee, calibration_factor, cross_fitted_rmse, raw_spread
from klmgraph.simulation import UncertaintyWarning
from klmgraph.train import calibrate_file, config_from_dict, train


def _members(graph, m=3, seed=0):
    out = []
    for k in range(m):
        torch.manual_seed(seed + k)
        out.append(klmgraph.ECNN.for_graph(graph, channels=3, num_interactions=2).double())
    return out


def test_committee_mean_and_spread_equal_the_members_one_by_one(one_thread):
    graph = klmgraph.square(4, 4)
    members = _members(graph)
    committee = Committee(members, calibration=1.7)
    bound = committee.bind(graph)
    spins = klmgraph.random_spins(graph, batch=2, seed=3)
    single = [m.bind(graph).energy_and_field(spins) for m in members]
    energies = torch.stack([e for e, _ in single])  # (M, B)
    fields = torch.stack([b for _, b in single])  # (M, B, N, 3)
    energy, field = bound.energy_and_field(spins)
    assert torch.allclose(energy, energies.mean(0), atol=1e-12)
    assert torch.allclose(field, fields.mean(0), atol=1e-12)
    u = bound.uncertainty(spins)
    assert torch.allclose(u.energy, energy, atol=1e-12) and torch.allclose(u.field, field, atol=1e-12)
    # per site: calibration x sqrt(mean over components of the unbiased variance over members)
    spread = ((fields - fields.mean(0)) ** 2).sum(0) / (len(members) - 1)  # (B, N, 3)
    assert torch.allclose(u.field_error, 1.7 * spread.mean(-1).sqrt(), atol=1e-12)
    assert torch.allclose(u.energy_per_site_error, energies.std(0) / graph.num_nodes, atol=1e-12)
    assert torch.allclose(u.rmse_field, u.field_error.pow(2).mean(-1).sqrt())
    assert u.field_error.shape == (2, graph.num_nodes) and (u.field_error > 0).all()
    # one configuration gives unbatched shapes; the members come back one by one too
    assert bound.uncertainty(spins[0]).field_error.shape == (graph.num_nodes,)
    for copy, member in zip(committee.members(), members):
        assert all(torch.equal(a, b) for a, b in zip(copy.state_dict().values(), member.state_dict().values()))


def test_identical_members_have_zero_spread(one_thread):
    graph = klmgraph.square(4, 4)
    one = _members(graph, 1)[0]
    committee = Committee([one, one, one])
    u = committee.bind(graph).uncertainty(klmgraph.random_spins(graph, seed=1))
    assert torch.all(u.field_error == 0) and torch.all(u.energy_per_site_error < 1e-15)  # the mean rounds
    e, b = one.bind(graph).energy_and_field(klmgraph.random_spins(graph, seed=1))
    assert torch.allclose(u.field, b, atol=1e-12) and torch.allclose(u.energy, e, atol=1e-12)
    with pytest.raises(ValueError, match="spread is zero"):
        calibration_factor(u.field_error, torch.ones(graph.num_nodes, 3))


def test_calibration_factor_on_synthetic_errors():
    gen = torch.Generator().manual_seed(0)
    spread = 0.1 + torch.rand(200, 16, generator=gen)  # (configs, sites)
    # errors drawn with 2.5 times the spread: the factor that makes the prediction honest is 2.5
    error = 2.5 * spread[..., None] * torch.randn(200, 16, 3, generator=gen)
    assert calibration_factor(spread, error) == pytest.approx(2.5, rel=0.03)
    # and exactly: RMSE(error) / RMS(spread)
    assert calibration_factor(torch.full((4, 2), 0.5), torch.full((4, 2, 3), -3.0)) == pytest.approx(6.0)
    # leave one out: each configuration's prediction is the factor of the others times its own spread
    loo = cross_fitted_rmse(spread[:5], error[:5])
    for j in range(5):
        others = [i for i in range(5) if i != j]
        c = calibration_factor(spread[others], error[others])
        assert float(loo[j]) == pytest.approx(c * float(spread[j].pow(2).mean().sqrt()), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 configurations"):
        cross_fitted_rmse(spread[:1], error[:1])
    fields = torch.tensor([[[1.0, 0, 0]], [[3.0, 0, 0]]])  # two members, one site
    assert raw_spread(fields) == pytest.approx(torch.tensor([(2.0 / 3) ** 0.5]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_members_equal_the_vmapped_path(dtype, one_thread):
    from klmgraph.nn import fused

    if not fused.available():
        pytest.skip("no C++ compiler: the committee takes the vmapped path only")
    graph = klmgraph.square(6, 6)
    committee = Committee(_members(graph), calibration=1.4).to(dtype)
    bound = committee.bind(graph)
    spins = klmgraph.random_spins(graph, batch=2, seed=5, dtype=dtype)
    tol = {"atol": 1e-4, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}
    committee.fused = False
    e_ref, b_ref = bound.energy_and_field(spins)
    u_ref = bound.uncertainty(spins)
    committee.fused = True
    e, b = bound.energy_and_field(spins)
    u = bound.uncertainty(spins)
    assert torch.allclose(e, e_ref, **tol) and torch.allclose(b, b_ref, **tol)
    assert torch.allclose(u.field_error, u_ref.field_error, **tol)
    assert torch.allclose(u.energy_per_site_error, u_ref.energy_per_site_error, **tol)
    # the members' kernel takes the bound committee's thread count; its sums do not depend on it
    pinned = committee.bind(graph, threads=2)
    assert torch.equal(pinned.energy_and_field(spins)[1], b)
    assert torch.equal(pinned.uncertainty(spins).field_error, u.field_error)
    # the kernel's member copies follow the weights: a changed weight changes the prediction
    with torch.no_grad():
        next(iter(committee.weights.values()))[0].mul_(1.5)
    e_new, _ = bound.energy_and_field(spins)
    committee.fused = False
    assert not torch.allclose(e_new, e) and torch.allclose(e_new, bound.energy_and_field(spins)[0], **tol)


def _training_gradients(committee, graph, spins, field_ref, energy_ref):
    """The trainer's committee step (member m on spins[m], field + energy loss): energies,
    fields, the spins' gradient and the stacked weights' gradients."""
    from klmgraph.nn import compute_field

    committee.zero_grad()
    s = spins.detach().clone().requires_grad_(True)
    energy = committee.member_energies(s, committee.prepare(graph))
    field = compute_field(energy, s, training=True)
    loss = ((field - field_ref) ** 2).mean() + 100.0 * ((energy - energy_ref) / graph.num_nodes).pow(2).mean()
    loss.backward()
    return [energy.detach(), field.detach(), s.grad] + [p.grad.clone() for p in committee.parameters()]


@pytest.mark.parametrize("lattice", ["triangular", "square"])
def test_committee_training_through_the_kernel_equals_the_vmapped_path(lattice, one_thread, monkeypatch):
    from test_fused import assert_same_gradients, count_kernel_calls

    from klmgraph.nn import fused

    if not fused.available():
        pytest.skip("no C++ compiler: the committee trains through the vmapped path only")
    graph = klmgraph.triangular(6, 6, 1.0, 0.0, -0.85) if lattice == "triangular" else klmgraph.square(5, 4)
    members = _members(graph)
    with torch.no_grad():  # not-small weights everywhere, so that every path matters
        for net in members:
            for p in net.parameters():
                p.normal_()
    committee = Committee(members)
    spins = torch.stack([klmgraph.random_spins(graph, batch=2, seed=m, dtype=torch.float64) for m in range(3)])
    gen = torch.Generator().manual_seed(2)
    field_ref = torch.randn(spins.shape, dtype=torch.float64, generator=gen)
    energy_ref = torch.randn(3, 2, dtype=torch.float64, generator=gen)
    calls = count_kernel_calls(monkeypatch)
    kernel = _training_gradients(committee, graph, spins, field_ref, energy_ref)
    # per member: forward with dE/dx keeping its values, then the force loss's dual-number call on them
    assert sorted(calls) == sorted([fused._GRAD_X | fused._SAVE,
                                    fused._GRAD_P | fused._GRAD_X | fused._PER_CONFIG | fused._REUSE] * 3)
    committee.fused = False
    vmapped = _training_gradients(committee, graph, spins, field_ref, energy_ref)
    assert len(calls) == 6  # the vmapped path does not touch the kernel
    assert_same_gradients(kernel, vmapped)
    # where the kernel refuses (here: inside torch.func.vmap), the vmapped path answers
    committee.fused = True
    batched = torch.func.vmap(lambda s: committee.member_energies(s, committee.prepare(graph)), in_dims=1,
                              out_dims=1)(spins)
    assert len(calls) == 6 and torch.allclose(batched, kernel[0], rtol=0, atol=1e-10 * kernel[0].abs().max().item())


def test_committee_checkpoint_written_before_the_kernel_path_resumes(tmp_path, monkeypatch, one_thread):
    """tests/fixtures/committee_f727bcc_*: a 2-member committee trained for one epoch by klmgraph at
    commit f727bcc (vmapped training), in a folder with relative paths; the current trainer
    resumes it (same parameter layout, optimizer state included) and runs the second epoch."""
    from conftest import FIXTURES

    (tmp_path / "run").mkdir()
    for name, target in (("train.h5", "train.h5"), ("val.h5", "val.h5"), ("last.pt", "run/last.pt")):
        (tmp_path / target).write_bytes((FIXTURES / f"committee_f727bcc_{name}").read_bytes())
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1
    monkeypatch.chdir(tmp_path)
    config = config_from_dict({
        "data": {"train": "train.h5", "validation": "val.h5"},
        "model": {"committee": 2, "channels": 3, "num_interactions": 2},
        "optimizer": {"name": "adam", "lr": 0.02, "early_stopping": 0},
        "training": {"out": "run", "epochs": 2, "batch_size": 4, "energy_weight": 1.0}})
    run = train(config, progress=False)
    assert run["epochs_run"] == 2 and [row["epoch"] for row in run["history"]] == [2]
    resumed = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert resumed["model"].keys() == saved["model"].keys()
    assert all(resumed["model"][k].shape == v.shape for k, v in saved["model"].items())
    assert any(not torch.equal(resumed["model"][k], v) for k, v in saved["model"].items())  # it trained on


def test_committee_file_round_trip_and_checks(tmp_path, one_thread):
    graph = klmgraph.square(4, 4)
    committee = Committee(_members(graph), calibration=1.3, threshold=0.2, site_threshold=0.4)
    path = committee.save(tmp_path / "c.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["format_version"] == 2 and payload["architecture"] == "Committee"
    back = klmgraph.load_model(path, graph).double()
    assert isinstance(back, Committee) and back.size == 3
    assert (back.calibration, back.threshold, back.site_threshold) == (1.3, 0.2, 0.4)
    spins = klmgraph.random_spins(graph, seed=2)
    a, b = committee.bind(graph).uncertainty(spins), back.bind(graph).uncertainty(spins)
    assert torch.allclose(a.field, b.field) and torch.allclose(a.field_error, b.field_error)
    assert _members(graph, 1)[0].save(tmp_path / "one.pt") and \
        torch.load(tmp_path / "one.pt", weights_only=True)["format_version"] == 1  # older readers still read it
    with pytest.raises(ValueError, match="at least 2 members"):
        Committee(_members(graph, 1))
    with pytest.raises(ValueError, match="share class and configuration"):
        Committee([_members(graph, 1)[0], klmgraph.ECNN.for_graph(graph, channels=2)])
    with pytest.raises(ValueError, match="another lattice|neighbour classes"):
        klmgraph.load_model(path, klmgraph.triangular(6, 6))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A committee of 3 trained on random 4x4 configurations (about 20 s on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("committee")
        graph = klmgraph.square(4, 4)
        ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
        klmgraph.generate_dataset(folder / "train.h5", ed, num_samples=24, seed=0, progress=False)
        klmgraph.generate_dataset(folder / "val.h5", ed, num_samples=8, seed=1, progress=False)
        config = config_from_dict({
            "data": {"train": str(folder / "train.h5"), "validation": str(folder / "val.h5")},
            "model": {"committee": 3, "channels": 4, "num_interactions": 2},
            "optimizer": {"name": "adam", "lr": 0.02, "early_stopping": 0},
            "training": {"out": str(folder / "run"), "epochs": 60, "batch_size": 4, "energy_weight": 1.0}})
        run = train(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return {"folder": folder, "graph": graph, "ed": ed, "run": run, "model": folder / "run" / "best.pt"}


def test_committee_training_in_one_loop(trained):
    run, graph = trained["run"], trained["graph"]
    committee = run["model"]
    assert isinstance(committee, Committee) and committee.size == 3
    history = run["history"]
    assert len(history) == 60 and history[-1]["val_rmse_field"] < 0.1 * history[0]["val_rmse_field"]
    # calibrated on the validation set: the predicted RMSE of B equals the measured one there
    val = klmgraph.load_dataset(trained["folder"] / "val.h5")
    u = committee.double().bind(graph).uncertainty(val.spins)
    measured = float((u.field - val.field).pow(2).mean().sqrt())
    assert float(u.field_error.pow(2).mean().sqrt()) == pytest.approx(measured, rel=1e-4)  # fitted in float32
    assert committee.threshold > 0 and committee.site_threshold > committee.threshold
    # the members differ (own initialisation, shuffling and augmentation), but all learnt
    for member in committee.members():
        single = klmgraph.train.evaluate(member, val)["rmse_field"]
        assert single < 3 * measured
    # a resumed committee run continues instead of starting again
    config = json.loads((trained["folder"] / "run" / "config.json").read_text())
    assert config["model"]["committee"] == 3


def test_committee_config_is_checked():
    base = {"data": {"train": "x.h5"}}
    with pytest.raises(ValueError, match="committee must be an integer >= 1"):
        config_from_dict({**base, "model": {"committee": 0}})
    with pytest.raises(ValueError, match="bootstrap needs committee >= 2"):
        config_from_dict({**base, "model": {"bootstrap": True}})
    with pytest.raises(ValueError, match="threshold_margin must be >= 1"):
        config_from_dict({**base, "model": {"committee": 2, "threshold_margin": 0.5}})


def test_uncertainty_warns_far_from_the_data_and_not_on_the_validation_set(trained):
    graph = trained["graph"]
    bound = klmgraph.load_model(trained["model"], graph).double().bind(graph)
    val = klmgraph.load_dataset(trained["folder"] / "val.h5")
    assert not bound.uncertainty(val.spins).uncertain().any()
    # a ferromagnet is far from random spins: predicted (and true) error beyond the training range
    fm = klmgraph.ferromagnet(graph)
    u = bound.uncertainty(fm)
    assert u.uncertain()
    true = float((u.field - trained["ed"].energy_and_field(fm)[1]).pow(2).mean().sqrt())
    assert true > 1.5 * float((bound.uncertainty(val.spins).field - val.field).pow(2).mean().sqrt())

    def run(spins, out, **kw):
        llg = klmgraph.LLG(bound, dt=0.2, alpha=1.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = klmgraph.simulate(llg, graph, spins, 6, trained["folder"] / out, snapshot_every=3, **kw)
        return result, [w for w in caught if issubclass(w.category, UncertaintyWarning)]

    result, caught = run(val.spins[0], "sim-val")
    assert not caught and result.uncertainty["first_uncertain_step"] is None
    traj = klmgraph.read_trajectory(trained["folder"] / "sim-val" / "trajectory.h5")
    assert traj.extra["predicted_field_error"].shape == (7,) and np.all(traj.extra["predicted_field_error_max"]
                                                                        >= traj.extra["predicted_field_error"])
    # both thresholds travel with the run, for the time-series panel
    assert traj.metadata["uncertainty_threshold"] == bound.model.threshold
    assert traj.metadata["uncertainty_site_threshold"] == bound.model.site_threshold
    summary = json.loads((trained["folder"] / "sim-val" / "summary.json").read_text())
    assert summary["uncertainty"]["max_rmse_field"] == pytest.approx(float(traj.extra["predicted_field_error"].max()))

    result, caught = run(fm, "sim-fm")
    assert len(caught) == 1 and "step 0" in str(caught[0].message) and "sites" in str(caught[0].message)
    assert result.step == 6 and result.uncertainty["first_uncertain_step"] == 0

    # --stop-when-uncertain: stops at the first uncertain record and keeps it as the last snapshot
    result, caught = run(val.spins[0], "sim-stop", stop_when_uncertain=True,
                         uncertainty_threshold=0.5 * float(bound.uncertainty(val.spins[0]).rmse_field))
    assert len(caught) == 1 and result.step == 0 and result.uncertainty["stopped_uncertain"]
    traj = klmgraph.read_trajectory(trained["folder"] / "sim-stop" / "trajectory.h5")
    assert list(traj.spins_step) == [0]


def test_cli_simulate_with_a_committee(trained, capsys):
    out = trained["folder"] / "cli"
    code = main(["simulate", "--size", "4", "4", "--provider", f"model:{trained['model']}", "--init", "ferromagnet",
                 "--dt", "0.2", "--steps", "4", "--snapshot-every", "2", "--stop-when-uncertain", "--out", str(out),
                 "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "committee: predicted RMSE(B)" in text and "stopped there" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 0 and summary["uncertainty"]["stopped_uncertain"]
    assert (out / "time_series.png").is_file()
    assert main(["simulate", "--size", "4", "4", "--dt", "0.2", "--steps", "2", "--stop-when-uncertain",
                 "--out", str(trained["folder"] / "cli-ed"), "--quiet"]) == 2
    assert "need a committee provider" in capsys.readouterr().err


def test_members_get_their_own_shuffling_and_bootstrap_samples():
    from klmgraph.train import _member_orders

    base = {"data": {"train": "x.h5"}, "training": {"seed": 3}}
    idx = torch.arange(10, 30)
    one = _member_orders(config_from_dict(base), idx, torch.Generator().manual_seed(0))
    assert one.shape == (20,) and sorted(one.tolist()) == idx.tolist()
    orders = _member_orders(config_from_dict({**base, "model": {"committee": 3}}), idx,
                            torch.Generator().manual_seed(0))
    assert orders.shape == (3, 20) and all(sorted(row.tolist()) == idx.tolist() for row in orders)
    assert not torch.equal(orders[0], orders[1])
    boot = [_member_orders(config_from_dict({**base, "model": {"committee": 3, "bootstrap": True}}), idx,
                           torch.Generator().manual_seed(epoch)) for epoch in (0, 1)]
    for row, later in zip(*boot):
        assert set(row.tolist()) <= set(idx.tolist()) and len(set(row.tolist())) < 20  # drawn with replacement
        assert sorted(row.tolist()) == sorted(later.tolist())  # the same resampling every epoch


def test_cli_scan_with_a_committee_records_its_predicted_error(trained, capsys):
    import csv

    out = trained["folder"] / "scan"
    assert main(["scan", "--size", "4", "4", "--provider", f"model:{trained['model']}", "--init", "ferromagnet",
                 "--hz", "0", "0.5", "--dt", "0.2", "--steps", "4", "--snapshot-every", "2", "--stop-when-uncertain",
                 "--no-plots", "--out", str(out)]) == 0  # stopping where asked is not a failure
    with open(out / "scan.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["stopped: uncertain at step 0"] * 2
    assert all(float(r["predicted_rmse_field_max"]) > 0 and r["first_uncertain_step"] == "0" for r in rows)
