"""Skyrmion crystals of the triangular Kondo lattice model by ML-LLG from random starts (paper Fig. 4).

The published triangular model (t1 = 1, t3 = -0.85, J = -1, mu = -3.5; DESIGN.md section 1)
orders in triple-Q states with |Q| = pi/3, a magnetic unit cell of 48 sites. Miyazaki (2023)
relaxed random spins with ML-LLG at T = 0 on 96 x 96 and found |n_sk| = 2 per magnetic cell
below Hz ~ 0.00325, 1 up to Hz ~ 0.0065 and 0 above. This script repeats the spot checks
Hz = 0.002, 0.005, 0.008 with a model as the force provider (the published ecnn4klm checkpoint,
or ``--model`` a klmgraph model or committee file): damped LLG (alpha = 1, T = 0, Heun) from
random spins, for every seed (``--seed 0 1``) and field, each run until the energy changes by
less than ``--converge`` per site over ``--window`` steps or for ``--steps`` steps at most. With
``--anneal T0`` a further run per field cools from T0 to 0 in ``--anneal-stages`` equal steps of
``--anneal-steps`` steps each (thermal LLG), then relaxes at T = 0 under the same stopping rule.

    PYTHONPATH=. python examples/triangular_skyrmions.py --quick      # 24 x 24, minutes on a CPU
    PYTHONPATH=. python examples/triangular_skyrmions.py --seed 0 1 --threads 1 --check none  # 96 x 96: hours

Every run folder (``<out>/seed<S>/hz=<Hz>``, ``<out>/anneal/hz=<Hz>/...``) resumes where it
stopped: run the same command again. Output: ``runs.csv`` (one row per run: |n_sk| per magnetic
cell, |M^z|, E/N, the phase it ended in, the step it stopped at and why, with a committee its
largest predicted field error, the final-state check; rows of runs that earlier invocations put
into the same ``--out``, e.g. another seed, are kept), ``fig4a.png`` (|n_sk| and |M^z| of every
run against Hz), ``spins_<run>.png`` (the final spins, arrows coloured by S^z, Fig. 4b-d) and
``example.json``. ``--phase-diagram`` names examples/triangular_phase_diagram.py's summary.json,
whose thermodynamic-limit ground state at each field the table sets beside each run.

Each final state is checked against an electronic solver: the model's field and E/N against ED
at Gamma on lattices up to 48 x 48 (``--k-grid N`` for the thermodynamic limit of the state) and
against KPM above, where ED of the field is out of reach (``--check``; KPM at its defaults took
16-31 minutes per 96 x 96 configuration on one shared core: docs/results.md). ``--check ed-energy`` is ED's energy
alone (eigenvalues, no field: 12 minutes per 96 x 96 state on one core, exact at Gamma, or
``--k-grid``, about N^2 times that): the number that decides which of two final states is lower. Each check is stored with its run
(``check.json``: per solver, the final step and energy it checked, field RMSE, E/N of both) and read
back when the table is made again, e.g. after another seed was added; a run that went on since is
checked anew.

Replicas (seeds) run one after another, not as one batch: on a CPU a batch of two 96 x 96 replicas
costs 1.14 times as much per replica-step as two single runs (benchmarks/replicas.py,
docs/results.md).

--quick runs 24 x 24 (12 magnetic cells), at most 2000 steps of dt = 5. Random starts on a small
lattice can freeze in metastable states. Results, with what the quick setting does and does not
reproduce: docs/results.md.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import time
from pathlib import Path

import torch

import klmgraph
from klmgraph.files import atomic_path
from klmgraph.sweep import scan
from klmgraph.timing import machine

# |n_sk| per magnetic unit cell that the paper's phase diagram gives at the spot checks
PAPER = {0.002: 2, 0.005: 1, 0.008: 0}
CELL_SITES = 48  # |Q| = pi/3 on the triangular lattice
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm" / "triangle_param.cpt"


def check_input_files(args) -> None:
    """Stop with a message naming the option when the model (--model, or the published
    --checkpoint) or --phase-diagram file is missing; shared with triangular_model_phase_diagram."""
    if args.model is None and not Path(args.checkpoint).is_file():
        raise SystemExit(f"no checkpoint at {args.checkpoint} (see DESIGN.md section 4)")
    if args.model is not None and not Path(args.model).is_file():
        raise SystemExit(f"--model: no file at {args.model}")
    if args.phase_diagram is not None and not Path(args.phase_diagram).is_file():
        raise SystemExit(f"--phase-diagram: no file at {args.phase_diagram}")


def load_provider_model(settings: dict, graph):
    """The published checkpoint, or a klmgraph model file (``--model``, e.g. trained by
    examples/triangular_training.py), checked against ``graph``."""
    if settings.get("model"):
        return klmgraph.load_model(settings["model"], graph=graph, map_location=settings["device"])
    return klmgraph.load_ecnn4klm(settings["checkpoint"], graph).to(settings["device"])


def converged(path: Path, num_sites: int, window: int, tol: float) -> tuple[int, float]:
    """The last stored step of a trajectory and |E(step) - E(step - window)| / N (inf before
    ``window`` steps, or without either record: a run killed between writing its last snapshot
    and that step's observables resumes from the snapshot and writes them then)."""
    traj = klmgraph.read_trajectory(path)
    step = int(traj.spins_step[-1]) if traj.spins_step is not None and len(traj.spins_step) else 0
    earlier, current = traj.step == step - window, traj.step == step
    if step < window or not earlier.any() or not current.any():
        return step, math.inf
    now = traj.energy[current][-1]
    return step, abs(float(now - traj.energy[earlier][-1])) / num_sites


def relax_run(llg, graph, spins, folder: Path, settings: dict, temperature_stage: bool = False):
    """simulate in segments of ``window`` steps until the stopping rule holds (resumable: a
    rerun reads where the folder's trajectory stands). Writes ``stop.json`` with the reason.

    A thermal stage (``temperature_stage``) runs exactly ``settings["anneal_steps"]`` steps.
    """
    window, tol, limit = settings["window"], settings["converge"], settings["steps"]
    if temperature_stage:
        window, tol, limit = settings["anneal_steps"], 0.0, settings["anneal_steps"]
    path = folder / "trajectory.h5"
    step, change = converged(path, graph.num_nodes, window, tol) if path.exists() else (0, math.inf)
    kwargs = dict(snapshot_every=settings["snapshot_every"], seed=settings["seed"], cell_sites=CELL_SITES,
                  metadata=settings["metadata"], progress=settings["progress"])
    result = None
    while step < limit and not change < tol:
        step = min(limit, (step // window + 1) * window)
        result = klmgraph.simulate(llg, graph, spins, step, folder, **kwargs)
        _, change = converged(path, graph.num_nodes, window, tol)
    if result is None:  # finished earlier: the stored final state's summary
        result = klmgraph.simulate(llg, graph, spins, step, folder, **kwargs)
    reason = (f"converged: |dE|/N = {change:.1e} over {window} steps" if change < tol
              else f"{'stage length' if temperature_stage else 'step limit'} {limit}")
    with atomic_path(folder / "stop.json") as tmp:
        tmp.write_text(json.dumps({"step": result.step, "reason": reason, "energy_change_per_site": change}))
    return result


def make_llg(settings: dict, graph, hz: float, temperature: float = 0.0):
    model = load_provider_model(settings, graph)
    return klmgraph.LLG(model.bind(graph), dt=settings["dt"], alpha=1.0, temperature=temperature,
                        field=(0.0, 0.0, hz), integrator="heun")


def run_one(settings: dict, hz: float, folder: Path) -> klmgraph.SimulationResult:
    """One damped ML-LLG run from random spins at field ``hz`` until it stops (module level:
    picklable for parallel fields)."""
    graph = klmgraph.triangular(*settings["size"], t1=1.0, t3=-0.85)
    spins = klmgraph.random_spins(graph, seed=settings["seed"], device=settings["device"])
    return relax_run(make_llg(settings, graph, hz), graph, spins, folder, settings)


def anneal_temperatures(t0: float, stages: int) -> list[float]:
    """T0, ..., T0 / stages: the thermal stages of an annealed run (T = 0 follows)."""
    return [t0 * (stages - k) / stages for k in range(stages)]


def run_annealed(settings: dict, hz: float, folder: Path) -> klmgraph.SimulationResult:
    """Random spins cooled through the thermal stages, then relaxed at T = 0 (each stage a run
    folder of its own, started from the previous one's final state)."""
    graph = klmgraph.triangular(*settings["size"], t1=1.0, t3=-0.85)
    spins = klmgraph.random_spins(graph, seed=settings["seed"], device=settings["device"])
    for k, t in enumerate(anneal_temperatures(settings["anneal"], settings["anneal_stages"])):
        stage = relax_run(make_llg(settings, graph, hz, t), graph, spins, folder / f"stage{k}_T{t:g}",
                          {**settings, "metadata": {**settings["metadata"], "initial": f"annealed stage {k}"}},
                          temperature_stage=True)
        spins = stage.spins.to(settings["device"])
    return relax_run(make_llg(settings, graph, hz), graph, spins, folder / "final",
                     {**settings, "metadata": {**settings["metadata"], "initial": "annealed"}})


class EnergyOnly:
    """ED's energy alone (``--check ed-energy``): eigenvalues without eigenvectors, so a 96 x 96
    state takes minutes where ED of the field takes hours; ``energy_and_field`` gives no field."""

    def __init__(self, ed: klmgraph.ExactDiagonalization):
        self.ed, self.solver = ed, f"{ed.solver}, energy only"

    def energy_and_field(self, spins: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.ed.energy(spins), None


def check_state(graph, model, spins: torch.Tensor, hz: float, solver) -> dict:
    """The model against ``solver`` (ED, ED's energy alone or KPM) on one final state: RMSE of B
    (None without the reference's field), E/N of both."""
    provider = model.double().bind(graph)
    s = spins.to(torch.float64)
    started = time.perf_counter()
    e_ref, b_ref = solver.energy_and_field(s)
    seconds = time.perf_counter() - started
    e_ml, b_ml = provider.energy_and_field(s)
    zeeman = -hz * float(s[:, 2].sum())  # the same spin-only term on both sides
    rmse = None if b_ref is None else float((b_ml - b_ref).pow(2).mean().sqrt())
    return {"solver": solver.solver, "rmse_field": rmse,
            "energy_per_site_model": (float(e_ml) + zeeman) / graph.num_nodes,
            "energy_per_site_reference": (float(e_ref) + zeeman) / graph.num_nodes, "solver_seconds": seconds}


def stored_check(folder: Path, final: dict, solver, compute) -> dict:
    """``compute()`` (a final-state check) stored in folder/check.json under its solver, with the
    final state it checked (``final``: step and total energy): a KPM check of a 96 x 96 state costs
    half an hour of CPU, and the table is made again whenever a run is added. A run that went on
    since (or was run again) is checked anew; another solver's check is kept beside it."""
    path = folder / "check.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    check = stored.get(solver.solver)
    if check is None or check["final"] != final:
        check = {**compute(), "final": final}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**stored, solver.solver: check}, indent=1))
    return check


def make_solver(kind: str, graph, args):
    """The reference solver of the final-state check: "ed" (Gamma, or --k-grid), "ed-energy" (its
    energy alone), "kpm", or "auto" (ED up to 48 x 48, KPM above); None for "none"."""
    if kind == "auto":
        kind = "ed" if graph.num_nodes <= 48 * 48 else "kpm"
    if kind == "none":
        return None
    if kind in ("ed", "ed-energy"):
        ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5,
                                           k_grid=(args.k_grid,) * 2 if args.k_grid > 1 else None)
        return ed if kind == "ed" else EnergyOnly(ed)
    return klmgraph.KPM(graph, J=-1.0, mu=-3.5, order=args.kpm_order, probe_distance=args.kpm_probe_distance)


PHASES = {2: "n_sk=2 crystal", 1: "n_sk=1 crystal", 0: "n_sk=0"}
COLUMNS = ("run", "seed", "hz", "skyrmion_number_per_cell", "abs_skyrmion_number_per_cell", "abs_mz",
           "energy_per_site", "phase", "thermodynamic_limit_phase", "step", "stopped", "paper_abs_n_sk",
           "predicted_rmse_field_max", "check_solver", "check_rmse_field", "check_energy_model_minus_reference",
           "wall_time", "folder")


TEXT_COLUMNS = ("run", "phase", "thermodynamic_limit_phase", "stopped", "check_solver", "folder")


def csv_value(column: str, text: str):
    """A runs.csv cell read back: text, None for an empty cell, or the number written."""
    if column in TEXT_COLUMNS:
        return text
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def merged_with_earlier_runs(path: Path, table: list[dict]) -> list[dict]:
    """This invocation's rows and, from an earlier ``runs.csv`` at ``path``, the rows of runs it did
    not touch (other seeds or fields run into the same ``--out`` before), so that runs.csv and
    fig4a.png show every run of the folder however the runs were split over invocations."""
    if not path.exists():
        return table
    mine = {(e["run"], float(e["hz"])) for e in table}
    with open(path, newline="") as f:
        earlier = [{k: csv_value(k, v) for k, v in row.items()}
                   for row in csv.DictReader(f) if (row["run"], float(row["hz"])) not in mine]
    return sorted(earlier + table, key=lambda e: (e["run"] == "anneal", e["seed"], e["hz"]))


def number(value) -> float:
    """A table value for printing (nan for a failed run's empty cell)."""
    return math.nan if value is None else float(value)


def phase_of(n_sk_per_cell: float | None) -> str:
    """The phase a run ended in, by its |n_sk| per magnetic cell (an off-integer value: a mixed state)."""
    if n_sk_per_cell is None or not math.isfinite(n_sk_per_cell):
        return "failed"
    k = round(abs(n_sk_per_cell))
    if abs(abs(n_sk_per_cell) - k) > 0.1:
        return f"mixed (|n_sk| = {abs(n_sk_per_cell):.2f})"
    return PHASES.get(k, f"n_sk={k}")


def thermodynamic_limit(path: str | None) -> dict:
    """{Hz: phase} of the lowest state at each field of a triangular_phase_diagram summary.json."""
    if path is None:
        return {}
    ground = json.loads(Path(path).read_text())["ground_states"]
    return {g["hz"]: phase_of(g["n_sk_per_cell"]) for g in ground}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 x 24, at most 2000 steps (CPU minutes)")
    parser.add_argument("--size", type=int, default=None, help="L of the L x L lattice (default 96, --quick 24)")
    parser.add_argument("--steps", type=int, default=None, help="LLG steps at most (default 10000, --quick 2000)")
    parser.add_argument("--converge", type=float, default=1e-7,
                        help="stop when E/N changes by less than this over --window steps (default 1e-7; 0: never)")
    parser.add_argument("--window", type=int, default=100, help="steps of the stopping rule (default 100)")
    parser.add_argument("--dt", type=float, default=5.0, help="time step (default 5)")
    parser.add_argument("--hz", type=float, nargs="+", default=sorted(PAPER), help="fields (default 0.002 0.005 0.008)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0, 1], help="seeds of the random starts (default 0 1)")
    parser.add_argument("--anneal", type=float, default=None, metavar="T0",
                        help="also one annealed run per field (seed: the first), cooled from T0 to 0")
    parser.add_argument("--anneal-stages", type=int, default=5, help="thermal stages of --anneal (default 5)")
    parser.add_argument("--anneal-steps", type=int, default=500, help="steps per thermal stage (default 500)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="triangle_param.cpt")
    parser.add_argument("--model", default=None,
                        help="a klmgraph model or committee file instead of the checkpoint (a committee's "
                             "predicted error goes into the table)")
    parser.add_argument("--phase-diagram", default=None, metavar="SUMMARY",
                        help="examples/triangular_phase_diagram.py's summary.json: its ground states beside the runs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="fields run in parallel processes (CPU, one thread each)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads with --jobs 1 (default torch's; 1 is faster on a busy machine)")
    parser.add_argument("--out", default=None, help="output folder (default triangular-skyrmions-L)")
    parser.add_argument("--check", choices=("auto", "ed", "ed-energy", "kpm", "none"), default="auto",
                        help="solver of the final-state check (default auto: ED up to 48 x 48, KPM above; "
                             "ed-energy: ED's energy alone, minutes at 96 x 96 at Gamma, "
                             "about N^2 times that on an N x N --k-grid)")
    parser.add_argument("--k-grid", type=int, default=1, metavar="N", help="ED check on an N x N k-grid (default 1: Gamma)")
    parser.add_argument("--kpm-order", type=int, default=512, help="KPM check: Chebyshev moments (default 512)")
    parser.add_argument("--kpm-probe-distance", type=int, default=12, help="KPM check: probe distance (default 12)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or (24 if args.quick else 96)
    steps = args.steps or (2000 if args.quick else 10000)
    if size % 12:
        raise SystemExit(f"L = {size}: the 48-site magnetic cell needs L divisible by 12")
    for name, value in (("--window", args.window), ("--anneal-stages", args.anneal_stages),
                        ("--anneal-steps", args.anneal_steps), ("--steps", steps)):
        if value < 1:
            raise SystemExit(f"{name} must be positive, got {value}")
    if args.converge < 0 or (args.anneal is not None and args.anneal <= 0):
        raise SystemExit("--converge must be >= 0 and --anneal T0 > 0")
    check_input_files(args)
    out = Path(args.out or f"triangular-skyrmions-{size}")
    model_name = Path(args.model or args.checkpoint).name
    base = {"size": [size, size], "checkpoint": str(args.checkpoint), "model": args.model,
            "device": args.device, "dt": args.dt, "steps": steps, "window": args.window, "converge": args.converge,
            "anneal": args.anneal, "anneal_stages": args.anneal_stages, "anneal_steps": args.anneal_steps,
            "snapshot_every": 50, "progress": args.jobs == 1 and not args.quiet,
            "metadata": {"model": model_name, "initial": "random", "size": [size, size]}}
    title = f"triangular {size}x{size}, ECNN ({'own model' if args.model else 'ecnn4klm'}), T = 0, alpha = 1"
    started = time.perf_counter()
    runs = []  # (name, seed, scan rows)
    for seed in args.seed:
        rows = scan(functools.partial(run_one, {**base, "seed": seed}), args.hz, out / f"seed{seed}",
                    parameter="hz", jobs=args.jobs, title=f"{title}, seed {seed}")
        runs += [(f"seed{seed}", seed, row) for row in rows]
    if args.anneal is not None:
        rows = scan(functools.partial(run_annealed, {**base, "seed": args.seed[0]}), args.hz, out / "anneal",
                    parameter="hz", jobs=args.jobs, title=f"{title}, annealed from T = {args.anneal:g}")
        runs += [("anneal", args.seed[0], row) for row in rows]
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
    limit = thermodynamic_limit(args.phase_diagram)
    print(f"\ntriangular {size}x{size}, Heun dt = {args.dt}, until |dE|/N < {args.converge:g} over {args.window} "
          f"steps or {steps} steps; model {model_name}; {where}; {date}")
    solver = make_solver(args.check, graph, args)
    model = load_provider_model({**base, "device": "cpu"}, graph) if solver is not None else None
    table = []
    for name, seed, row in runs:
        folder = Path(row["folder"]) / ("final" if name == "anneal" else "")
        entry = {"run": name, "seed": seed, "hz": row["hz"], "folder": str(folder),
                 "paper_abs_n_sk": PAPER.get(row["hz"], ""), "thermodynamic_limit_phase": limit.get(row["hz"], ""),
                 **{k: row.get(k) for k in ("skyrmion_number_per_cell", "abs_skyrmion_number_per_cell", "abs_mz",
                                            "energy_per_site", "step", "predicted_rmse_field_max", "wall_time")}}
        entry["phase"] = phase_of(row.get("skyrmion_number_per_cell"))
        stop = folder / "stop.json"
        entry["stopped"] = json.loads(stop.read_text())["reason"] if stop.exists() else row.get("status", "")
        if entry["phase"] != "failed":
            trajectory = klmgraph.read_trajectory(folder / "trajectory.h5")
            spins = torch.as_tensor(trajectory.spins[-1])
            if solver is not None:
                final = {"step": int(trajectory.step[-1]), "energy": float(trajectory.energy[-1])}
                check = stored_check(folder, final, solver, lambda: check_state(graph, model, spins, row["hz"], solver))
                entry.update(check_solver=check["solver"], check_rmse_field=check["rmse_field"],
                             check_energy_model_minus_reference=check["energy_per_site_model"]
                             - check["energy_per_site_reference"])
            ax = plot_spins(graph, spins, arrows=size <= 48,
                            title=f"{name}, $H_z$ = {row['hz']:g}: $n_\\mathrm{{sk}}$ per cell = "
                                  f"{row['skyrmion_number_per_cell']:.2f}, $|M^z|$ = {row['abs_mz']:.3f}")
            ax.figure.tight_layout()
            ax.figure.savefig(out / f"spins_{name}_hz{row['hz']:g}.png", dpi=130)
            plt.close(ax.figure)
        table.append(entry)
        print(f"{name:7s} Hz = {row['hz']:<6g} n_sk/cell = {number(entry['skyrmion_number_per_cell']):+.2f}  "
              f"|Mz| = {number(entry['abs_mz']):.4f}  E/N = {number(entry['energy_per_site']):.7f}  "
              f"{entry['phase']:15s} (paper |n_sk| {entry['paper_abs_n_sk']}"
              + (f", thermodynamic limit {entry['thermodynamic_limit_phase']}" if limit else "") + f"); step "
              f"{entry['step']}, {entry['stopped']}"
              + (f"; committee max predicted RMSE(B) {entry['predicted_rmse_field_max']:.1e}"
                 if entry.get("predicted_rmse_field_max") is not None else "")
              + (f"; {entry['check_solver']}: " + ("" if entry["check_rmse_field"] is None else
                                                    f"RMSE(B) {entry['check_rmse_field']:.1e}, ")
                 + f"E/N model - reference {entry['check_energy_model_minus_reference']:+.1e}"
                 if entry.get("check_solver") else ""))
    every_run = merged_with_earlier_runs(out / "runs.csv", table)
    with atomic_path(out / "runs.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for entry in every_run:
            writer.writerow({k: "" if entry.get(k) is None else entry[k] for k in COLUMNS})
    plot_fig4a(every_run, out / "fig4a.png", f"{title}; {date}")
    print(f"total wall time {wall:.0f} s; table {out / 'runs.csv'}, figures {out / 'fig4a.png'}, {out}/spins_*.png")
    with atomic_path(out / "example.json") as tmp:
        tmp.write_text(json.dumps({"size": size, "max_steps": steps, "converge": args.converge, "window": args.window,
                                   "dt": args.dt, "seeds": args.seed, "anneal": args.anneal, "model": model_name,
                                   "machine": where, "date": date, "wall_time": wall, "rows": every_run},
                                  indent=1, default=str) + "\n")
    print(" ".join(f"n_sk_{e['run']}_hz{e['hz']:g}={number(e['skyrmion_number_per_cell']):.2f}" for e in table))
    return table


def plot_fig4a(table: list[dict], path: Path, title: str) -> None:
    """|n_sk| per magnetic cell and |M^z| of every run against Hz, the paper's values beside them."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    names = sorted({e["run"] for e in table})
    for k, name in enumerate(names):
        mine = [e for e in table if e["run"] == name and e["phase"] != "failed"]
        x = [e["hz"] + (k - (len(names) - 1) / 2) * 8e-5 for e in mine]  # side by side
        a1.plot(x, [e["abs_skyrmion_number_per_cell"] for e in mine], "os^vD"[k % 5], color=f"C{k}", label=name)
        a2.plot(x, [e["abs_mz"] for e in mine], "os^vD"[k % 5], color=f"C{k}", label=name)
    a1.plot(sorted(PAPER), [PAPER[h] for h in sorted(PAPER)], "k_", ms=20, mew=2, label="paper (96x96)")
    a1.set_ylabel("|n_sk| per magnetic cell")
    a2.set_ylabel("$|M^z|$ per site")
    a2.set_xlabel("$H_z$")
    a1.legend(fontsize=7)
    a1.set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
