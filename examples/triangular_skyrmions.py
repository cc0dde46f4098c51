"""Skyrmion crystals of the triangular Kondo lattice model with the imported ECNN (paper Fig. 4).

The published triangular model (t1 = 1, t3 = -0.85, J = -1, mu = -3.5; DESIGN.md section 1)
orders in triple-Q states with |Q| = pi/3, a magnetic unit cell of 48 sites. Miyazaki (2023)
relaxed random spins with ML-LLG at T = 0 on 96 x 96 and found |n_sk| = 2 per magnetic cell
below Hz ~ 0.00325, 1 up to Hz ~ 0.0065 and 0 above. This script repeats the three spot checks
Hz = 0.002, 0.005, 0.008 with the published ecnn4klm checkpoint as the force provider: damped
LLG (alpha = 1, T = 0, Heun) from random spins, one run folder per field (resumable), then a
table of |n_sk| per magnetic cell and |M^z| against the paper's values, the final spins of each
run (arrows coloured by S^z, Fig. 4b-d) and the |n_sk|, |M^z| against Hz plot (Fig. 4a).

    PYTHONPATH=. python examples/triangular_skyrmions.py --quick      # 24 x 24, minutes on a CPU
    PYTHONPATH=. python examples/triangular_skyrmions.py --device cuda  # 96 x 96, the paper's size

Each final state is then checked against an electronic solver: the model's field and E/N
against ED at Gamma on lattices up to 48 x 48 (``--k-grid N`` for the thermodynamic limit of
the state) and against KPM above, where ED is out of reach (``--check``; KPM at its defaults
costs about an hour per 96 x 96 configuration on one CPU core: docs/electrons.md).

--quick runs 24 x 24 (12 magnetic cells) for 400 steps of dt = 5. Random starts on a small
lattice can freeze in metastable states; --seed picks another start. Results, with what the
quick setting does and does not reproduce: docs/results.md.
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

import klmgraph
from klmgraph.sweep import scan
from klmgraph.timing import machine

# |n_sk| per magnetic unit cell that the paper's phase diagram gives at the spot checks
PAPER = {0.002: 2, 0.005: 1, 0.008: 0}
CELL_SITES = 48  # |Q| = pi/3 on the triangular lattice
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm" / "triangle_param.cpt"


def load_provider_model(settings: dict, graph):
    """The published checkpoint, or a klmgraph model file (``--model``, e.g. trained by
    examples/triangular_training.py), checked against ``graph``."""
    if settings.get("model"):
        return klmgraph.load_model(settings["model"], graph=graph, map_location=settings["device"])
    return klmgraph.load_ecnn4klm(settings["checkpoint"], graph).to(settings["device"])


def run_one(settings: dict, hz: float, folder: Path) -> klmgraph.SimulationResult:
    """One damped ML-LLG run from random spins at field ``hz`` (module level: picklable)."""
    graph = klmgraph.triangular(*settings["size"], t1=1.0, t3=-0.85)
    model = load_provider_model(settings, graph)
    llg = klmgraph.LLG(model.bind(graph), dt=settings["dt"], alpha=1.0, temperature=0.0,
                       field=(0.0, 0.0, hz), integrator="heun")
    spins = klmgraph.random_spins(graph, seed=settings["seed"], device=settings["device"])
    return klmgraph.simulate(llg, graph, spins, settings["steps"], folder,
                             snapshot_every=settings["snapshot_every"], seed=settings["seed"],
                             cell_sites=CELL_SITES, metadata={"model": Path(settings["model"] or settings["checkpoint"]).name,
                                                              "initial": "random", "size": settings["size"]},
                             progress=settings["progress"])


def check_state(graph, model, spins: torch.Tensor, hz: float, solver) -> dict:
    """The model against ``solver`` (ED or KPM) on one final state: RMSE of B, E/N of both."""
    provider = model.double().bind(graph)
    s = spins.to(torch.float64)
    started = time.perf_counter()
    e_ref, b_ref = solver.energy_and_field(s)
    seconds = time.perf_counter() - started
    e_ml, b_ml = provider.energy_and_field(s)
    zeeman = -hz * float(s[:, 2].sum())  # the same spin-only term on both sides
    return {"solver": solver.solver, "rmse_field": float((b_ml - b_ref).pow(2).mean().sqrt()),
            "energy_per_site_model": (float(e_ml) + zeeman) / graph.num_nodes,
            "energy_per_site_reference": (float(e_ref) + zeeman) / graph.num_nodes, "solver_seconds": seconds}


def make_solver(kind: str, graph, args):
    """The reference solver of the final-state check: "ed" (Gamma, or --k-grid), "kpm", or
    "auto" (ED up to 48 x 48, KPM above); None for "none"."""
    if kind == "auto":
        kind = "ed" if graph.num_nodes <= 48 * 48 else "kpm"
    if kind == "none":
        return None
    if kind == "ed":
        return klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5,
                                             k_grid=(args.k_grid,) * 2 if args.k_grid > 1 else None)
    return klmgraph.KPM(graph, J=-1.0, mu=-3.5, order=args.kpm_order, probe_distance=args.kpm_probe_distance)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 x 24, 400 steps (a few CPU minutes)")
    parser.add_argument("--size", type=int, default=None, help="L of the L x L lattice (default 96, --quick 24)")
    parser.add_argument("--steps", type=int, default=None, help="LLG steps (default 2000, --quick 400)")
    parser.add_argument("--dt", type=float, default=5.0, help="time step (default 5)")
    parser.add_argument("--hz", type=float, nargs="+", default=sorted(PAPER), help="fields (default 0.002 0.005 0.008)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initial spins (default 0)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="triangle_param.cpt")
    parser.add_argument("--model", default=None,
                        help="a klmgraph model file to use instead of the checkpoint (examples/triangular_training.py)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="fields run in parallel processes (CPU, one thread each)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads with --jobs 1 (default torch's; 1 is faster on a busy machine)")
    parser.add_argument("--out", default=None, help="output folder (default triangular-skyrmions-L)")
    parser.add_argument("--check", choices=("auto", "ed", "kpm", "none"), default="auto",
                        help="solver of the final-state check (default auto: ED up to 48 x 48, KPM above)")
    parser.add_argument("--k-grid", type=int, default=1, metavar="N", help="ED check on an N x N k-grid (default 1: Gamma)")
    parser.add_argument("--kpm-order", type=int, default=512, help="KPM check: Chebyshev moments (default 512)")
    parser.add_argument("--kpm-probe-distance", type=int, default=12, help="KPM check: probe distance (default 12)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (24 if args.quick else 96)
    steps = args.steps or (400 if args.quick else 2000)
    if size % 12:
        raise SystemExit(f"L = {size}: the 48-site magnetic cell needs L divisible by 12")
    if args.model is None and not Path(args.checkpoint).is_file():
        raise SystemExit(f"no checkpoint at {args.checkpoint} (see DESIGN.md section 4)")
    if args.model is not None and not Path(args.model).is_file():
        raise SystemExit(f"no model file at {args.model}")
    out = Path(args.out or f"triangular-skyrmions-{size}")
    settings = {"size": [size, size], "checkpoint": str(args.checkpoint), "model": args.model,
                "device": args.device, "dt": args.dt,
                "steps": steps, "snapshot_every": 50, "seed": args.seed, "progress": args.jobs == 1 and not args.quiet}
    started = time.perf_counter()
    rows = scan(functools.partial(run_one, settings), args.hz, out, parameter="hz", jobs=args.jobs,
                title=f"triangular {size}x{size}, ECNN ({'own model' if args.model else 'ecnn4klm'}), T = 0, alpha = 1")
    wall = time.perf_counter() - started

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from klmgraph.plot import plot_spins

    graph = klmgraph.triangular(size, size, t1=1.0, t3=-0.85)
    threads = f"{args.jobs} processes x 1 torch thread" if args.jobs > 1 else f"{torch.get_num_threads()} torch threads"
    info = machine(args.device)
    where = f"{info.get('gpu') or info['cpu']}, {info['cores']} CPUs, {threads}, {args.device}"
    date = info["date"]
    print(f"\ntriangular {size}x{size}, {steps} Heun steps of dt = {args.dt}, seed {args.seed}; {where}; {date}")
    solver = make_solver(args.check, graph, args)
    model = load_provider_model({**settings, "device": "cpu"}, graph) if solver is not None else None
    print(f"{'Hz':>7} {'n_sk/cell':>10} {'paper |n_sk|':>12} {'|Mz|':>7} {'E/N':>10} {'wall s':>7}"
          + (f"  check against {solver.solver}: RMSE(B), E/N model - reference" if solver is not None else ""))
    for row in rows:
        paper = PAPER.get(row["hz"], "")
        spins = klmgraph.read_trajectory(Path(row["folder"]) / "trajectory.h5").spins[-1]
        if solver is not None:
            row["check"] = check_state(graph, model, torch.as_tensor(spins), row["hz"], solver)
        check = (f"  {row['check']['rmse_field']:.2e}, {row['check']['energy_per_site_model'] - row['check']['energy_per_site_reference']:+.2e}"
                 if solver is not None else "")
        print(f"{row['hz']:7.4f} {row['skyrmion_number_per_cell']:10.3f} {paper!s:>12} {row['abs_mz']:7.4f} "
              f"{row['energy_per_site']:10.6f} {row['wall_time']:7.1f}" + check)
        ax = plot_spins(graph, torch.as_tensor(spins), arrows=size <= 48,
                        title=f"$H_z$ = {row['hz']:g}: $n_\\mathrm{{sk}}$ per cell = {row['skyrmion_number_per_cell']:.2f}")
        ax.figure.tight_layout()
        ax.figure.savefig(out / f"spins_hz{row['hz']:g}.png", dpi=130)
        plt.close(ax.figure)
    summary = " ".join(f"n_sk_hz{row['hz']:g}={row['skyrmion_number_per_cell']:.2f}" for row in rows)
    print(f"total wall time {wall:.0f} s; table {out / 'scan.csv'}, figures {out}/spins_hz*.png, {out / 'scan.png'}")
    (out / "example.json").write_text(json.dumps({"size": size, "steps": steps, "dt": args.dt, "seed": args.seed,
                                                  "machine": where, "date": date, "wall_time": wall,
                                                  "rows": rows}, indent=1) + "\n")
    print(summary)
    return rows


if __name__ == "__main__":
    main()
