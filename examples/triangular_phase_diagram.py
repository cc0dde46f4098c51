"""The triangular Kondo lattice model's own phase diagram in field: k-grid ED, no model.

DESIGN.md section 1's triangular model (t1 = 1, t3 = -0.85, J = -1, mu = -3.5, grand canonical,
T = 0) with a Zeeman term -Hz sum S^z. Candidate states, each a periodic state of the 48-site
magnetic unit cell (ordering vectors |Q| = pi/3):

* ``sk2``: the n_sk = 2 triple-Q skyrmion crystal (:func:`klmgraph.double_skyrmion_crystal`);
* ``sk1``: the n_sk = 1 skyrmion crystal (:func:`klmgraph.skyrmion_crystal`);
* ``tq0``: a topologically trivial (n_sk = 0) triple-Q state (the n_sk = 2 ansatz with a large
  offset m_z = 1.2, which unwinds its skyrmions);
* ``1q``: a single-Q conical state (xy spiral along Q_1 canted towards z);
* ``fm``: the ferromagnet along z.

Each is relaxed at every field by damped LLG (alpha = 1, Heun, dt halved whenever the energy
rises, stopped when the energy falls by less than ``--tol`` per site and step) with k-grid ED
forces, and followed up in field from the lowest field and down from the highest (each field
starts from the state relaxed at the previous one). The supercell is the 48-site magnetic cell
itself (``BravaisLattice.supercell([[8, 4], [4, 8]])``: a third of the 12 x 12 lattice, whose
k-grid ED is the thermodynamic limit of the periodic state at a ninth of the 12 x 12 cost), so a
k-grid n x n stands for a tiled lattice of 48 n^2 sites. Energies per site (E_el / N - Hz M^z)
of the relaxed states are then computed on two finer grids; the difference between them is the
grid-convergence error that every reported number carries. Boundaries: the fields where the
lowest state of one |n_sk| class crosses the lowest of the next (linear interpolation between
neighbouring fields), with the uncertainty that the grid error gives through the slope.

    python examples/triangular_phase_diagram.py --quick --workers 2  # 4 fields, grids 16 / 28, 32 (<= 15 min, 2 cores)
    nice -n 10 python examples/triangular_phase_diagram.py           # 19 fields, grids 28 / 32, 64: hours, resumable

Every (branch, field) is a JSON record under ``--out``/records, written atomically; running the
same command again skips what is done. Writes ``phase_diagram.csv``, ``energies.png`` (E(Hz) of
every branch minus the lowest), ``phase_diagram.png`` (|n_sk| and M^z of the lowest state) and
``summary.json``, and ends with the line ``hz_2_1=<value> hz_1_0=<value>`` (nan where no
crossing lies inside the field range).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import klmgraph
from klmgraph.files import atomic_path

PAPER = {"hz_2_1": 0.00325, "hz_1_0": 0.0065}  # Miyazaki 2023, ML-LLG at T = 0 on 96 x 96
MAGNETIC_CELL = ((8, 4), (4, 8))  # A1 = 8 a1 + 4 a2, A2 = 4 a1 + 8 a2: 48 sites
HAMILTONIAN = {"t1": 1.0, "t3": -0.85, "J": -1.0, "mu": -3.5}
STATES = ("sk2", "sk1", "tq0", "1q", "fm")


@dataclass(frozen=True)
class Settings:
    """Everything a record depends on (a run folder refuses other settings)."""

    fields: tuple
    relax_grid: int
    energy_grids: tuple
    dt: float
    tol: float
    max_steps: int
    chunk: int
    states: tuple


# k-grids are n x n on the 48-site cell (48 n^2 sites tiled), never multiples of 3 (their twists
# hit the K points, where levels of the triple-Q states cross mu: docs/electrons.md). Energies
# of relaxed states scatter by ~3e-5 per site between grids 16 and 20 and ~5e-6 between 28 and
# 32 (measured on the ansatz states), and a state relaxed on a coarse grid sits off the
# fine grid's minimum, so the relaxation grid is not much coarser than the energy grids.
QUICK = Settings(fields=(0.002, 0.004, 0.006, 0.008), relax_grid=16, energy_grids=(28, 32), dt=30.0,
                 tol=1e-9, max_steps=150, chunk=5, states=STATES)
FULL = Settings(fields=tuple(round(0.0005 * k, 4) for k in range(2, 21)), relax_grid=28, energy_grids=(32, 64),
                dt=30.0, tol=1e-10, max_steps=400, chunk=5, states=STATES)


def cell_graph():
    """The 48-site magnetic cell as a periodic lattice of its own (k-grid ED needs no more)."""
    lattice = klmgraph.triangular_lattice(HAMILTONIAN["t1"], 0.0, HAMILTONIAN["t3"])
    return lattice.supercell(MAGNETIC_CELL, name="triangular magnetic cell").graph((1, 1), symmetries=False)


def to_lattice(cell, graph) -> torch.Tensor:
    """Index map (N,) from the sites of a lattice ``graph`` (L1, L2 multiples of 12) to the cell's."""
    a = cell.cell[:2, :2].double()  # (2, 2) cell vectors
    d = graph.pos[:, None, :2].double() - cell.pos[None, :, :2].double()  # (N, 48, 2)
    frac = d @ torch.linalg.inv(a)
    hit = ((frac - frac.round()).abs() < 1e-6).all(-1)  # (N, 48): exactly one per site
    if not bool((hit.sum(-1) == 1).all()):
        raise ValueError(f"{graph.describe()} is not a whole number of magnetic cells (L1, L2 multiples of 12)")
    return hit.to(torch.int64).argmax(-1)


def ansatz(name: str, graph) -> torch.Tensor:
    """The starting configuration of a candidate state on ``graph``: (N, 3)."""
    q = klmgraph.triple_q_vectors(math.pi / 3)
    if name == "sk2":
        return klmgraph.double_skyrmion_crystal(graph, m_z=0.3)
    if name == "sk1":
        return klmgraph.skyrmion_crystal(graph, m_z=0.3)
    if name == "tq0":
        return klmgraph.double_skyrmion_crystal(graph, m_z=1.2)
    if name == "1q":
        return klmgraph.multi_q(graph, [q[0]], planes=[((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))], uniform=(0.0, 0.0, 0.3))
    if name == "fm":
        return klmgraph.ferromagnet(graph)
    raise ValueError(f"unknown state {name!r}; known: {list(STATES)}")


def solver(graph, grid: int):
    return klmgraph.ExactDiagonalization(graph, J=HAMILTONIAN["J"], mu=HAMILTONIAN["mu"], k_grid=(grid, grid))


def relax(provider, spins: torch.Tensor, hz: float, s: Settings) -> dict:
    """Damped LLG until the energy per site falls by less than s.tol per step (or s.max_steps).

    The step starts at s.dt and is halved whenever a chunk of steps raises the energy (that chunk
    is discarded): the largest stable step without a stability analysis.
    """
    n = spins.shape[0]
    dt, steps = s.dt, 0
    llg = klmgraph.LLG(provider, dt=dt, alpha=1.0, field=(0.0, 0.0, hz))
    energy = float(llg.energy_and_field(spins)[0]) / n
    start = energy
    while steps < s.max_steps:
        try:
            run = llg.run(spins, s.chunk)
            new = float(run.energies[-1]) / n
        except klmgraph.DivergenceError:
            new = math.inf
        if not new <= energy + 1e-13:  # rose (or diverged): a smaller step
            dt /= 2
            if dt < s.dt / 256:
                break
            llg = klmgraph.LLG(provider, dt=dt, alpha=1.0, field=(0.0, 0.0, hz))
            continue
        steps += s.chunk
        spins, drop, energy = run.spins, energy - new, new
        if drop < s.tol * s.chunk:
            break
    total, field = llg.energy_and_field(spins)
    torque = float(torch.linalg.cross(spins, field, dim=-1).norm(dim=-1).max())
    return {"spins": spins, "energy_start": start, "energy_relax": float(total) / n, "steps": steps,
            "dt": dt, "max_torque": torque}


def run_branch(args: tuple) -> list[dict]:
    """Follow one (state, direction) branch through the fields; records are resumed or written."""
    state, direction, s_dict, out = args
    torch.set_num_threads(1)
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in s_dict.items()})
    cell = cell_graph()
    lattice = klmgraph.triangular(12, 12, t1=HAMILTONIAN["t1"], t3=HAMILTONIAN["t3"])
    index = to_lattice(cell, lattice)
    relax_ed = solver(cell, s.relax_grid)
    energy_eds = [solver(cell, g) for g in s.energy_grids]
    fields = list(s.fields) if direction == "up" else list(s.fields)[::-1]
    folder = Path(out) / "records" / f"{state}_{direction}"
    folder.mkdir(parents=True, exist_ok=True)
    spins, rows = ansatz(state, cell), []
    for hz in fields:
        path = folder / f"{hz:.5f}.json"
        if path.exists():
            row = json.loads(path.read_text())
            spins = torch.tensor(row.pop("spins"), dtype=torch.float64)
            rows.append(row)
            continue
        t0 = time.perf_counter()
        r = relax(relax_ed, spins, hz, s)
        spins = r.pop("spins")
        big = spins[index]  # the 12 x 12 lattice (3 magnetic cells) for the topology
        row = {"branch": f"{state}_{direction}", "state": state, "direction": direction, "hz": hz,
               "n_sk_per_cell": float(klmgraph.skyrmion_number(lattice, big)) / 3,
               "mz": float(spins[:, 2].mean()), **r}
        for grid, ed in zip(s.energy_grids, energy_eds):
            row[f"energy_k{grid}"] = float(ed(spins)[0]) / spins.shape[0] - hz * row["mz"]
        row["seconds"] = time.perf_counter() - t0
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**row, "spins": spins.tolist()}))
        rows.append(row)
    return rows


def branches(s: Settings) -> list[tuple[str, str]]:
    # the ferromagnet is one state at every field: followed once
    return [(state, d) for state in s.states for d in (("up",) if state == "fm" else ("up", "down"))]


def crossing(rows: list[dict], fields, low: int, high: int, grids) -> dict:
    """Where the lowest |n_sk| = low state stops being below the lowest |n_sk| = high one."""
    fine, coarse = (f"energy_k{g}" for g in grids[::-1])

    def gap(hz, key):
        best = {}
        for r in rows:
            if r["hz"] == hz:
                k = round(abs(r["n_sk_per_cell"]))
                best[k] = min(best.get(k, math.inf), r[key])
        return best.get(low, math.nan) - best.get(high, math.nan)

    d = [gap(h, fine) for h in fields]
    err = [abs(gap(h, fine) - gap(h, coarse)) for h in fields]
    for i in range(len(fields) - 1):
        if d[i] < 0 <= d[i + 1]:
            slope = (d[i + 1] - d[i]) / (fields[i + 1] - fields[i])
            hz = fields[i] - d[i] / slope
            return {"hz": hz, "bracket": [fields[i], fields[i + 1]],
                    "grid_uncertainty": max(err[i], err[i + 1]) / slope}
    return {"hz": math.nan, "bracket": None, "grid_uncertainty": math.nan, "gaps": d}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 fields, relax grid 16, energy grids 28 and 32")
    p.add_argument("--hz", type=float, nargs="+", help="fields (default: the setting's)")
    p.add_argument("--relax-grid", type=int, help="k-grid n (n x n) of the relaxation")
    p.add_argument("--energy-grids", type=int, nargs=2, metavar=("COARSE", "FINE"),
                   help="k-grids of the energies; their difference is the reported grid error")
    p.add_argument("--states", nargs="+", choices=STATES, help="candidate states (default: all)")
    p.add_argument("--max-steps", type=int, help="LLG steps per field at most")
    p.add_argument("--tol", type=float, help="stop when E/N falls by less than this per step")
    p.add_argument("--workers", type=int, default=1, help="processes (one branch each at a time)")
    p.add_argument("--out", default=None, help="default klmgraph-output/triangular_phase_diagram/{quick,full}")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    s = Settings(fields=tuple(sorted(args.hz)) if args.hz else base.fields,
                 relax_grid=args.relax_grid or base.relax_grid,
                 energy_grids=tuple(args.energy_grids) if args.energy_grids else base.energy_grids,
                 dt=base.dt, tol=args.tol or base.tol, max_steps=args.max_steps or base.max_steps,
                 chunk=base.chunk, states=tuple(args.states) if args.states else base.states)
    for name, grid in (("--relax-grid", s.relax_grid), *(("--energy-grids", g) for g in s.energy_grids)):
        if grid < 1:
            raise SystemExit(f"{name} must be positive, got {grid}")
    if s.energy_grids[0] >= s.energy_grids[1]:
        raise SystemExit(f"--energy-grids: COARSE must be smaller than FINE, got {list(s.energy_grids)}")
    out = Path(args.out or f"klmgraph-output/triangular_phase_diagram/{'quick' if args.quick else 'full'}")
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != json.loads(json.dumps(asdict(s))):
        raise SystemExit(f"{out} holds a run with other settings ({settings_path}); use another --out")
    with atomic_path(settings_path) as tmp:
        tmp.write_text(json.dumps(asdict(s), indent=2))

    from tqdm.auto import tqdm

    todo = [(state, d, asdict(s), str(out)) for state, d in branches(s)]
    print(f"{len(todo)} branches x {len(s.fields)} fields on the 48-site magnetic cell; relax with ED, k-grid "
          f"{s.relax_grid}x{s.relax_grid} (tiled {48 * s.relax_grid ** 2} sites), energies on "
          + " and ".join(f"{g}x{g}" for g in s.energy_grids), flush=True)
    start, rows = time.perf_counter(), []
    with tqdm(total=len(todo), desc="branches", unit="branch") as bar:
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers) as pool:
                for result in pool.map(run_branch, todo):
                    rows += result
                    bar.update(1)
        else:
            for task in todo:
                rows += run_branch(task)
                bar.update(1)
    summary = report(rows, s, out, time.perf_counter() - start)
    print(f"hz_2_1={summary['hz_2_1']['hz']:.5f} hz_1_0={summary['hz_1_0']['hz']:.5f}")
    return summary


def report(rows: list[dict], s: Settings, out: Path, seconds: float) -> dict:
    coarse, fine = (f"energy_k{g}" for g in s.energy_grids)
    lowest = {h: min(fine_row[fine] for fine_row in rows if fine_row["hz"] == h) for h in s.fields}
    columns = ["branch", "state", "direction", "hz", "n_sk_per_cell", "mz", "energy_start", "energy_relax",
               coarse, fine, "minus_lowest", "max_torque", "steps", "dt", "seconds"]
    with atomic_path(out / "phase_diagram.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in sorted(rows, key=lambda r: (r["branch"], r["hz"])):
            writer.writerow({**r, "minus_lowest": r[fine] - lowest[r["hz"]]})
    ground = [min((r for r in rows if r["hz"] == h), key=lambda r: r[fine]) for h in s.fields]
    # grid error: absolute energies, and the energies relative to the lowest state at each field
    rel = [abs((r[fine] - lowest[r["hz"]]) - (r[coarse] - min(x[coarse] for x in rows if x["hz"] == r["hz"])))
           for r in rows]
    summary = {
        "settings": asdict(s), "solver": f"ED, k-grids {s.relax_grid} (relaxation), "
                                         f"{s.energy_grids[0]} and {s.energy_grids[1]} (energies), 48-site cell",
        "hz_2_1": crossing(rows, s.fields, 2, 1, s.energy_grids),
        "hz_1_0": crossing(rows, s.fields, 1, 0, s.energy_grids),
        "paper": PAPER,
        "grid_error_energy_max": max(abs(r[fine] - r[coarse]) for r in rows),
        "grid_error_relative_max": max(rel),
        "ground_states": [{"hz": g["hz"], "branch": g["branch"], "n_sk_per_cell": g["n_sk_per_cell"],
                           "mz": g["mz"]} for g in ground],
        "max_torque": max(r["max_torque"] for r in rows),
        "seconds": seconds,
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float))
    plot(rows, s, ground, summary, out)
    for g in ground:
        print(f"Hz = {g['hz']:<7g} lowest: {g['branch']:9s} n_sk/cell = {g['n_sk_per_cell']:+.2f}  "
              f"Mz = {g['mz']:.3f}")
    print(f"grid error ({s.energy_grids[0]} vs {s.energy_grids[1]}): E/N up to "
          f"{summary['grid_error_energy_max']:.1e}, E/N minus the lowest up to {summary['grid_error_relative_max']:.1e}")
    for key in ("hz_2_1", "hz_1_0"):
        c = summary[key]
        print(f"{key}: {c['hz']:.5f} +- {c['grid_uncertainty']:.5f} (grid), bracket {c['bracket']}; "
              f"paper {PAPER[key]}")
    print(f"table {out / 'phase_diagram.csv'}, plots {out / 'energies.png'}, {out / 'phase_diagram.png'}")
    return summary


def plot(rows, s: Settings, ground, summary, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fine = f"energy_k{s.energy_grids[1]}"
    lowest = {g["hz"]: g[fine] for g in (min((r for r in rows if r["hz"] == h), key=lambda r: r[fine])
                                         for h in s.fields)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"sk2": "o", "sk1": "s", "tq0": "^", "1q": "v", "fm": "D"}
    for k, branch in enumerate(sorted({r["branch"] for r in rows})):
        mine = sorted((r for r in rows if r["branch"] == branch), key=lambda r: r["hz"])
        x = [r["hz"] for r in mine]
        y = [(r[fine] - lowest[r["hz"]]) * 1e5 for r in mine]
        ax.plot(x, y, "-" if mine[0]["direction"] == "up" else "--", marker=markers[mine[0]["state"]],
                color=f"C{k}", label=branch, ms=5)
        for r, v in zip(mine, y):
            ax.annotate(f"{abs(r['n_sk_per_cell']):.0f}", (r["hz"], v), fontsize=6, xytext=(2, 2),
                        textcoords="offset points")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("$H_z$")
    ax.set_ylabel("E/N minus the lowest at that field (1e-5)")
    ax.set_title(f"triangular model, ED k-grid {s.energy_grids[1]}x{s.energy_grids[1]} on the 48-site cell; "
                 "labels |n_sk| per cell;\nsolid: followed up in field, dashed: down", fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "energies.png", dpi=130)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    hz = [g["hz"] for g in ground]
    a1.plot(hz, [abs(g["n_sk_per_cell"]) for g in ground], "o-", color="C0", drawstyle="steps-mid")
    a1.set_ylabel("|n_sk| per cell")
    a2.plot(hz, [g["mz"] for g in ground], "s-", color="C1")
    a2.set_ylabel("$M^z$ per site")
    a2.set_xlabel("$H_z$")
    for a in (a1, a2):
        for key, colour in (("hz_2_1", "C2"), ("hz_1_0", "C3")):
            c = summary[key]
            if math.isfinite(c["hz"]):
                a.axvline(c["hz"], color=colour, lw=1)
            a.axvline(PAPER[key], color=colour, ls=":", lw=1)
    a1.set_title("lowest state (solid lines: ED boundaries; dotted: the paper's 96x96 ML-LLG)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "phase_diagram.png", dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
