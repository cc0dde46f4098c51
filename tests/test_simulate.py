"""simulate(): trajectories that resume exactly, the NaN guard, the simulate/scan CLI, bad input."""
import csv
import json
import math
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pytest
import torch

import klmgraph
from klmgraph.cli import main
from klmgraph.dynamics import DivergenceError, Heisenberg, SingleIonAnisotropy
from klmgraph.sweep import parse_values
from klmgraph.simulation import simulate
from klmgraph.trajectory import last_snapshot, read_trajectory

matplotlib.use("Agg")

ECNN4KLM = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm"


pytestmark = pytest.mark.usefixtures("one_thread")


def spin_model(graph):
    return Heisenberg(graph, 1.0) + SingleIonAnisotropy(0.2)


class Interrupted(Exception):
    pass


class FailAfter:
    """Wraps a provider; after ``calls`` evaluations it raises, or returns NaN fields."""

    def __init__(self, provider, calls, nan=False):
        self.provider, self.calls, self.nan, self.count = provider, calls, nan, 0

    def energy_and_field(self, spins):
        self.count += 1
        energy, field = self.provider.energy_and_field(spins)
        if self.count > self.calls:
            if not self.nan:
                raise Interrupted
            field = torch.full_like(field, float("nan"))
        return energy, field

    def __repr__(self):
        return "FailAfter"


@pytest.mark.parametrize("integrator", ["heun", "midpoint"])
def test_interrupted_run_resumes_exactly(tmp_path, integrator):
    graph = klmgraph.triangular(6, 6)
    settings = dict(dt=0.05, alpha=0.3, temperature=0.2, field=(0, 0, 0.3), integrator=integrator)
    spins = klmgraph.random_spins(graph, seed=1)
    whole = simulate(klmgraph.LLG(spin_model(graph), **settings), graph, spins, 60, tmp_path / "a",
                     snapshot_every=20, seed=5)
    # a run that dies in step ~45 (each step evaluates the provider 2 times, plus the final energy)
    broken = klmgraph.LLG(FailAfter(spin_model(graph), calls=90), **settings)
    with pytest.raises(Interrupted):
        simulate(broken, graph, spins, 60, tmp_path / "b", snapshot_every=20, seed=5)
    assert last_snapshot(tmp_path / "b" / "trajectory.h5").step == 40
    again = simulate(klmgraph.LLG(spin_model(graph), **settings), graph, spins, 60, tmp_path / "b",
                     snapshot_every=20, seed=5)
    assert again.resumed_from == 40 and again.steps_run == 20
    assert torch.equal(again.spins, whole.spins)
    a, b = read_trajectory(tmp_path / "a" / "trajectory.h5"), read_trajectory(tmp_path / "b" / "trajectory.h5")
    assert a.step.tolist() == b.step.tolist() == list(range(61))
    np.testing.assert_array_equal(a.energy, b.energy)
    np.testing.assert_array_equal(a.spins, b.spins)
    assert a.spins_step.tolist() == [0, 20, 40, 60] and a.spins.dtype == np.float64
    # a finished run is reported again without stepping; more steps extend it
    done = simulate(klmgraph.LLG(spin_model(graph), **settings), graph, spins, 60, tmp_path / "b",
                    snapshot_every=20, seed=5)
    assert done.steps_run == 0 and torch.equal(done.spins, whole.spins)
    assert read_trajectory(tmp_path / "b" / "trajectory.h5").step.tolist() == list(range(61))
    longer = simulate(klmgraph.LLG(spin_model(graph), **settings), graph, spins, 70, tmp_path / "b",
                      snapshot_every=20, seed=5)
    assert longer.resumed_from == 60 and longer.step == 70
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["step"] == 70 and summary["energy_per_site"] == pytest.approx(longer.energy_per_site)


def test_resume_with_ed_at_finite_temperature(tmp_path):
    graph = klmgraph.square(6, 6)
    ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
    settings = dict(dt=0.02, alpha=0.5, temperature=0.05, field=(0, 0, 0.1))
    spins = klmgraph.random_spins(graph, seed=2)
    whole = simulate(klmgraph.LLG(ed, **settings), graph, spins, 12, tmp_path / "a", snapshot_every=4, seed=1)
    with pytest.raises(Interrupted):
        simulate(klmgraph.LLG(FailAfter(ed, calls=19), **settings), graph, spins, 12, tmp_path / "b",
                 snapshot_every=4, seed=1)
    again = simulate(klmgraph.LLG(ed, **settings), graph, spins, 12, tmp_path / "b", snapshot_every=4, seed=1)
    assert again.resumed_from == 8 and torch.equal(again.spins, whole.spins)


def test_resume_refuses_other_settings(tmp_path):
    graph = klmgraph.triangular(6, 6)
    spins = klmgraph.random_spins(graph, seed=1)
    simulate(klmgraph.LLG(spin_model(graph), dt=0.05, field=(0, 0, 0.1)), graph, spins, 5, tmp_path, seed=0)
    with pytest.raises(ValueError, match="other llg settings"):
        simulate(klmgraph.LLG(spin_model(graph), dt=0.05, field=(0, 0, 0.2)), graph, spins, 5, tmp_path, seed=0)
    with pytest.raises(ValueError, match="other metadata"):
        simulate(klmgraph.LLG(spin_model(graph), dt=0.05, field=(0, 0, 0.1)), graph, spins, 5, tmp_path, seed=1)
    with pytest.raises(ValueError, match="already holds 5 steps"):
        simulate(klmgraph.LLG(spin_model(graph), dt=0.05, field=(0, 0, 0.1)), graph, spins, 3, tmp_path, seed=0)
    out = simulate(klmgraph.LLG(spin_model(graph), dt=0.05, field=(0, 0, 0.2)), graph, spins, 5, tmp_path,
                   seed=0, overwrite=True)
    assert out.resumed_from is None and out.hz == 0.2


def test_nan_provider_stops_naming_the_step_and_keeps_the_last_snapshot(tmp_path):
    graph = klmgraph.triangular(6, 6)
    llg = klmgraph.LLG(FailAfter(spin_model(graph), calls=50, nan=True), dt=0.05, alpha=0.5)
    with pytest.raises(DivergenceError, match=r"step 25 .*keeps the snapshots up to step 20") as info:
        simulate(llg, graph, klmgraph.random_spins(graph, seed=0), 100, tmp_path, snapshot_every=10)
    assert info.value.step == 25
    traj = read_trajectory(tmp_path / "trajectory.h5")
    assert traj.spins_step.tolist() == [0, 10, 20]
    assert traj.step.tolist() == list(range(25))  # observables up to the last good step
    assert np.isfinite(traj.energy).all() and np.isfinite(traj.spins).all()
    with h5py.File(tmp_path / "trajectory.h5", "r") as f:
        assert f.attrs["num_snapshots"] == 3


def test_diverging_step_is_caught():
    # a field that overflows to inf makes the new spins NaN: the guard names that step
    graph = klmgraph.square(4, 4)
    llg = klmgraph.LLG(SingleIonAnisotropy(1e308), dt=10.0, alpha=1.0)
    with pytest.raises(DivergenceError, match="step 0"):
        llg.run(klmgraph.random_spins(graph, seed=0), 5)


def test_magnetic_cell_and_fallback(tmp_path):
    graph = klmgraph.triangular(12, 12)
    crystal = klmgraph.skyrmion_crystal(graph, m_z=0.2)
    llg = klmgraph.LLG(spin_model(graph), dt=1e-6, alpha=0.0)  # hardly moves
    out = simulate(llg, graph, crystal, 1, tmp_path / "a", cell_sites="auto")
    assert out.cell_sites == 48 and out.skyrmion_number_per_cell == pytest.approx(-1.0, abs=1e-6)
    assert abs(out.skyrmion_number) == pytest.approx(3.0, abs=1e-6)
    out = simulate(llg, graph, klmgraph.ferromagnet(graph), 1, tmp_path / "b", cell_sites="auto")
    assert out.cell_sites is None and "total n_sk" in out.note and out.skyrmion_number_per_cell == 0
    with pytest.raises(ValueError, match="multiple of record_every"):
        simulate(llg, graph, crystal, 1, tmp_path / "c", snapshot_every=10, record_every=3)


# ------------------------------------------------------------------------------- command line

TINY = ["--preset", "triangular-paper", "--size", "6", "6", "--dt", "1", "--steps", "12",
        "--snapshot-every", "4", "--quiet"]


def test_cli_simulate_writes_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["simulate", *TINY, "--hz", "0.005", "--out", str(out)]) == 0
    assert {"trajectory.h5", "summary.json", "spins.png", "structure_factor.png", "time_series.png"} <= \
        {p.name for p in out.iterdir()}
    first = json.loads((out / "summary.json").read_text())
    assert first["step"] == 12 and first["hz"] == 0.005 and first["dt"] == 1.0
    steps = [a if a != "12" else "20" for a in TINY]
    assert main(["simulate", *steps, "--hz", "0.005", "--out", str(out), "--no-plots"]) == 0
    assert "resumed at step 12" in capsys.readouterr().out
    traj = read_trajectory(out / "trajectory.h5")
    assert traj.step.tolist() == list(range(21)) and traj.metadata["provider"] == "ed"
    # other settings in the same folder are refused
    assert main(["simulate", *TINY, "--hz", "0.006", "--out", str(out)]) == 2
    assert "other llg settings" in capsys.readouterr().err


def test_cli_scan_table_and_plot(tmp_path, capsys):
    out = tmp_path / "scan"
    assert main(["scan", *TINY, "--hz", "0.002", "0.008", "--no-plots", "--out", str(out)]) == 0
    with open(out / "scan.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["hz"]) for r in rows] == [0.002, 0.008]
    assert all(r["status"] == "ok" and int(r["step"]) == 12 for r in rows)
    for r in rows:
        assert math.isfinite(float(r["abs_mz"])) and float(r["abs_skyrmion_number_per_cell"]) >= 0
        assert (Path(r["folder"]) / "trajectory.h5").exists()
    assert (out / "scan.png").stat().st_size > 0
    assert "scan.csv" in capsys.readouterr().out


def test_cli_scan_in_parallel_processes(tmp_path):
    out = tmp_path / "scan"
    assert main(["scan", *TINY, "--T", "0.01,0.02", "--hz", "0.005", "--jobs", "2", "--no-plots",
                 "--out", str(out)]) == 0
    with open(out / "scan.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["temperature"]) for r in rows] == [0.01, 0.02]
    assert (out / "temperature=0.01" / "summary.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--provider", "magic"], "unknown provider"),
    (["--provider", "model:/no/such/file.pt"], "no file at"),
    (["--init", "spiral"], "unknown initial state"),
    (["--cell-sites", "-3"], "cell-sites must be positive"),
    (["--init", "file:/no/such/spins.npy"], "does not exist"),
])
def test_cli_simulate_bad_input(tmp_path, capsys, extra, message):
    assert main(["simulate", *TINY, "--out", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--hz", "0.1", "abc"], "'abc' is not a number"),
    (["--hz", "0.1,0.1"], "repeats a value"),
    (["--hz", "0.1", "0.2", "--T", "0", "0.1"], "one parameter at a time"),
    (["--T", "-1", "0.1"], "temperatures must be >= 0"),
])
def test_cli_scan_bad_input(tmp_path, capsys, extra, message):
    assert main(["scan", *TINY, "--out", str(tmp_path / "x"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_parse_values():
    assert parse_values(["0.002,0.005", "0.008"]) == [0.002, 0.005, 0.008]
    with pytest.raises(ValueError, match="empty"):
        parse_values([","])
    with pytest.raises(ValueError, match="not finite"):
        parse_values(["nan"])


def test_cli_init_from_file_of_other_lattice(tmp_path, capsys):
    np.save(tmp_path / "s.npy", klmgraph.random_spins(10, seed=0).numpy())
    assert main(["simulate", *TINY, "--out", str(tmp_path / "x"), "--init", f"file:{tmp_path / 's.npy'}"]) == 2
    assert "holds configurations of shape (10, 3); the lattice" in capsys.readouterr().err


def _needs_model_import():
    if not (ECNN4KLM / "triangle_param.cpt").exists():
        pytest.skip(f"the published checkpoints are not at {ECNN4KLM}")


def test_cli_simulate_with_ecnn4klm_checkpoint(tmp_path):
    _needs_model_import()
    out = tmp_path / "ml"
    args = ["simulate", "--preset", "triangular-paper", "--size", "12", "12", "--dt", "5", "--steps", "4",
            "--snapshot-every", "2", "--quiet", "--no-plots", "--hz", "0.005", "--cell-sites", "48",
            "--provider", f"ecnn4klm:{ECNN4KLM / 'triangle_param.cpt'}", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 4 and summary["cell_sites"] == 48 and math.isfinite(summary["energy_per_site"])


def test_cli_refuses_checkpoint_of_another_lattice(tmp_path, capsys):
    _needs_model_import()
    args = ["simulate", *TINY, "--out", str(tmp_path / "x"),
            "--provider", f"ecnn4klm:{ECNN4KLM / 'square_param.cpt'}"]
    assert main(args) == 2
    assert "square" in capsys.readouterr().err


def test_cli_refuses_saved_model_of_another_lattice(tmp_path, capsys):
    _needs_model_import()
    square = klmgraph.square(6, 6)
    model = klmgraph.load_ecnn4klm(ECNN4KLM / "square_param.cpt", square)
    model.save(tmp_path / "square.pt")
    assert main(["simulate", *TINY, "--out", str(tmp_path / "x"), "--provider", f"model:{tmp_path / 'square.pt'}"]) == 2
    assert "the model was built for" in capsys.readouterr().err


def test_triangular_example_runs(tmp_path):
    _needs_model_import()
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "examples" / "triangular_skyrmions.py"
    spec = importlib.util.spec_from_file_location("triangular_skyrmions", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--size", "12", "--steps", "2", "--hz", "0.005", "--seed", "0", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "example.json").read_text())
    assert summary["rows"][0]["step"] == 2 and summary["rows"][0]["stopped"] == "step limit 2"
    assert (tmp_path / "spins_seed0_hz0.005.png").exists() and (tmp_path / "seed0" / "scan.png").exists()
    # the final state checked against ED (auto: the lattice is small), the solver named
    row = summary["rows"][0]
    assert row["check_solver"] == "ED at Gamma" and 0 < row["check_rmse_field"] < 1
    example.main(["--size", "12", "--steps", "2", "--hz", "0.005", "--seed", "0", "--out", str(tmp_path),
                  "--check", "kpm", "--kpm-order", "32", "--kpm-probe-distance", "3"])
    row = json.loads((tmp_path / "example.json").read_text())["rows"][0]
    assert row["check_solver"] == "KPM, order 32, probe distance 3" and 0 < row["check_rmse_field"] < 1


def test_cli_deterministic_model_run_equals_default(tmp_path):
    """--deterministic binds the model without atomic sums; on the CPU the run is the same to rounding."""
    graph = klmgraph.triangular(6, 6, t3=-0.85)
    model = klmgraph.ECNN.for_graph(graph, channels=2, num_interactions=1)
    model.save(tmp_path / "m.pt")
    runs = []
    for flag in ([], ["--deterministic"]):
        out = tmp_path / f"run{len(runs)}"
        assert main(["simulate", *TINY, "--out", str(out), "--provider", f"model:{tmp_path / 'm.pt'}",
                     "--T", "0.01", "--no-plots", *flag]) == 0
        runs.append(read_trajectory(out / "trajectory.h5"))
    # the same sums in another order: equal to the float32 model's rounding
    np.testing.assert_allclose(runs[0].spins, runs[1].spins, rtol=0, atol=1e-5)
    assert not np.array_equal(runs[0].spins[0], runs[0].spins[-1])
    # a k-grid with a model provider is refused: the model would ignore it
    assert main(["simulate", *TINY, "--out", str(tmp_path / "k"), "--provider", f"model:{tmp_path / 'm.pt'}",
                 "--k-grid", "2", "2"]) == 2
