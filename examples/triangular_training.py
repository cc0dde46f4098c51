"""The triangular recipe of the paper, with our own model: data from ED-LLG, training, ML-LLG scan (Fig. 4).

Miyazaki (2023) trained the triangular ECNN (t1 = 1, t3 = -0.85, J = -1, mu = -3.5; DESIGN.md
section 1) on 36 x 36 configurations: snapshots of LLG runs driven by exact diagonalization
(ED-LLG) at the fields of interest plus random configurations, 900 for training and 300 for
validation, with rotation augmentation and the energy in the loss (lambda = 1), and reached a
validation RMSE of B of 1.04e-3. Then ML-LLG on 96 x 96 from random spins gave |n_sk| = 2, 1, 0
per magnetic cell at Hz = 0.002, 0.005, 0.008. This script does all of it with klmgraph:

1. ED-LLG (damped, T = 0) from random spins at each field on the ED lattice, keeping a
   snapshot every few steps, so that the data cover the states the dynamics visits;
2. as many random configurations again; everything labelled by ED (``generate_dataset``) and
   split 3 : 1 into training and validation files;
3. an ECNN trained with rotation augmentation and lambda = 1;
4. the ML-LLG field scan of examples/triangular_skyrmions.py with the trained model.

    python examples/triangular_training.py --quick                 # 12x12 data, 24x24 scan: ~8 CPU minutes
    python examples/triangular_training.py --device cuda           # 36x36 data, 96x96 scan: the paper's
    python examples/triangular_training.py --learn [--quick]       # stages 1-3 by the learning loop

With ``--learn``, stages 1-3 are the active-learning loop of ``klmgraph learn`` with
examples/learn_triangular.toml (``--learn-config`` another file): random configurations, a
committee, then iterations of committee-driven ML-LLG at Hz = 0.002, 0.005, 0.008 and T = 0,
0.005 on the ED lattice, labelled by ED on a 2 x 2 k-grid where the committee's spread is
largest, and fine-tuning; the scan then runs with the final committee (recording its predicted
error). The loop's report is in OUT/learn/report.md.

Each stage is resumable (rerunning continues the ED-LLG runs, the data files, the training and
the scan). Ends with one line ``val_rmse_field=<x> n_sk_hz0.002=<a> n_sk_hz0.005=<b> n_sk_hz0.008=<c>``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

import klmgraph
from klmgraph.plot import parity_plot
from klmgraph.train import config_from_dict, evaluate, train

TRIANGULAR_PAPER = {"J": -1.0, "mu": -3.5}
FIELDS = (0.002, 0.005, 0.008)
PAPER_VAL_RMSE = 1.04e-3


def triangular(size: int):
    return klmgraph.triangular(size, size, t1=1.0, t3=-0.85)


def ed_llg_snapshots(ed, hz: float, steps: int, every: int, dt: float, seed: int, folder: Path, progress: bool,
                     device="cpu"):
    """Damped ED-LLG from random spins at field ``hz``; the configurations at every ``every``-th
    step after the first ``every`` (the random start itself is not an LLG state)."""
    llg = klmgraph.LLG(ed, dt=dt, alpha=1.0, field=(0.0, 0.0, hz))
    spins = klmgraph.random_spins(ed.graph, seed=seed).to(device)  # drawn on the CPU: the same on any device
    klmgraph.simulate(llg, ed.graph, spins, steps, folder, snapshot_every=every, seed=seed,
                      cell_sites=48, metadata={"hz": hz, "initial": "random", "seed": seed}, progress=progress)
    return torch.as_tensor(klmgraph.read_trajectory(folder / "trajectory.h5").spins[1:], dtype=torch.float64)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12x12 data, short training, 24x24 scan (CPU minutes)")
    p.add_argument("--ed-size", type=int, help="side of the ED lattice (default 36, quick 12)")
    p.add_argument("--scan-size", type=int, help="side of the ML-LLG lattice (default 96, quick 24)")
    p.add_argument("--runs-per-field", type=int, help="ED-LLG runs (random starts) per field (default 3, quick 1)")
    p.add_argument("--ed-steps", type=int, help="steps of each ED-LLG run (default 1000, quick 300)")
    p.add_argument("--snapshot-every", type=int, help="ED-LLG steps between kept snapshots (default 10, quick 15)")
    p.add_argument("--minutes", type=float, help="training budget (default 240, quick 3)")
    p.add_argument("--scan-steps", type=int, help="ML-LLG steps per field (default 2000, quick 400)")
    p.add_argument("--dt", type=float, default=5.0, help="LLG time step of both stages (default 5)")
    p.add_argument("--device", default="cpu", help="torch device of ED-LLG, ED labels, training and the scan")
    p.add_argument("--jobs", type=int, default=1, help="parallel scan processes (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="klmgraph-output/triangular_training")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--learn", action="store_true",
                   help="stages 1-3 by the active-learning loop (examples/learn_triangular.toml)")
    p.add_argument("--learn-config", help="the loop's TOML configuration (default examples/learn_triangular.toml)")
    args = p.parse_args(argv)
    if args.learn or args.learn_config:
        return learned(args)
    q = args.quick
    ed_size = args.ed_size or (12 if q else 36)
    scan_size = args.scan_size or (24 if q else 96)
    runs = args.runs_per_field or (1 if q else 3)
    ed_steps = args.ed_steps or (300 if q else 1000)
    every = args.snapshot_every or (15 if q else 10)
    minutes = args.minutes or (3.0 if q else 240.0)
    scan_steps = args.scan_steps or (400 if q else 2000)
    progress = not args.quiet
    out = Path(args.out) / ("quick" if q else "full")
    out.mkdir(parents=True, exist_ok=True)

    # 1. ED-LLG snapshots at the three fields
    ed = klmgraph.ExactDiagonalization(triangular(ed_size), **TRIANGULAR_PAPER)
    print(f"[1/4] ED-LLG on {ed.graph.describe()}: {runs} run(s) x {ed_steps} steps per field, "
          f"a snapshot every {every}")
    snapshots = [ed_llg_snapshots(ed, hz, ed_steps, every, args.dt, args.seed + 1000 * k + run,
                                  out / "ed_llg" / f"hz={hz:g}" / f"run{run}", progress, args.device)
                 for k, hz in enumerate(FIELDS) for run in range(runs)]
    llg_spins = torch.cat(snapshots)

    # 2. plus as many random configurations, labelled by ED, split 3 : 1
    random = klmgraph.random_spins(ed.graph, batch=len(llg_spins), seed=args.seed + 7)
    spins = torch.cat([llg_spins, random])
    order = torch.randperm(len(spins), generator=torch.Generator().manual_seed(args.seed))
    n_train = (3 * len(spins)) // 4
    print(f"[2/4] {len(llg_spins)} ED-LLG snapshots + {len(random)} random configurations: "
          f"{n_train} training, {len(spins) - n_train} validation")
    paths = {}
    for split, index in (("train", order[:n_train]), ("val", order[n_train:])):
        paths[split] = klmgraph.generate_dataset(out / f"{split}.h5", ed, spins=spins[index], batch_size=4,
                                                 progress=progress, device=args.device)

    # 3. training: the paper's lambda = 1, rotation augmentation
    print(f"[3/4] training an ECNN for up to {minutes:g} minutes")
    config = config_from_dict({
        "data": {"train": str(paths["train"]), "validation": str(paths["val"]), "augment": True},
        "model": {"type": "ecnn"},
        "optimizer": {"name": "adam", "lr": 0.005, "schedule": "plateau", "plateau_patience": 10,
                      "early_stopping": 0},
        "training": {"out": str(out / "training"), "epochs": 100_000, "minutes": minutes, "batch_size": 4,
                     "energy_weight": 1.0, "dtype": "float32", "device": args.device, "seed": args.seed},
    })
    run = train(config, progress=progress)
    model = run["model"].to(args.device)
    metrics = evaluate(model, klmgraph.load_dataset(paths["val"]), batch_size=4)
    parity_plot(metrics["field_pred"], metrics["field_true"], out / "parity_val.png",
                title=f"triangular ECNN, validation: RMSE(B) = {metrics['rmse_field']:.2e} "
                      f"(paper {PAPER_VAL_RMSE:.2e})")
    print(f"      validation RMSE of B = {metrics['rmse_field']:.3e} (paper {PAPER_VAL_RMSE:.2e}), "
          f"E per site {metrics['rmse_energy_per_site']:.2e}; {run['epochs_run']} epochs")

    # 4. the ML-LLG scan of examples/triangular_skyrmions.py, with this model
    print(f"[4/4] ML-LLG scan on triangular {scan_size}x{scan_size}")
    # a regular import, so that the scan's worker processes (--jobs) can import run_one again
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    skyrmions = importlib.import_module("triangular_skyrmions")
    rows = skyrmions.main(["--size", str(scan_size), "--steps", str(scan_steps), "--dt", str(args.dt),
                           "--model", str(out / "training" / "best.pt"), "--device", args.device,
                           "--jobs", str(args.jobs), "--seed", str(args.seed), "--out", str(out / "scan"),
                           "--hz", *map(str, FIELDS)] + (["--quiet"] if args.quiet else []))
    summary = {"ed_size": ed_size, "scan_size": scan_size, "configurations": len(spins), "train": n_train,
               "val_rmse_field": metrics["rmse_field"], "val_rmse_energy_per_site": metrics["rmse_energy_per_site"],
               "epochs": run["epochs_run"], "n_sk_per_cell": {row["hz"]: row["skyrmion_number_per_cell"]
                                                               for row in rows}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"val_rmse_field={metrics['rmse_field']:.3e} "
          + " ".join(f"n_sk_hz{row['hz']:g}={row['skyrmion_number_per_cell']:.2f}" for row in rows))
    return summary


def learned(args):
    """Stages 1-3 by klmgraph.learn, then the scan of stage 4 with the final committee."""
    from klmgraph.learn import load_learn_config, run_learning

    q = args.quick
    config_path = args.learn_config or Path(__file__).resolve().parent / "learn_triangular.toml"
    config = load_learn_config(config_path, quick=q)
    scan_size = args.scan_size or (24 if q else 96)
    scan_steps = args.scan_steps or (400 if q else 2000)
    out = Path(args.out) / ("learn-quick" if q else "learn")
    print(f"[1-3/4] the learning loop ({config_path}) into {out / 'learn'}")
    result = run_learning(config, out / "learn", device=args.device, progress=not args.quiet)
    last = result["iterations"][-1]
    print(f"      explored states: RMSE(B) {result['iterations'][0]['explored_rmse_field']:.3e} -> "
          f"{last['explored_rmse_field']:.3e} by ED (predicted {last['predicted_rmse_field']:.3e}); random "
          f"validation {last['val_rmse_field']:.3e} (paper {PAPER_VAL_RMSE:.2e}); {last['labels']} ED labels")
    print(f"[4/4] ML-LLG scan on triangular {scan_size}x{scan_size} with the committee")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    skyrmions = importlib.import_module("triangular_skyrmions")
    rows = skyrmions.main(["--size", str(scan_size), "--steps", str(scan_steps), "--dt", str(args.dt),
                           "--model", result["model"], "--device", args.device, "--jobs", str(args.jobs),
                           "--seed", str(args.seed), "--out", str(out / "scan"), "--hz", *map(str, FIELDS)]
                          + (["--quiet"] if args.quiet else []))
    summary = {"learning": {k: v for k, v in last.items() if not isinstance(v, list)}, "model": result["model"],
               "stopped": result["stopped"], "scan_size": scan_size, "val_rmse_field": last["val_rmse_field"],
               "explored_rmse_field": last["explored_rmse_field"],
               "n_sk_per_cell": {row["hz"]: row["skyrmion_number_per_cell"] for row in rows}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"val_rmse_field={last['val_rmse_field']:.3e} explored_rmse_field={last['explored_rmse_field']:.3e} "
          + " ".join(f"n_sk_hz{row['hz']:g}={row['skyrmion_number_per_cell']:.2f}" for row in rows))
    return summary


if __name__ == "__main__":
    main()
