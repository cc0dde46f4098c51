"""How fast k-grid ED reaches the thermodynamic limit, for the two models of the paper.

Gamma-point ED of an L x L lattice has a finite-size error; k-grid ED of the same configuration
(``ExactDiagonalization(graph, ..., k_grid=(n, n))``) is ED of the configuration tiled n x n
times, i.e. the supercell of an infinite lattice, and converges to the thermodynamic limit of
that periodic state as n grows. This script measures, for each model, supercell and state, the
energy per site and the field on grids n x n = 1 (Gamma), 2, 3, 4, 6, 8, ... against the largest
grid, and names the smallest grid from which every larger one agrees to 1e-6 per site in energy.

Models (DESIGN.md section 1):

* triangular: t1 = 1, t3 = -0.85, J = -1, mu = -3.5, grand canonical (the skyrmion-crystal model:
  a metal with a small Fermi surface, where finite-size errors are large);
* square: t1 = 1, J = 7, filling 0.48, canonical (electrons counted over all twists together).

States: a random configuration (what training data are made of) and an ordered one (the
triple-Q skyrmion-crystal ansatz, |Q| = pi/3, m_z = 0.3, on the triangular lattice; a
ferromagnet tilted off z on the square lattice).

    python examples/k_grid_convergence.py --quick   # 12 x 12 supercells, grids up to 6 x 6: ~30 s
    python examples/k_grid_convergence.py           # 12 x 12 up to 24 x 24 grids, 24 x 24 up to 12 x 12: ~1 h, 1 core

Output in --out: convergence.csv (one row per model, supercell, state, grid: the realised
filling of the canonical model (N_e = round(2 N n n1 n2) is an integer over all twists), E/N, the
difference to the reference grid, the field RMSE and max deviation against it, seconds),
convergence.png, results.json. The CSV is written row by row, so an interrupted run continues
where it stopped. The last line printed is

    k_grid: converged_1e-6=<model/size/state: n, ...>
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import klmgraph
import klmgraph.timing

MODELS = {
    "triangular": (lambda L: klmgraph.triangular(L, L, t1=1.0, t3=-0.85), {"J": -1.0, "mu": -3.5}),
    "square": (lambda L: klmgraph.square(L, L, t1=1.0), {"J": 7.0, "filling": 0.48}),
}
COLUMNS = ["model", "size", "state", "grid", "filling", "energy_per_site", "delta_energy_per_site",
           "field_rmse", "field_max", "seconds"]


def ordered_state(model: str, graph) -> torch.Tensor:
    if model == "triangular":
        return klmgraph.skyrmion_crystal(graph, q=math.pi / 3, m_z=0.3)
    return klmgraph.ferromagnet(graph, direction=(0.3, 0.2, 1.0))


def settings(quick: bool) -> list[tuple[str, int, list[int]]]:
    """(model, supercell L, grids n) to run; the last grid is the reference."""
    small = [1, 2, 3, 4, 6] if quick else [1, 2, 3, 4, 6, 8, 12, 16, 24]
    runs = [("triangular", 12, small), ("square", 12, small)]
    if not quick:
        runs += [("triangular", 24, [1, 2, 3, 4, 6, 8, 12]), ("square", 24, [1, 2, 3, 4, 6, 8])]
    return runs


def read_rows(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path) as f:
        return {(r["model"], int(r["size"]), r["state"], int(r["grid"])): r for r in csv.DictReader(f)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 x 12 supercells only")
    parser.add_argument("--out", default="k-grid-convergence", help="output folder")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random configurations")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "convergence.csv"
    done = read_rows(table)
    machine = klmgraph.timing.machine()
    print(f"machine: {machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']}, {machine['date']}")

    from tqdm.auto import tqdm

    results = {"machine": machine, "converged_1e-6": {}, "gamma_error": {}}
    work = [(m, L, s, n) for m, L, grids in settings(args.quick) for s in ("random", "ordered") for n in grids]
    bar = tqdm(total=len(work), initial=sum(k in done for k in work), desc="k-grids", unit="grid")
    for model, L, grids in settings(args.quick):
        build, hamiltonian = MODELS[model]
        graph = build(L)
        states = {"random": klmgraph.random_spins(graph, seed=args.seed), "ordered": ordered_state(model, graph)}
        for state, spins in states.items():
            if all((model, L, state, n) in done for n in grids):
                continue
            # the reference (largest) grid first, kept beside the table so a rerun need not redo it
            ref_file = out / f"reference_{model}{L}_{state}_{grids[-1]}x{grids[-1]}.npz"
            if ref_file.is_file():
                ref = np.load(ref_file)
                e_ref, b_ref = float(ref["energy_per_site"]), torch.from_numpy(ref["field"])
                ref_seconds = float(ref["seconds"]) if "seconds" in ref else float("nan")
            else:
                start = time.perf_counter()
                e, b_ref = klmgraph.ExactDiagonalization(graph, k_grid=(grids[-1],) * 2, **hamiltonian).energy_and_field(spins)
                ref_seconds = time.perf_counter() - start
                e_ref = float(e) / graph.num_nodes
                np.savez(ref_file, energy_per_site=e_ref, field=b_ref.numpy(), seconds=ref_seconds)
            for n in grids:
                key = (model, L, state, n)
                if key in done:
                    continue
                ed = klmgraph.ExactDiagonalization(graph, k_grid=(n, n), **hamiltonian)
                if n == grids[-1]:  # the reference itself
                    e, field, seconds = e_ref, b_ref, ref_seconds
                else:
                    start = time.perf_counter()
                    energy, field = ed.energy_and_field(spins)
                    seconds = time.perf_counter() - start
                    e = float(energy) / graph.num_nodes
                # canonical: the electrons are an integer over all twists, so the realised filling
                # moves with the grid (round(2 N n K) / 2 N K), and with it the energy by ~mu dn
                filling = "" if ed.num_electrons is None else repr(ed.num_electrons / (2 * graph.num_nodes * n * n))
                row = {"model": model, "size": L, "state": state, "grid": n, "filling": filling, "energy_per_site": repr(e),
                       "delta_energy_per_site": repr(e - e_ref),
                       "field_rmse": repr(float((field - b_ref).pow(2).sum(-1).mean().sqrt())),
                       "field_max": repr(float((field - b_ref).abs().max())),
                       "seconds": "" if math.isnan(seconds) else f"{seconds:.3f}"}
                new = not table.is_file()
                with open(table, "a", newline="") as f:
                    writer = csv.DictWriter(f, COLUMNS)
                    if new:
                        writer.writeheader()
                    writer.writerow(row)
                done[key] = row
                bar.update()
    bar.close()

    rows = sorted(done.values(), key=lambda r: (r["model"], int(r["size"]), r["state"], int(r["grid"])))
    print(f"{'model':>10} {'L':>3} {'state':>8} {'grid':>5} {'E/N':>14} {'dE/N vs ref':>12} {'RMSE(B)':>10} {'s':>8}")
    for r in rows:
        print(f"{r['model']:>10} {r['size']:>3} {r['state']:>8} {r['grid']:>3}x{r['grid']:<2}"
              f"{float(r['energy_per_site']):14.8f} {float(r['delta_energy_per_site']):12.2e} "
              f"{float(r['field_rmse']):10.2e} {r['seconds']:>8}")
    groups = {}
    for r in rows:
        groups.setdefault(f"{r['model']}/{r['size']}/{r['state']}", []).append(r)
    for name, group in groups.items():
        grids = [int(r["grid"]) for r in group]
        deltas = [abs(float(r["delta_energy_per_site"])) for r in group]
        # the smallest grid from which every larger one (up to the reference) agrees to 1e-6
        converged = next((grids[i] for i in range(len(grids) - 1) if max(deltas[i:-1]) < 1e-6), None)
        results["converged_1e-6"][name] = converged if converged is not None else f"> {grids[-2]} (reference {grids[-1]})"
        results["gamma_error"][name] = {"delta_energy_per_site": float(group[0]["delta_energy_per_site"]),
                                        "field_rmse": float(group[0]["field_rmse"])}
    results["reference"] = "the largest grid of each block (ED with that k-grid)"
    (out / "results.json").write_text(json.dumps(results, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    from klmgraph.plot import plot_k_grid_convergence

    plot_k_grid_convergence(groups, out / "convergence.png")
    summary = ", ".join(f"{k}: {v}" for k, v in results["converged_1e-6"].items())
    print(f"table {table}, plot {out / 'convergence.png'}")
    print(f"k_grid: converged_1e-6={summary}")
    return results


if __name__ == "__main__":
    main()
