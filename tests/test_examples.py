"""The examples' --quick paths, run into a temporary folder, with the physics they claim asserted.

Each example is imported from examples/ (not a package) and its ``main([...])`` called. The
locality example needs the published triangular checkpoint in ../shared/ecnn4klm/ for its
model half; the test skips where it is absent.
"""
import csv
import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TRIANGLE = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm" / "triangle_param.cpt"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_locality_quick(tmp_path, capsys):
    """36 x 36 triangular model, 30-40 s: ED decays, the ECNN's response ends at 10 hops."""
    if not TRIANGLE.is_file():
        pytest.skip(f"published checkpoint {TRIANGLE.name} not found in {TRIANGLE.parent} "
                    "(tests look for ../shared/ecnn4klm/ beside the repository)")
    example = load_example("locality")
    results = example.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "locality.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "results.json").read_text())["ed_decay"] == pytest.approx(results["ed_decay"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("locality: ed_decay=") and "model_range=" in last and "model_hops=" in last

    # the model's field sees exactly 2 x 5 hops: nonzero up to 10, exactly zero beyond
    reach = results["field_reach_hops"]
    assert reach == 10 and results["model_hops"] == reach
    model = results["model_per_hop"]
    assert all(m > 0 for m in model["max"][: reach + 1])
    assert len(model["max"]) > reach + 1 and all(m == 0.0 for m in model["max"][reach + 1:])
    assert results["model_max_beyond_reach"] == 0.0
    assert 17.0 < results["model_range"] < 19.0  # ten hops of length <= 2 on a 36 x 36 lattice

    # ED: the response falls from the nearest neighbours to the far end, but never to zero
    ed = results["ed_per_hop"]
    assert results["far_sites"] == "beyond 10 hops"
    assert results["ed_decay"] < 0.1  # rms beyond the model's reach vs rms at distance 1
    assert results["ed_far_max"] < 0.2 * results["ed_near_max"]
    assert ed["rms"][1] > ed["rms"][3] > ed["rms"][5] > ed["rms"][-1] > 0
    # where both are large, the model follows ED (within a factor 1.5 per hop shell up to 4 hops)
    for h in range(1, 5):
        assert model["rms"][h] == pytest.approx(ed["rms"][h], rel=0.5)


def test_locality_without_checkpoint_runs_ed_only(tmp_path, capsys):
    """A missing checkpoint is reported and the ED half still runs (a 12 x 12 lattice: seconds)."""
    example = load_example("locality")
    results = example.main(["--size", "12", "--checkpoint", str(tmp_path / "absent.cpt"), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "no checkpoint at" in out and "running ED only" in out
    assert out.strip().splitlines()[-1].endswith("model_range=n/a model_hops=n/a")
    assert results["model_range"] is None and "model_per_hop" not in results
    # 12 x 12 has no site beyond 10 hops: the far sites are the outermost distances
    assert results["far_sites"] == "outer 10 % of distances"
    assert (tmp_path / "locality.png").is_file()


def test_custom_lattice_quick(tmp_path, capsys):
    """Hand-made kagome: ED data, training, ML-LLG, ED check (about 70 s)."""
    example = load_example("custom_lattice")
    summary = example.main(["--quick", "--out", str(tmp_path)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("custom_lattice: same_as_builtin=True val_rmse=") and "ed_energy_drop=" in last
    for name in ("summary.json", "parity.png", "parity_llg_state.png", "data/train.h5", "data/val.h5",
                 "training/best.pt", "llg/trajectory.h5", "llg/spins.png", "llg/structure_factor.png",
                 "llg/time_series.png"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "summary.json").read_text())["training"] == summary["training"]

    # the hand-made lattice is the built-in one (origin moved to a hexagon centre: full C6v)
    check = summary["builtin_check"]
    assert check["same"] and check["same_bonds"] and check["same_positions"]
    assert check["energy_difference"] < 1e-9 and check["max_field_difference"] < 1e-9
    assert check["symmetries"] == 12

    # trained: far below the spread of the field components (the RMSE of a constant prediction)
    training = summary["training"]
    assert training["val_rmse_field"] < 0.25 * training["field_std"]
    # the model transfers to the 4x larger lattice and to the relaxed (non-random) LLG state
    c = summary["check_on_llg_state"]
    assert c["rmse_field"] < 0.25 * c["field_std"]
    assert c["energy_per_site_ml"] == pytest.approx(c["energy_per_site_ed"], abs=0.03)
    # the ML dynamics really lowers the exact energy (by ~0.11 per site), as much as the model says
    ed_drop = c["initial_energy_per_site_ed"] - c["energy_per_site_ed"]
    ml_drop = c["initial_energy_per_site_ml"] - c["energy_per_site_ml"]
    assert ed_drop > 0.05 and ml_drop == pytest.approx(ed_drop, abs=0.03)

    # damped T = 0 dynamics: the energy goes down
    import numpy as np

    import klmgraph
    energy = klmgraph.read_trajectory(tmp_path / "llg" / "trajectory.h5").energy
    assert len(energy) == 201
    assert np.all(np.diff(energy) <= 1e-5 * np.abs(energy[:-1])) and energy[-1] < energy[0]


def test_k_grid_convergence_quick(tmp_path, capsys):
    """12 x 12 supercells of both paper models: the k-grid moves E/N and B towards the largest
    grid, and a rerun continues from the table without recomputing."""
    example = load_example("k_grid_convergence")
    results = example.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    rows = list(csv.DictReader(open(tmp_path / "convergence.csv")))
    assert len(rows) == 2 * 2 * 5 and (tmp_path / "convergence.png").stat().st_size > 10_000
    for model in ("triangular", "square"):
        for state in ("random", "ordered"):
            block = {int(r["grid"]): r for r in rows if r["model"] == model and r["state"] == state}
            assert float(block[6]["field_rmse"]) == 0.0  # the reference grid
            rmse = {n: float(block[n]["field_rmse"]) for n in block}
            if (model, state) != ("square", "ordered"):
                # (the ferromagnet's canonical count jumps with the grid: round(2 N n K) / 2 N K)
                assert rmse[4] < rmse[2] < rmse[1] == max(rmse.values())
            assert (block[1]["filling"] == "") == (model == "triangular")  # grand canonical: no count
    gamma = results["gamma_error"]["triangular/12/random"]
    assert abs(gamma["delta_energy_per_site"]) > 1e-4 and gamma["field_rmse"] > 5e-3
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("k_grid: converged_1e-6=") and "triangular/12/random" in last
    before = (tmp_path / "convergence.csv").read_text()
    example.main(["--quick", "--out", str(tmp_path), "--threads", "1"])
    assert (tmp_path / "convergence.csv").read_text() == before
