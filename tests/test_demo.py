"""`klmgraph demo --tiny`: the README's main path, end to end (about a minute on 2 CPUs)."""
import json

import numpy as np
import pytest
import torch

from klmgraph.cli import main
from klmgraph.demo import TINY, DemoSettings
from klmgraph.trajectory import read_trajectory


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # one thread: on the 2 shared cores, OpenMP threads competing with other jobs make an epoch
    # 30 times slower (18 s instead of 0.6 s measured on 2026-12-02 at load 6.5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["demo", "--tiny", "--out", str(out), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_demo_writes_its_results(demo_folder):
    for name in ("summary.json", "summary.md", "parity.png", "parity_llg_state.png", "learn/iter000/model.pt",
                 "learn/iter000/training/log.csv", "learn/iter001/model.pt", "learn/report.json",
                 "learn/error_vs_iteration.png", "llg/trajectory.h5", "llg/spins.png", "llg/time_series.png"):
        assert (demo_folder / name).is_file(), name


def test_demo_model_learns_and_transfers_to_the_large_lattice(demo_folder):
    summary = json.loads((demo_folder / "summary.json").read_text())
    training, check = summary["training"], summary["check_on_large_lattice"]
    # bounded by epochs, not by minutes: the same model on a loaded machine; the summary says so
    assert training["epochs"] == TINY.epochs and training["ended_by"] == "epochs"
    assert training["finetune_ended_by"] == ["epochs"] * TINY.iterations
    assert "its epoch budget" in (demo_folder / "summary.md").read_text()
    # trained: far below the spread of the field components that a constant prediction would give
    assert training["val_rmse_field"] < 0.2 * training["field_component_std"]
    # the model's energy on the 16x larger lattice agrees with ED of the same state
    assert check["energy_per_site_ml"] == pytest.approx(check["energy_per_site_ed"], abs=0.05)
    assert summary["llg"]["lattice"].startswith("square 32x32")
    # a committee, with its prediction of its own error on the large lattice before ED ran
    assert training["committee"] == TINY.committee and len(training["finetune_epochs"]) == TINY.iterations
    assert check["predicted_rmse_field"] > 0
    assert check["predicted_over_true"] == pytest.approx(check["predicted_rmse_field"] / check["rmse_field"])
    learning = summary["learning"]["iterations"]
    assert [e["iteration"] for e in learning] == list(range(TINY.iterations + 1))
    assert learning[1]["labels"] == learning[0]["labels"] + TINY.labels + TINY.holdout


def test_demo_dynamics_is_damped(demo_folder):
    trajectory = read_trajectory(demo_folder / "llg" / "trajectory.h5")
    energy = trajectory.energy
    assert len(energy) == 31 and trajectory.extra["predicted_field_error"].shape == (31,)  # every 2nd step
    # T = 0 with alpha = 1: the model's energy decreases (up to float32 rounding)
    assert np.all(np.diff(energy) <= 1e-5 * np.abs(energy[:-1]))
    assert energy[-1] < energy[0]


def test_demo_rerun_continues_instead_of_repeating(demo_folder, capsys):
    before = json.loads((demo_folder / "summary.json").read_text())
    assert main(["demo", "--tiny", "--out", str(demo_folder), "--quiet"]) == 0
    after = json.loads((demo_folder / "summary.json").read_text())
    assert after["training"]["epochs"] == before["training"]["epochs"]
    assert after["training"]["val_rmse_field"] == before["training"]["val_rmse_field"]
    assert after["llg"]["energy_per_site"] == before["llg"]["energy_per_site"]


def test_demo_refuses_a_folder_of_other_settings(demo_folder, capsys):
    assert main(["demo", "--out", str(demo_folder), "--quiet"]) == 2
    assert "holds a demo with other settings" in capsys.readouterr().err
    assert json.loads((demo_folder / "settings.json").read_text())["size"] == 8  # left as it was


def test_demo_settings_are_checked():
    with pytest.raises(ValueError, match="size must be at least 1"):
        DemoSettings(size=0)
    with pytest.raises(ValueError, match="dt and minutes must be positive"):
        DemoSettings(dt=-1.0)
    with pytest.raises(ValueError, match="committee must be at least 2"):
        DemoSettings(committee=1)
    with pytest.raises(ValueError, match="select_by must be 'rmse_field' or 'max_site_error'"):
        DemoSettings(select_by="energy")
    with pytest.raises(ValueError, match="finetune_energy_weight must be >= 0"):
        DemoSettings(finetune_energy_weight=-1.0)
