"""The paper-reproduction examples run end to end (shortened budgets; the --quick and full
settings themselves are documented in docs/results.md and marked slow here)."""
import csv
import importlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

import klmgraph
from klmgraph.train import augmentation_record

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ECNN4KLM = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm"
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference" / "triangular"


def load_example(name):
    # a regular import from examples/ on sys.path, so that worker processes (--jobs) can
    # import the example's functions again
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def test_prediction_time_quick(tmp_path, capsys):
    speedup = load_example("prediction_time").main(["--quick", "--repeats", "1", "--out", str(tmp_path)])
    with open(tmp_path / "prediction_time.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], int(r["L"])) for r in rows] == (
        [("ED", L) for L in (8, 12, 16, 24)] + [("ECNN", L) for L in (8, 12, 16, 24, 48, 96, 192)])
    assert all(int(r["sites"]) == int(r["L"]) ** 2 and float(r["seconds"]) > 0 for r in rows)
    ed24 = float(rows[3]["seconds"])
    ml24 = float(rows[7]["seconds"])
    assert speedup == pytest.approx(ed24 / ml24)
    assert f"speedup_at_24x24={speedup:.1f}" in capsys.readouterr().out
    assert (tmp_path / "prediction_time.png").stat().st_size > 0


def test_square_accuracy_pipeline(tmp_path, capsys):
    load_example("square_accuracy").main(["--quick", "--ecnn-minutes", "0.05", "--ifnn-minutes", "0.05",
                                          "--out", str(tmp_path)])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"ecnn_val_rmse=([0-9.]+) ifnn_val_rmse=([0-9.]+)", line)
    assert match, line
    results = json.loads((tmp_path / "quick" / "results.json").read_text())
    assert results["ecnn"]["val"] == pytest.approx(float(match.group(1)), abs=1e-4)
    assert results["ifnn"]["val"] == pytest.approx(float(match.group(2)), abs=1e-4)
    # at J = 7 the field is nearly parallel to the spin: B = c S leaves a small fraction of it
    val = klmgraph.load_dataset(tmp_path / "quick" / "val.h5")
    assert 2.5 < results["parallel_reference"]["c"] < 3.5
    assert results["parallel_reference"]["val"] < 0.1 * float(val.field.std())
    for name in ("ecnn", "ifnn"):
        assert (tmp_path / "quick" / f"parity_{name}_val.png").exists()
        assert klmgraph.load_dataset(tmp_path / "quick" / "train.h5").graph.num_nodes == 144


def test_triangular_training_pipeline(tmp_path, capsys):
    out = tmp_path / "run"
    summary = load_example("triangular_training").main([
        "--quick", "--ed-steps", "30", "--snapshot-every", "15", "--minutes", "0.05", "--scan-size", "12",
        "--scan-steps", "2", "--quiet", "--out", str(out)])
    folder = out / "quick"
    # two snapshots per field (steps 15 and 30), as many random configurations, split 3 : 1
    assert summary["configurations"] == 12 and summary["train"] == 9
    train, val = klmgraph.load_dataset(folder / "train.h5"), klmgraph.load_dataset(folder / "val.h5")
    assert (len(train), len(val)) == (9, 3)
    # the labels are ED's for the stored spins
    ed = klmgraph.ExactDiagonalization(klmgraph.triangular(12, 12, t1=1.0, t3=-0.85), J=-1.0, mu=-3.5)
    energy, field = ed.energy_and_field(val.spins[0].to(torch.float64))
    assert float(val.energy[0]) == pytest.approx(float(energy), rel=1e-10)
    torch.testing.assert_close(val.field[0].to(torch.float64), field, rtol=0, atol=1e-10)
    # the scan ran with the model trained here, at the paper's three fields
    assert sorted(summary["n_sk_per_cell"]) == [0.002, 0.005, 0.008]
    meta = klmgraph.read_trajectory(folder / "scan" / "seed0" / "hz=0.005" / "trajectory.h5").metadata
    assert meta["model"] == "best.pt"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("val_rmse_field=")


def test_triangular_training_by_the_learning_loop(tmp_path, capsys, one_thread):
    """--learn: the loop (a tiny configuration with a k-grid) feeds the scan its committee."""
    config = tmp_path / "learn.toml"
    config.write_text("\n".join([
        "[system]", 'lattice = "triangular"', "size = [6, 6]", "t3 = -0.85", "J = -1.0", "mu = -3.5",
        "k_grid = [2, 1]",
        "[initial]", "train_samples = 4", "validation_samples = 2",
        "[model]", "committee = 2", "channels = 2", "num_interactions = 1",
        "[training]", "epochs = 2", "batch_size = 2", "energy_weight = 1.0",
        "[finetune]", "epochs = 1",
        "[explore]", "conditions = [{hz = 0.005, T = 0.0}, {hz = 0.005, T = 0.005}]", "runs = 1", "steps = 4",
        "dt = 5.0", "snapshot_every = 2",
        "[select]", "labels = 2", "holdout = 1", "min_gap = 0",
        "[loop]", "iterations = 1", ""]))
    summary = load_example("triangular_training").main([
        "--learn-config", str(config), "--scan-size", "12", "--scan-steps", "2", "--quiet", "--out", str(tmp_path)])
    folder = tmp_path / "learn"
    report = json.loads((folder / "learn" / "report.json").read_text())
    assert [e["iteration"] for e in report["iterations"]] == [0, 1] and report["solver"] == "ED, k-grid 2x1"
    assert summary["model"] == str(folder / "learn" / "iter001" / "model.pt")
    assert sorted(summary["n_sk_per_cell"]) == [0.002, 0.005, 0.008]
    # the labels are k-grid ED's, and the scan recorded the committee's predicted error
    labels = klmgraph.load_dataset(folder / "learn" / "iter000" / "labels.h5")
    ed = klmgraph.ExactDiagonalization(klmgraph.triangular(6, 6, t1=1.0, t3=-0.85), J=-1.0, mu=-3.5, k_grid=(2, 1))
    torch.testing.assert_close(labels.field[0], ed.energy_and_field(labels.spins[0])[1], rtol=0, atol=1e-10)
    traj = klmgraph.read_trajectory(folder / "scan" / "seed0" / "hz=0.005" / "trajectory.h5")
    assert "predicted_field_error" in traj.extra


@pytest.mark.slow
@pytest.mark.parametrize("name", ["square_accuracy", "triangular_training", "time_reversal"])
def test_quick_settings(tmp_path, name):
    """The documented --quick settings (several minutes each on 2 CPUs)."""
    load_example(name).main(["--quick", "--out", str(tmp_path)])


@pytest.mark.slow
def test_triangular_skyrmions_quick(tmp_path):
    if not (ECNN4KLM / "triangle_param.cpt").is_file():
        pytest.skip(f"the published checkpoint is not at {ECNN4KLM}")
    rows = load_example("triangular_skyrmions").main(["--quick", "--jobs", "2", "--out", str(tmp_path)])
    assert [(row["run"], row["hz"]) for row in rows] == [(f"seed{s}", h) for s in (0, 1) for h in (0.002, 0.005, 0.008)]


def test_triangular_skyrmions_stopping_rule_anneal_and_resume(tmp_path, capsys):
    """Fig. 4a's pipeline, tiny: runs stop when E/N settles (or at the step limit), the annealed
    run cools through its stages, and a rerun resumes instead of integrating again."""
    if not (ECNN4KLM / "triangle_param.cpt").is_file():
        pytest.skip(f"the published checkpoint is not at {ECNN4KLM}")
    example = load_example("triangular_skyrmions")
    argv = ["--size", "12", "--steps", "200", "--window", "20", "--converge", "2e-4", "--hz", "0.008",
            "--seed", "0", "1", "--anneal", "0.004", "--anneal-stages", "2", "--anneal-steps", "10",
            "--check", "none", "--quiet", "--threads", "1", "--out", str(tmp_path)]
    table = example.main(argv)
    assert [(e["run"], e["hz"]) for e in table] == [("seed0", 0.008), ("seed1", 0.008), ("anneal", 0.008)]
    for e in table:
        traj = klmgraph.read_trajectory(Path(e["folder"]) / "trajectory.h5")
        last = int(traj.step[-1])
        assert last == e["step"] and last % 20 == 0
        change = abs(traj.energy[-1] - traj.energy[traj.step == last - 20][-1]) / 144
        if e["stopped"].startswith("converged"):  # the rule held at the end and not one window earlier
            assert change < 2e-4 and last < 200
            before = traj.energy[traj.step == last - 20][-1] - traj.energy[traj.step == last - 40][-1]
            assert last == 20 or abs(before) / 144 >= 2e-4
        else:
            assert e["stopped"] == "step limit 200" and last == 200
        assert e["phase"] == example.phase_of(e["skyrmion_number_per_cell"])
    stages = sorted(p.name for p in (tmp_path / "anneal" / "hz=0.008").iterdir())
    assert stages == ["final", "stage0_T0.004", "stage1_T0.002"]
    stage = klmgraph.read_trajectory(tmp_path / "anneal" / "hz=0.008" / "stage1_T0.002" / "trajectory.h5")
    assert stage.llg["temperature"] == 0.002 and int(stage.step[-1]) == 10
    with open(tmp_path / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (tmp_path / "fig4a.png").stat().st_size > 10_000
    def stored():
        return [(len(t.step), int(t.step[-1]), float(t.energy[-1])) for t in
                map(klmgraph.read_trajectory, sorted(tmp_path.rglob("trajectory.h5")))]

    before = stored()
    again = example.main(argv)  # everything stopped already: nothing is integrated again
    assert stored() == before
    assert [e["energy_per_site"] for e in again] == [e["energy_per_site"] for e in table]
    assert [e["step"] for e in again] == [e["step"] for e in table]

    # the final-state check is stored with its run (check.json) and read back, not computed again
    checked = example.main([a if a != "none" else "ed" for a in argv])
    files = sorted(tmp_path.rglob("check.json"))
    assert len(files) == 3 and all(e["check_solver"].startswith("ED") for e in checked)
    stamps = [f.stat().st_mtime_ns for f in files]
    stored = json.loads((Path(checked[0]["folder"]) / "check.json").read_text())["ED at Gamma"]
    assert stored["final"]["step"] == checked[0]["step"] and stored["rmse_field"] == checked[0]["check_rmse_field"]
    assert [e["check_rmse_field"] for e in example.main([a if a != "none" else "ed" for a in argv])] == \
        [e["check_rmse_field"] for e in checked]
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # another solver (a k-grid) is a new check, kept beside the first
    regridded = example.main([a if a != "none" else "ed" for a in argv] + ["--k-grid", "2"])
    assert all(e["check_solver"] == "ED, k-grid 2x2" for e in regridded)
    assert sorted(json.loads(files[0].read_text())) == ["ED at Gamma", "ED, k-grid 2x2"]
    # ED's energy alone: the same reference energy as the full ED check, no field
    energy_only = example.main([a if a != "none" else "ed-energy" for a in argv])
    assert len(energy_only) == len(checked) == 3
    for e, full in zip(energy_only, checked):
        assert e["check_solver"] == "ED at Gamma, energy only" and e["check_rmse_field"] is None
        assert e["check_energy_model_minus_reference"] == pytest.approx(full["check_energy_model_minus_reference"],
                                                                        abs=1e-12)
    assert sorted(json.loads(files[0].read_text())) == ["ED at Gamma", "ED at Gamma, energy only", "ED, k-grid 2x2"]
    with open(tmp_path / "runs.csv") as f:
        assert {row["check_rmse_field"] for row in csv.DictReader(f)} == {""}
    # a seed run later into the same folder joins the table; the earlier rows stay as they were
    with open(tmp_path / "runs.csv") as f:
        earlier = list(csv.DictReader(f))
    seeds = argv.index("--seed")
    added = example.main(argv[:seeds] + ["--seed", "0", "2"] + argv[seeds + 3:argv.index("--anneal")]
                         + argv[argv.index("--check"):])
    assert [(e["run"], e["hz"]) for e in added] == [("seed0", 0.008), ("seed2", 0.008)]
    with open(tmp_path / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["seed0", "seed1", "seed2", "anneal"]
    assert rows[1] == earlier[1] and rows[3] == earlier[2]
    # a run that goes on (a larger step limit) is checked anew
    short = ["--size", "12", "--steps", "40", "--window", "20", "--converge", "0", "--hz", "0.008", "--seed", "0",
             "--check", "ed", "--quiet", "--threads", "1", "--out", str(tmp_path / "more")]
    first = example.main(short)[0]
    went_on = example.main([a if a != "40" else "60" for a in short])[0]
    final = json.loads((Path(went_on["folder"]) / "check.json").read_text())["ED at Gamma"]["final"]
    assert (first["step"], went_on["step"], final["step"]) == (40, 60, 60)
    assert went_on["check_rmse_field"] != first["check_rmse_field"]


def test_triangular_skyrmions_resumes_a_run_killed_before_its_last_record(monkeypatch):
    """A run killed after writing the snapshot of step 100 but not that step's observables is
    not judged converged (and does not crash): the next segment resumes from the snapshot."""
    import types

    import numpy as np

    example = load_example("triangular_skyrmions")
    steps = np.arange(100)  # records of steps 0-99; the snapshot of step 100 has none yet
    killed = types.SimpleNamespace(spins_step=np.array([0, 50, 100]), step=steps, energy=-0.28 * 144 + 0 * steps)
    monkeypatch.setattr(example.klmgraph, "read_trajectory", lambda path: killed)
    assert example.converged(Path("x.h5"), 144, 20, 1e-7) == (100, math.inf)
    done = types.SimpleNamespace(spins_step=np.array([0, 50, 100]), step=np.arange(101),
                                 energy=np.linspace(-40.0, -40.5, 101))
    monkeypatch.setattr(example.klmgraph, "read_trajectory", lambda path: done)
    step, change = example.converged(Path("x.h5"), 144, 20, 1e-7)
    assert step == 100 and change == pytest.approx(0.1 / 144)


def test_triangular_phase_boundaries_runs(tmp_path, capsys):
    if not (ECNN4KLM / "triangle_param.cpt").is_file():
        pytest.skip(f"the published checkpoint is not at {ECNN4KLM}")
    rows = load_example("triangular_phase_boundaries").main(
        ["--size", "12", "--hz", "0.002", "0.014", "--steps", "3", "--ed", "--out", str(tmp_path)])
    assert len(rows) == 6 and {r["branch"] for r in rows} == {"n_sk=2 start", "n_sk=1 start", "n_sk=0 start"}
    # the n_sk = 0 branch is followed downwards from the top field
    assert [r["hz"] for r in rows if r["branch"] == "n_sk=0 start"] == [0.014, 0.002]
    # the reported energies are those of the stored states: ED's value is finite and close to the model's
    assert all(abs(r["energy_ed"] - r["energy_model"]) < 0.01 for r in rows)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("lowest: 0.002=")
    assert (tmp_path / "branches.png").exists() and (tmp_path / "branches.csv").exists()


PHASE_LINE = re.compile(r"^hz_2_1=(nan|[<>]?[0-9.]+) hz_1_0=(nan|[<>]?[0-9.]+)$")


def test_triangular_phase_diagram_smoke(tmp_path, capsys):
    """Two fields, tiny k-grids, a few LLG steps: the pipeline, its records and its resumption."""
    example = load_example("triangular_phase_diagram")
    argv = ["--quick", "--hz", "0.003", "0.007", "--relax-grid", "2", "--energy-grids", "2", "4",
            "--max-steps", "10", "--states", "sk2", "sk1", "fm", "--refine-grids", "5", "7", "--out", str(tmp_path)]
    summary = example.main(argv)
    # the refinement: (at least) the lowest state of each class at each field, on the ladder and grids 5, 7
    with open(tmp_path / "refine.csv") as f:
        check = list(csv.DictReader(f))
    assert {(float(r["hz"]), int(r["abs_n_sk"])) for r in check} == {(0.003, 0), (0.003, 1), (0.003, 2),
                                                                    (0.007, 0), (0.007, 1), (0.007, 2)}
    for r in check:  # the n -> inf limit from grids 5 and 7, and from 4 and 5 for the error
        e4, e5, e7 = (float(r[f"energy_k{g}"]) for g in (4, 5, 7))
        assert float(r["energy_tl"]) == pytest.approx((49 * e7 - 25 * e5) / 24, abs=1e-12)
        assert float(r["energy_tl_prev"]) == pytest.approx((25 * e5 - 16 * e4) / 9, abs=1e-12)
    assert PHASE_LINE.match(capsys.readouterr().out.strip().splitlines()[-1])
    with open(tmp_path / "phase_diagram.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["branch", "state", "direction", "hz", "n_sk_per_cell", "mz", "energy_start",
                             "energy_relax", "energy_k2", "energy_k4", "energy_tl", "energy_tl_prev", "refined",
                             "minus_lowest", "max_torque", "steps",
                             "converged", "last_drop_per_step", "dt", "seconds", "cpu_seconds"]
    # sk2 and sk1 followed up and down, the ferromagnet once: 5 branches x 2 fields
    assert sorted({r["branch"] for r in rows}) == ["fm_up", "sk1_down", "sk1_up", "sk2_down", "sk2_up"]
    assert len(rows) == 10
    # the down sweep starts from the state the up sweep reached at the top field
    by = {(r["branch"], float(r["hz"])): r for r in rows}
    for state in ("sk2", "sk1"):
        assert by[(f"{state}_down", 0.007)]["energy_k4"] == by[(f"{state}_up", 0.007)]["energy_k4"]
        assert by[(f"{state}_down", 0.007)]["energy_tl"] == by[(f"{state}_up", 0.007)]["energy_tl"]
    assert sorted(p.name for p in (tmp_path / "records" / "sk2_down").iterdir()) == ["0.00300.json"]
    assert [g["grid"] for g in summary["grid_ladder"]] == [2, 4]
    for r in rows:
        # damped LLG never raises the energy (on the relaxation grid, plain k-grid sum)
        assert float(r["energy_relax"]) <= float(r["energy_start"]) + 1e-12
        # 10 steps at most: stopped by the limit, or earlier because the fall per step was below --tol
        assert (r["converged"] == "True") == (int(r["steps"]) < 10) or float(r["last_drop_per_step"]) < 1e-9
        if r["refined"] == "False":  # the ladder's limit: grids 2 and 4, the error against grid 4 itself
            e2, e4 = float(r["energy_k2"]), float(r["energy_k4"])
            assert float(r["energy_tl"]) == pytest.approx((16 * e4 - 4 * e2) / 12, abs=1e-12)
            assert float(r["energy_tl_prev"]) == float(r["energy_k4"])
        assert float(r["minus_lowest"]) >= 0
        n_sk = float(r["n_sk_per_cell"])
        assert abs(n_sk - round(n_sk)) < 1e-6  # integer per magnetic cell on the periodic lattice
    fm = [r for r in rows if r["state"] == "fm"]
    assert all(float(r["mz"]) == pytest.approx(1.0) and float(r["max_torque"]) < 1e-10 for r in fm)
    # the ansatz starts: two skyrmions per cell in sk2's first record, one in sk1's
    first = {r["branch"]: r for r in rows if (r["direction"] == "up") == (float(r["hz"]) == 0.003)}
    assert abs(round(float(first["sk2_up"]["n_sk_per_cell"]))) == 2
    assert abs(round(float(first["sk1_down"]["n_sk_per_cell"]))) == 1
    # a rerun reads the records instead of relaxing again, and other settings are refused
    records = sorted((tmp_path / "records").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    again = example.main(argv)
    assert [p.stat().st_mtime_ns for p in records] == stamps
    for key in ("hz_2_1", "hz_1_0"):  # (json: nan == nan)
        assert json.dumps(again[key]) == json.dumps(summary[key])
    with pytest.raises(SystemExit, match="other settings"):
        example.main(argv[:-2] + ["--tol", "1e-6", "--out", str(tmp_path)])
    assert (tmp_path / "energies.png").stat().st_size > 10_000
    assert (tmp_path / "phase_diagram.png").stat().st_size > 10_000


def test_triangular_phase_diagram_boundaries_and_bounds():
    """Crossings are interpolated; without one in the range the boundary is a bound, not nan."""
    crossing = load_example("triangular_phase_diagram").crossing
    boundary = load_example("triangular_phase_diagram").boundary_text

    def rows(gaps):  # E(n_sk = 1) - E(n_sk = 0) per field; the coarse grid 1e-6 off
        out = []
        for hz, gap in gaps.items():
            out += [{"hz": hz, "n_sk_per_cell": -1.0, "energy_k2": 0.0, "energy_k4": 0.0},
                    {"hz": hz, "n_sk_per_cell": 0.0, "energy_k2": -gap + 1e-6, "energy_k4": -gap}]
        return out

    fields = [0.002, 0.004, 0.006]
    c = crossing(rows({0.002: -3e-5, 0.004: -1e-5, 0.006: 1e-5}), fields, 1, 0, "energy_k4", "energy_k2")
    assert c["hz"] == pytest.approx(0.005) and c["bracket"] == [0.004, 0.006] and c["bound"] is None
    assert c["grid_uncertainty"] == pytest.approx(1e-6 / (2e-5 / 0.002))
    assert boundary(c) == "0.00500"
    above = crossing(rows({0.002: -3e-5, 0.004: -2e-5, 0.006: -1e-6}), fields, 1, 0, "energy_k4", "energy_k2")
    assert (above["bound"], above["hz"], boundary(above)) == (">", 0.006, ">0.00600")
    below = crossing(rows({0.002: 3e-5, 0.004: 2e-5, 0.006: 1e-6}), fields, 1, 0, "energy_k4", "energy_k2")
    assert boundary(below) == "<0.00200"
    missing = crossing(rows({0.002: 3e-5})[:1], [0.002], 1, 0, "energy_k4", "energy_k2")  # no n_sk = 0 state at all
    assert boundary(missing) == "nan"
    assert math.isnan(c["interpolation_uncertainty"])  # no magnetisations: the linear interpolation alone

    # with magnetisations the crossing follows the two states nearer to it along d(E/N)/dHz = -M^z:
    # at 0.006 the gap +1e-5 closes at the rate M^z(0) - M^z(1) = 0.1, 1e-4 below 0.006
    magnetised = rows({0.002: -3e-5, 0.004: -1.2e-5, 0.006: 1e-5})
    for r in magnetised:
        r["mz"] = 0.3 if r["n_sk_per_cell"] == 0.0 else 0.2
    t = crossing(magnetised, fields, 1, 0, "energy_k4", "energy_k2")
    assert t["hz"] == pytest.approx(0.0059) and t["hz_linear"] == pytest.approx(0.004 + 0.002 * 1.2 / 2.2)
    assert t["interpolation_uncertainty"] == pytest.approx(abs(0.0059 - t["hz_linear"]))
    for r in magnetised:  # a tangent that would leave the bracket is not used
        r["mz"] = 0.2 + 1e-3 * (r["n_sk_per_cell"] == 0.0)
    far = crossing(magnetised, fields, 1, 0, "energy_k4", "energy_k2")
    assert far["hz"] == far["hz_linear"] and math.isnan(far["interpolation_uncertainty"])


def test_triangular_model_phase_diagram_runs(tmp_path, capsys):
    """Item 3's pipeline, tiny: the candidates on a periodic lattice relaxed with the published
    model, up and down, the boundaries set beside an ED summary, and resumption."""
    if not (ECNN4KLM / "triangle_param.cpt").is_file():
        pytest.skip(f"the published checkpoint is not at {ECNN4KLM}")
    example = load_example("triangular_model_phase_diagram")
    ed = {"solver": "ED, k-grid 2x2", "hz_2_1": {"hz": 0.005, "bound": None}, "hz_1_0": {"hz": 0.008, "bound": ">"},
          "ground_states": []}
    (tmp_path / "ed.json").write_text(json.dumps(ed))
    argv = ["--size", "12", "--hz", "0.004", "0.008", "--states", "sk1", "tq0", "fm", "--max-steps", "10",
            "--phase-diagram", str(tmp_path / "ed.json"), "--out", str(tmp_path / "run")]
    summary = example.main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    assert PHASE_LINE.match(out[-1]) and "k-grid ED (ED, k-grid 2x2): >0.00800" in "\n".join(out)
    with open(tmp_path / "run" / "model_phase_diagram.csv") as f:
        rows = list(csv.DictReader(f))
    # sk1 and tq0 up and down, fm once; the topology is that of the seeded state after 10 steps
    assert sorted({r["branch"] for r in rows}) == ["fm_up", "sk1_down", "sk1_up", "tq0_down", "tq0_up"]
    assert {round(abs(float(r["n_sk_per_cell"]))) for r in rows if r["state"] == "sk1"} == {1}
    assert {round(abs(float(r["n_sk_per_cell"]))) for r in rows if r["state"] != "sk1"} == {0}
    assert all(float(r["energy_model"]) <= float(r["energy_start"]) + 1e-12 for r in rows)
    assert summary["ed"]["hz_1_0"]["bound"] == ">"
    # an ansatz is followed up first, a random-start state (found at the top field) down first
    names = {b: sorted(p.name for p in (tmp_path / "run" / "records" / b).iterdir()) for b in ("sk1_down", "tq0_up")}
    assert names == {"sk1_down": ["0.00400.json"], "tq0_up": ["0.00800.json"]}
    records = sorted((tmp_path / "run" / "records").rglob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in records]
    assert example.main(argv)["ground_states"] == summary["ground_states"]
    assert [p.stat().st_mtime_ns for p in records] == stamps

    # --check-ed: every relaxed state labelled by k-grid ED, in the model's energy convention
    checked = example.main(argv + ["--check-ed", "1"])
    text = capsys.readouterr().out
    assert "ED, k-grid 1x1 on 12x12, of the states relaxed by triangle_param: model - ED" in text
    with open(tmp_path / "run" / "model_phase_diagram.csv") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["branch"] == "tq0_down")
    record = json.loads((tmp_path / "run" / "records" / "tq0_down" / f"{float(row['hz']):.5f}.json").read_text())
    spins = torch.tensor(record["spins"], dtype=torch.float64)
    lattice = klmgraph.triangular(12, 12, t1=1.0, t3=-0.85)
    energy, _ = klmgraph.ExactDiagonalization(lattice, J=-1.0, mu=-3.5).energy_and_field(spins)
    hz, mz = float(row["hz"]), float(spins[:, 2].mean())
    assert float(row["energy_ed"]) == pytest.approx(float(energy) / 144 - hz * mz, abs=1e-12)
    assert float(row["model_minus_ed"]) == pytest.approx(float(row["energy_model"]) - float(row["energy_ed"]), abs=1e-15)
    assert checked["ed_check"]["model_minus_ed"]["min"] <= float(row["model_minus_ed"]) <= \
        checked["ed_check"]["model_minus_ed"]["max"]
    assert len(list((tmp_path / "run" / "ed_check" / "k1").rglob("*.json"))) == len(records)  # one per record
    with pytest.raises(SystemExit, match="--check-ed -1"):
        example.main(argv + ["--check-ed", "-1"])

    # --ed-states: k-grid-ED-relaxed records tiled onto the lattice and relaxed by the model
    records = tmp_path / "records"
    for name in ("sk1_up/0.00400.json", "tq0_down/0.00800.json"):
        (records / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REFERENCE / "phase_records" / name, records / name)
    held = example.main(argv + ["--check-ed", "1", "--ed-states", str(records)])["ed_states"]
    text = capsys.readouterr().out
    assert "ED state tq0_down at Hz = 0.008 relaxed by triangle_param: RMS change" in text
    with open(tmp_path / "run" / "ed_states.csv") as f:
        rows = {r["branch"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["sk1_up", "tq0_down"] and held["states"] == 2
    cell = torch.tensor(json.loads((records / "tq0_down/0.00800.json").read_text())["spins"], dtype=torch.float64)
    row = rows["tq0_down"]
    start = cell[example.to_lattice(example.cell_graph(), lattice)]
    end = torch.tensor(json.loads((tmp_path / "run" / "ed_states" / "tq0_down" / "0.00800.json").read_text())["spins"],
                       dtype=torch.float64)
    assert float(row["mz_start"]) == pytest.approx(float(start[:, 2].mean()), abs=1e-12)
    assert float(row["rms_change"]) == pytest.approx(float((end - start).pow(2).sum(-1).mean().sqrt()), abs=1e-12)
    assert 0 < float(row["rms_change"]) < 1 and float(row["energy_model_relaxed"]) <= float(row["energy_model_start"])
    ed1 = klmgraph.ExactDiagonalization(lattice, J=-1.0, mu=-3.5)
    energy = [float(ed1.energy_and_field(s)[0]) / 144 - 0.008 * float(s[:, 2].mean()) for s in (start, end)]
    assert float(row["ed_cost"]) == pytest.approx(energy[1] - energy[0], abs=1e-12)
    assert float(row["model_minus_ed_start"]) == pytest.approx(float(row["energy_model_start"]) - energy[0], abs=1e-12)
    assert round(float(rows["sk1_up"]["n_sk_start"])) in (-1, 1) and held["topology_changed"] == []
    # resumed, not recomputed
    stamps = sorted(p.stat().st_mtime_ns for p in (tmp_path / "run" / "ed_states").rglob("*.json"))
    example.main(argv + ["--check-ed", "1", "--ed-states", str(records)])
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "run" / "ed_states").rglob("*.json")) == stamps
    # --no-diagram: the check alone, read back from the same folder (other fields do not matter)
    capsys.readouterr()
    alone = example.main(argv[:2] + ["--hz", "0.005"] + argv[5:] + ["--no-diagram", "--check-ed", "1", "--ed-states",
                                                                   str(records)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("table ") and lines[-1].endswith("ed_states.csv")
    assert not any(line.startswith("hz_2_1") for line in lines)
    assert alone["ed_states"] == held and "hz_2_1" not in alone
    with pytest.raises(SystemExit, match="--no-diagram leaves nothing to do without --ed-states"):
        example.main(argv + ["--no-diagram"])
    with pytest.raises(SystemExit, match="holds a run with other settings"):
        example.main(argv + ["--no-diagram", "--ed-states", str(records), "--max-steps", "20"])
    # a record that changed is relaxed and labelled again (its files carry the spins' digest)
    flipped = {**json.loads((records / "tq0_down/0.00800.json").read_text()), "spins": (-cell).tolist()}
    (records / "tq0_down/0.00800.json").write_text(json.dumps(flipped))
    example.main(argv + ["--check-ed", "1", "--ed-states", str(records)])
    with open(tmp_path / "run" / "ed_states.csv") as f:
        again = {r["branch"]: r for r in csv.DictReader(f)}
    assert float(again["tq0_down"]["mz_start"]) == pytest.approx(-float(row["mz_start"]), abs=1e-12)
    assert again["sk1_up"] == rows["sk1_up"]
    # a model run's own records (L x L spins, not the 48-site cell) are refused, and so is an empty folder
    with pytest.raises(SystemExit, match="holds 144 spins, not the 48 of the magnetic cell"):
        example.main(argv + ["--ed-states", str(tmp_path / "run" / "records")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="--ed-states .*empty: no <branch>/<Hz>.json records"):
        example.main(argv + ["--ed-states", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="--ed-states .*: not a folder"):
        example.main(argv + ["--ed-states", str(tmp_path / "nowhere")])


@pytest.mark.slow
def test_triangular_phase_diagram_quick(tmp_path, capsys):
    """The documented --quick setting (13.8-16.5 minutes on 2 cores, 2026-12-02 and 04; docs/results.md)."""
    load_example("triangular_phase_diagram").main(["--quick", "--workers", "2", "--out", str(tmp_path)])
    assert PHASE_LINE.match(capsys.readouterr().out.strip().splitlines()[-1])


def test_triangular_paper_model_tiny(tmp_path, capsys, one_thread):
    """Issue 14 item 2's pipeline on --tiny (12 x 12, grids 1/2 and 2/4): the evaluation set of
    equilibrium states with two k-grids, the metrics of both models against the fine grid, a
    partial learning run read correctly, and ship (refused without a model or while the loop
    runs, then a card that klmgraph.pretrained reads)."""
    from klmgraph.learn import load_learn_config
    from klmgraph.nn.committee import Committee

    example = load_example("triangular_paper_model")
    graph = klmgraph.triangular(12, 12, t1=1.0, t3=-0.85)
    learn, evals, dest = tmp_path / "learn", tmp_path / "eval", tmp_path / "models"
    base = ["--tiny", "--out", str(learn), "--eval-dir", str(evals), "--dest", str(dest)]
    learn.mkdir()
    (learn / "config.json").write_text(json.dumps(load_learn_config(example.LEARN_CONFIG).to_dict()))
    with pytest.raises(SystemExit, match="nothing to ship"):
        example.ship(example.TINY, learn, dest, {"models": {}}, partial=True)
    # a partial loop: iteration 0 trained, iteration 1 begun (no model yet)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(klmgraph.ECNN.for_graph(graph, channels=2, num_interactions=1))
    (learn / "iter000").mkdir()
    (learn / "iter001").mkdir()
    Committee(members).save(learn / "iter000" / "model.pt")
    # what `klmgraph learn`'s training run of iteration 0 records when it starts (the card quotes it)
    (learn / "iter000" / "training").mkdir()
    (learn / "iter000" / "training" / "augmentation.json").write_text(
        json.dumps(augmentation_record(graph, True)))
    # iteration 0's training data (the card counts it)
    quick_ed = load_learn_config(example.LEARN_CONFIG, quick=True).system.solver()
    klmgraph.generate_dataset(learn / "data" / "train.h5", quick_ed, num_samples=2, seed=0)
    assert example.newest_model(learn) == learn / "iter000" / "model.pt" and example.loop_state(learn) is None

    example.main(["--stage", "eval-data"] + base)
    info = json.loads((evals / "states.json").read_text())
    kinds = [s["kind"] for s in info["states"]]
    assert kinds == ["lattice", "lattice", "cell", "cell"]  # one seed at 0.002 and 0.008, data/states at 0.008
    assert [s["hz"] for s in info["states"]] == [0.002, 0.008, 0.008, 0.008]
    assert sorted(round(abs(s["n_sk_per_cell"])) for s in info["states"][2:]) == [0, 1]
    labels = sorted(p.name for p in (evals / "labels").iterdir())
    assert labels == ["000_k1.pt", "000_k2.pt", "001_k1.pt", "001_k2.pt", "002_k2.pt", "002_k4.pt", "003_k2.pt",
                      "003_k4.pt"]
    # a label lost: resuming needs no model (the states exist), and refuses other --phase-records
    (evals / "labels" / "000_k2.pt").unlink()
    no_model = ["--checkpoint", str(tmp_path / "absent.cpt"), "--out", str(tmp_path / "empty")]
    with pytest.raises(SystemExit, match="made without --phase-records"):
        example.main(["--stage", "eval-data", "--phase-records", str(tmp_path)] + base + no_model)
    example.main(["--stage", "eval-data"] + base + no_model)
    assert (evals / "labels" / "000_k2.pt").exists()
    stamps = [p.stat().st_mtime_ns for p in sorted((evals / "labels").iterdir())]
    # a lattice state's label is k-grid ED of the lattice; a cell state's, k-grid ED of the cell tiled back
    spins = torch.load(evals / "states.pt", weights_only=True)
    fine = torch.load(evals / "labels" / "001_k2.pt", weights_only=True)
    energy, field = example.solver(graph, 2).energy_and_field(spins[1])
    torch.testing.assert_close(fine["field"], field, rtol=0, atol=1e-12)
    assert float(fine["energy_per_site"]) == pytest.approx(float(energy) / graph.num_nodes, abs=1e-14)
    cell = example.cell_graph()
    index = example.to_lattice(cell, graph)
    tiled = torch.load(evals / "labels" / "003_k4.pt", weights_only=True)
    cell_spins = torch.zeros(cell.num_nodes, 3, dtype=torch.float64).index_copy_(0, index, spins[3])
    e_cell, b_cell = example.solver(cell, 4).energy_and_field(cell_spins)
    torch.testing.assert_close(tiled["field"], b_cell[index], rtol=0, atol=1e-12)

    capsys.readouterr()
    results = example.main(["--stage", "eval"] + base)
    out = capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in sorted((evals / "labels").iterdir())] == stamps  # nothing relabelled
    names = ["ours"] + (["published"] if (ECNN4KLM / "triangle_param.cpt").is_file() else [])
    assert sorted(results["models"]) == sorted(names)
    assert ("published: skipped" in out) == ("published" not in names)
    # the metrics are the model against the fine grid: recomputed here
    committee = klmgraph.load_model(learn / "iter000" / "model.pt", graph=graph)
    e_model, b_model = committee.bind(graph).energy_and_field(spins.float())
    ref = [torch.load(evals / "labels" / f"00{i}_k{g}.pt", weights_only=True) for i, g in enumerate((2, 2, 4, 4))]
    b_ref = torch.stack([r["field"] for r in ref])
    ours = results["models"]["ours"]
    assert ours["all_states"]["rmse_field"] == pytest.approx(float((b_model.double() - b_ref).pow(2).mean().sqrt()),
                                                             rel=1e-6)
    e = e_model.double() / graph.num_nodes
    e_ref = torch.stack([r["energy_per_site"] for r in ref])
    pairs = {(p["i"], p["j"]): p for p in ours["pairs"]}
    assert sorted(pairs) == [(1, 2), (1, 3), (2, 3)]  # the states of one field only
    assert pairs[(2, 3)]["error"] == pytest.approx(float((e[2] - e[3]) - (e_ref[2] - e_ref[3])), abs=1e-9)
    # competing: within 5e-4 per site of the field's lowest total energy E_el / N - Hz M^z
    mz = torch.tensor([s["mz"] for s in info["states"]], dtype=torch.float64)
    hz = torch.tensor([s["hz"] for s in info["states"]], dtype=torch.float64)
    total = e_ref - hz * mz
    keep = [float(t) <= float(total[hz == h].min()) + 5e-4 for t, h in zip(total, hz)]
    assert ours["competing"] == keep
    errors = [abs(p["error"]) for (i, j), p in pairs.items() if keep[i] and keep[j]]
    assert ours["energy_difference_max"] == pytest.approx(max(errors)) if errors else math.isnan(
        ours["energy_difference_max"])
    assert ours["all_states"]["energy_difference_max"] == pytest.approx(max(abs(p["error"]) for p in pairs.values()))
    # the transverse part: the error perpendicular to each spin, over the competing states
    err = b_model.double() - b_ref
    unit = spins.double()
    perp = err - (err * unit).sum(-1, keepdim=True) * unit
    assert ours["rmse_field_transverse"] == pytest.approx(float(perp[torch.tensor(keep)].pow(2).mean().sqrt()), rel=1e-6)
    assert re.search(r"^ours: rmse_field=\S+ \(transverse \S+\) energy_difference_max=\S+", out, re.M)
    assert (evals / "eval.png").stat().st_size > 0 and (evals / "eval_states.csv").is_file()
    # --model judges another file as ours; ship refuses it
    other = tmp_path / "other.pt"
    members[0].save(other)
    before = (evals / "eval_ours.json").read_text()
    alone = example.main(["--stage", "eval", "--model", str(other)] + base)["models"]["ours"]
    assert alone["source"] == str(other) and alone["rmse_field"] != ours["rmse_field"]
    assert (evals / "eval_ours.json").read_text() == before  # the loop committee's results stay
    assert json.loads((evals / f"model-{tmp_path.name}-other" / "eval_ours.json").read_text())["source"] == str(other)
    with pytest.raises(SystemExit, match="--model is for --stage eval only"):
        example.main(["--stage", "ship", "--model", str(other)] + base)

    with pytest.raises(SystemExit, match="has not finished"):
        example.main(["--stage", "ship"] + base)
    example.main(["--stage", "ship", "--partial"] + base)
    assert klmgraph.pretrained(directory=dest) == ["triangular-paper"]
    shipped = klmgraph.pretrained("triangular-paper", graph=graph, directory=dest)
    assert isinstance(shipped, Committee)
    card = klmgraph.model_card("triangular-paper", directory=dest)
    assert card["metrics"]["held_out_equilibrium_states"]["rmse_field"] == pytest.approx(ours["rmse_field"])
    assert card["data"]["stopped"] == "not finished (--partial)" and card["target"]["met"] is False
    # the card names the iteration whose committee it ships and how many configurations trained it
    assert card["data"]["committee_of_iteration"] == 0 and card["data"]["committee_trained_on_configurations"] == 2
    assert "12 point-group operations (rotations and mirrors)" in card["training"]["augmentation"]  # C6v
    # a fine-tuned committee (iteration 1) is shipped with the count of its own training set
    Committee(members[::-1]).save(learn / "iter001" / "model.pt")
    klmgraph.generate_dataset(learn / "iter001" / "train.h5", quick_ed, num_samples=3, seed=5)
    example.main(["--stage", "ship", "--partial"] + base)
    card = klmgraph.model_card("triangular-paper", directory=dest)
    assert card["data"]["committee_of_iteration"] == 1 and card["data"]["committee_trained_on_configurations"] == 3
    # each iteration fine-tunes the previous committee: the card quotes the records of both
    full = augmentation_record(graph, True)["text"]
    assert card["training"]["augmentation"].startswith(f"iteration 0: {full}; iteration 1: not recorded")
    rotations = torch.linalg.det(graph.symmetry_rotation) > 0
    c6 = graph.clone()
    c6.symmetry_perm, c6.symmetry_rotation = graph.symmetry_perm[rotations], graph.symmetry_rotation[rotations]
    (learn / "iter001" / "training").mkdir()
    (learn / "iter001" / "training" / "augmentation.json").write_text(json.dumps(augmentation_record(c6, True)))
    example.main(["--stage", "ship", "--partial"] + base)
    card = klmgraph.model_card("triangular-paper", directory=dest)
    assert card["training"]["augmentation"] == (f"iteration 0: {full}; iteration 1: each configuration under a "
                                                "random one of the lattice's 6 point-group operations (rotations only)")
    assert (dest / "triangular-paper.pt").read_bytes() == (learn / "iter001" / "model.pt").read_bytes()
    assert {"name", "summary", "date", "lattice", "hamiltonian", "solver", "data", "training", "metrics"} <= set(card)


def test_triangular_paper_card_keeps_data_paths_portable(tmp_path):
    """The card's copy of the loop configuration names its data by repository path or file name,
    never by an absolute path of the training machine."""
    example = load_example("triangular_paper_model")
    inside = example.REPO / "data" / "reference" / "triangular" / "snapshots" / "snapshots.h5"
    assert example.portable_path(str(inside)) == "data/reference/triangular/snapshots/snapshots.h5"
    assert example.portable_path(str(tmp_path / "runs" / "snap.h5")) == "snap.h5"


def test_triangular_phase_diagram_record_path_of_a_return_sweep(tmp_path):
    """A return sweep's first field is the first sweep's last record, in either direction (the
    random-start states go down first)."""
    record_path = load_example("triangular_phase_diagram").record_path
    for first, back in (("up", "down"), ("down", "up")):
        stored = tmp_path / "records" / f"tq0_{first}" / "0.00800.json"
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text("{}")
        row = {"branch": f"tq0_{back}", "state": "tq0", "direction": back, "hz": 0.008}
        assert record_path(tmp_path, row) == stored
        stored.unlink()


def test_square_paper_model_polish_and_ship(tmp_path, capsys, one_thread):
    """examples/square_paper_model.py on 6 x 6: the first run, the polish run from its best weights
    (cosine schedule, a copy of the start kept for resuming), and ship, which takes the run with
    the lower training loss (never the test set) and writes a card that says which."""
    example = load_example("square_paper_model")
    out, dest = tmp_path / "out", tmp_path / "models"
    base = ["--size", "6", "--counts", "8", "4", "--out", str(out)]
    with pytest.raises(FileNotFoundError, match="run --stage train first"):
        example.main(["--stage", "polish", "--epochs", "2"] + base)
    example.main(["--stage", "train", "--minutes", "0.02"] + base)
    example.main(["--stage", "polish", "--epochs", "3", "--lr", "0.002"] + base)
    polish = json.loads((out / "ecnn_polish" / "config.json").read_text())
    assert polish["optimizer"]["schedule"] == "cosine" and polish["optimizer"]["lr"] == 0.002
    assert polish["training"]["init"] == str(out / "ecnn_polish_start.pt")
    assert (out / "ecnn_polish_start.pt").read_bytes() != b""

    best = {}
    for run in ("ecnn", "ecnn_polish"):
        rows = list(csv.DictReader(open(out / run / "log.csv")))
        best[run] = min(float(r["train_loss"]) for r in rows)
    chosen = min(best, key=best.get)
    capsys.readouterr()
    example.main(["--stage", "ship", "--dest", str(dest)] + base)
    card = json.loads((dest / "square-paper.json").read_text())
    assert card["training"]["training"]["out"] == chosen
    assert ("polish run" in card["data"]["selection"]) == (chosen == "ecnn_polish")
    assert (dest / "square-paper.pt").read_bytes() == (out / chosen / "best.pt").read_bytes()
    test = klmgraph.load_dataset(out / "test.h5")
    expected = example.evaluate(klmgraph.load_model(out / chosen / "best.pt"), test, batch_size=4)["rmse_field"]
    assert card["metrics"]["test"]["rmse_field"] == pytest.approx(expected, abs=1e-6)
    assert f"square_paper_test_rmse={expected:.4f}" in capsys.readouterr().out


def test_square_paper_model_quick_writes_beside_its_run(tmp_path, one_thread):
    """--quick runs the data, training and ship stages on 12 x 12 and ships into <out>/models, never over data/models;
    options given beside it win; the card names the point group the training augmented with."""
    example = load_example("square_paper_model")
    shipped = (EXAMPLES.parent / "data" / "models" / "square-paper.json").read_bytes()
    out = tmp_path / "quick"
    example.main(["--quick", "--out", str(out), "--counts", "4", "2", "--minutes", "0.02"])
    assert (EXAMPLES.parent / "data" / "models" / "square-paper.json").read_bytes() == shipped
    card = json.loads((out / "models" / "square-paper.json").read_text())
    assert card["metrics"]["train"]["configurations"] == 4 and card["metrics"]["test"]["configurations"] == 2
    assert klmgraph.load_dataset(out / "test.h5").graph.num_nodes == 144
    assert "8 point-group operations (rotations and mirrors)" in card["training"]["augmentation"]
    # the card names the lattice the labels were computed on, not the paper's 30 x 30
    assert card["lattice"].startswith("square 12x12 periodic") and "of the 12x12 lattice itself" in card["solver"]


@pytest.mark.parametrize("loop_size", [12, 24])
def test_triangular_paper_model_snapshots_tiny(tmp_path, monkeypatch, one_thread, loop_size):
    """The snapshots stage on --tiny: relaxed states far enough from the evaluation fields (0.0065
    kept, 0.0075 left out under TINY's 0.002 / 0.008), their thermal ED-LLG snapshots and a
    random start's, labelled for the loop's lattice and k-grid (12 x 12 directly, 24 x 24 folded
    onto 12 x 12); a rerun recomputes nothing."""
    example = load_example("triangular_paper_model")
    from klmgraph.learn import load_learn_config

    state = json.loads((Path(example.__file__).parents[1] / "data" / "states" / "triangular_sk1_hz0.008.json").read_text())
    records = tmp_path / "records" / "sk1_up"
    records.mkdir(parents=True)
    for hz in (0.0065, 0.0075):
        (records / f"{hz:.5f}.json").write_text(json.dumps({"branch": "sk1_up", "hz": hz, "spins": state["spins"]}))
    config = example.LEARN_CONFIG
    if loop_size != 12:
        config = tmp_path / "learn.toml"
        config.write_text(example.LEARN_CONFIG.read_text().replace("size = [12, 12]", f"size = [{loop_size}, {loop_size}]")
                          .replace('"system.k_grid" = [2, 2]', '"system.k_grid" = [1, 1]'))
    path = tmp_path / "snap" / "snapshots.h5"
    argv = ["--stage", "snapshots", "--tiny", "--quick", "--phase-records", str(tmp_path / "records"),
            "--snapshots", str(path), "--config", str(config)]
    example.main(argv)
    parts = sorted(p.name for p in (path.parent / "parts").glob("*.npy"))
    assert parts == ["equilibria_0.00650.npy", "random_0.00350.npy", "thermal_0.00650_T0.003.npy"]
    data = klmgraph.load_dataset(path)
    system = load_learn_config(config, quick=True).system
    assert system.size == [loop_size, loop_size]
    ed = system.solver()
    assert len(data) == 1 + 2 + 1 and data.graph.same_lattice(ed.graph.description)
    assert data.hamiltonian == ed.parameters()
    energy, field = ed.energy_and_field(data.spins[1])
    torch.testing.assert_close(data.field[1], field, rtol=0, atol=1e-10)
    assert float(data.energy[1]) == pytest.approx(float(energy), abs=1e-10)
    # the relaxed state itself, tiled, is the first configuration
    index = example.to_lattice(example.cell_graph(), ed.graph)
    torch.testing.assert_close(data.spins[0], torch.tensor(state["spins"], dtype=torch.float64)[index])
    stamps = [p.stat().st_mtime_ns for p in sorted((path.parent / "parts").glob("*.npy"))]
    labelled = []
    for solver in (klmgraph.FoldedED, klmgraph.ExactDiagonalization):
        monkeypatch.setattr(solver, "energy_and_field", lambda self, spins: labelled.append(1))
    example.main(argv)
    assert [p.stat().st_mtime_ns for p in sorted((path.parent / "parts").glob("*.npy"))] == stamps and not labelled
    # the records copied elsewhere (data/reference keeps them) continue the same parts
    import shutil
    shutil.copytree(tmp_path / "records", tmp_path / "copied")
    example.main([str(tmp_path / "copied") if a == str(tmp_path / "records") else a for a in argv])
    assert [p.stat().st_mtime_ns for p in sorted((path.parent / "parts").glob("*.npy"))] == stamps and not labelled
    with pytest.raises(SystemExit, match="needs --phase-records"):
        example.main(["--stage", "snapshots", "--tiny", "--snapshots", str(path)])
    with pytest.raises(SystemExit, match="no <branch>/<Hz>.json records there"):
        example.main([str(tmp_path) if a == str(tmp_path / "records") else a for a in argv])
    monkeypatch.undo()
    if loop_size == 12:  # the same data set from two worker processes
        other = tmp_path / "workers" / "snapshots.h5"
        example.main([str(other) if a == str(path) else a for a in argv] + ["--workers", "2"])
        data2 = klmgraph.load_dataset(other)
        assert torch.equal(data2.spins, data.spins) and torch.equal(data2.field, data.field)
    # the full settings refuse the tiny run's parts
    with pytest.raises(SystemExit, match="holds snapshots of other settings"):
        example.main([a for a in argv if a != "--tiny"])


def test_reference_phase_records_reproduce(one_thread):
    """data/reference/triangular: a stored relaxed state gives its stored energy again (k-grid ED,
    tetrahedron method, 32 x 32), its n_sk and M^z, and is relaxed (small torque) at its field."""
    example = load_example("triangular_phase_diagram")
    folder = Path(example.__file__).parents[1] / "data" / "reference" / "triangular" / "phase_records"
    # every candidate at every field (a return sweep's first field is the first sweep's record)
    found = {(path.parent.name.rsplit("_", 1)[0], path.stem) for path in folder.glob("*/*.json")}
    fields = [f"{hz:.5f}" for hz in (0.002, 0.003, 0.0035, 0.004, 0.005, 0.006, 0.0065, 0.007, 0.008)]
    assert found == {(state, hz) for state in ("sk2", "sk1", "sk1r", "tq0", "fm") for hz in fields}
    record = json.loads((folder / "sk1r_down" / "0.00500.json").read_text())
    cell = example.cell_graph()
    spins = torch.tensor(record["spins"], dtype=torch.float64)
    mz = float(spins[:, 2].mean())
    assert mz == pytest.approx(record["mz"], abs=1e-12)
    assert float(klmgraph.skyrmion_number(cell, spins)) == pytest.approx(record["n_sk_per_cell"], abs=1e-6)
    energy = example.tetrahedron_energies(cell, (16, 32), spins, record["hz"], mz)["energy_k32"]
    assert energy == pytest.approx(record["energy_k32"], abs=1e-11)
    # relaxed at its field on the relaxation grid: the torque S x B_total is small
    _, field = example.solver(cell, 16).energy_and_field(spins)
    torque = torch.linalg.cross(spins, field + torch.tensor([0.0, 0.0, record["hz"]], dtype=torch.float64))
    assert float(torque.norm(dim=-1).max()) < 1e-4


def test_reference_evaluation_set_reproduces(one_thread):
    """data/reference/triangular/evaluation: a cell state's coarse label is k-grid ED of its spins
    again, and the set is the one its phase records (by content) made."""
    example = load_example("triangular_paper_model")
    reference = Path(example.__file__).parents[1] / "data" / "reference" / "triangular"
    info = json.loads((reference / "evaluation" / "states.json").read_text())
    assert info["phase_records"] == example.records_digest(reference / "phase_records")
    spins = torch.load(reference / "evaluation" / "states.pt", weights_only=True)
    i = next(k for k, state in enumerate(info["states"]) if state["kind"] == "cell")
    s = example.Settings()
    stored = torch.load(reference / "evaluation" / "labels" / f"{i:03d}_k{s.cell_grids[0]}.pt", weights_only=True)
    energy, field = example.label(info["states"][i], spins[i], s, example.lattice_graph(s), s.cell_grids[0])
    assert energy == pytest.approx(float(stored["energy_per_site"]), abs=1e-12)
    torch.testing.assert_close(field, stored["field"], rtol=0, atol=1e-12)


def test_reference_snapshots_reproduce(one_thread):
    """data/reference/triangular/snapshots: labelled for the loop's lattice and k-grid, one label
    is ED of its spins again, and the parts belong to the kept records (by content)."""
    example = load_example("triangular_paper_model")
    from klmgraph.learn import load_learn_config

    reference = Path(example.__file__).parents[1] / "data" / "reference" / "triangular"
    settings = json.loads((reference / "snapshots" / "parts" / "settings.json").read_text())
    assert settings["phase_records"] == example.records_digest(reference / "phase_records")
    data = klmgraph.load_dataset(reference / "snapshots" / "snapshots.h5")
    ed = load_learn_config(example.LEARN_CONFIG).system.solver()
    assert data.graph.same_lattice(ed.graph.description) and data.hamiltonian == ed.parameters()
    energy, field = ed.energy_and_field(data.spins[-1])
    torch.testing.assert_close(data.field[-1], field, rtol=0, atol=1e-10)
    assert float(data.energy[-1]) == pytest.approx(float(energy), abs=1e-10)


def test_shipped_triangular_model_reproduces_its_card(one_thread, tmp_path):
    """data/models/triangular-paper: its card's held-out metrics are what the example's evaluation
    of the shipped file on data/reference/triangular/evaluation gives again."""
    example = load_example("triangular_paper_model")
    reference = Path(example.__file__).parents[1] / "data" / "reference" / "triangular" / "evaluation"
    card = klmgraph.model_card("triangular-paper")
    assert card["hamiltonian"]["t3"] == example.HAMILTONIAN["t3"] and card["hamiltonian"]["mu"] == -3.5
    s = example.Settings()
    graph = example.lattice_graph(s)
    model = klmgraph.pretrained("triangular-paper", graph=graph)
    assert isinstance(model, klmgraph.Committee) and len(model.members()) == 4
    results = example.evaluate_models(s, reference, {"ours": (model, "data/models/triangular-paper.pt")}, tmp_path)
    stored = card["metrics"]["held_out_equilibrium_states"]
    ours = results["models"]["ours"]
    # float32 sums over 576 sites: E/N resolves to ~1e-7, whatever the machine's summation order
    for key in ("rmse_field", "rmse_field_transverse"):
        assert ours[key] == pytest.approx(stored[key], rel=1e-4), key
    for key in ("energy_difference_max", "energy_difference_rms"):
        assert ours[key] == pytest.approx(stored[key], abs=1e-7), key
    for hz, row in stored["per_field"].items():
        assert ours["per_field"][hz]["rmse_field"] == pytest.approx(row["rmse_field"], rel=1e-4), hz
    assert ours["met"] == stored["met"] and card["target"]["met"] == all(ours["met"].values())


def test_reference_start_states_are_the_phase_records_tiled(tmp_path, capsys):
    """data/reference/triangular/starts: the starts stage writes, per record field, the distinct
    relaxed records tiled onto 12 x 12 (a tiled state's skyrmion number is 3 x its cell's), the
    stored files are what it writes, and learn_triangular_phases.toml's exploration reads them on
    the loop's lattice."""
    import numpy as np

    from klmgraph.learn import load_learn_config

    example = load_example("triangular_paper_model")
    reference = Path(example.__file__).parents[1] / "data" / "reference" / "triangular"
    example.main(["--stage", "starts", "--phase-records", str(reference / "phase_records"),
                  "--starts-dir", str(tmp_path)])
    assert "wrote" in capsys.readouterr().out
    written = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert written == sorted(p.name for p in (reference / "starts").glob("*.npy")) and len(written) == 9
    for name in written:
        assert np.array_equal(np.load(tmp_path / name), np.load(reference / "starts" / name)), name
    starts = torch.from_numpy(np.load(tmp_path / "hz0.00500.npy"))
    record = json.loads((reference / "phase_records" / "sk1r_down" / "0.00500.json").read_text())
    cell = torch.tensor(record["spins"], dtype=torch.float64)
    graph = klmgraph.triangular(12, 12, t1=1.0, t3=-0.85)
    match = [k for k in range(len(starts)) if float((starts[k, :, 2].mean() - cell[:, 2].mean()).abs()) < 1e-12]
    assert match, "the record's state is among the start states"
    assert float(klmgraph.skyrmion_number(graph, starts[match[0]])) == pytest.approx(3 * record["n_sk_per_cell"], abs=1e-6)

    config = load_learn_config(EXAMPLES / "learn_triangular_phases.toml")
    for condition in config.explore.conditions:  # files of the loop's lattice, at the condition's field
        assert condition.init.endswith(f"hz{condition.hz:.5f}.npy")
        assert klmgraph.read_spins(condition.init[5:], config.system.solver().graph).shape[1] == 144
    assert config.initial.model.endswith("data/models/triangular-paper.pt")
