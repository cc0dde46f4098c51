"""Which skyrmion crystal has the lowest energy at each field? Adiabatic branches, checked by ED.

A damped LLG run from random spins ends in whichever state it reaches first; on small lattices
that is often a metastable one (docs/results.md). This script compares states instead: it
prepares an n_sk = 2 state (random start relaxed at Hz = 0.002), an n_sk = 1 skyrmion crystal
(the triple-Q ansatz) and an n_sk = 0 conical state, follows each through a list of fields
(damped ML-LLG with the published triangular model, each field starting from the state of the
previous one), and records the total energy per site (E_el / N - Hz M^z) from the model and,
with ``--ed``, from exact diagonalization of the same configuration. The n_sk = 0 branch is
followed downwards from the highest field, where it is stable.

    python examples/triangular_phase_boundaries.py --quick        # 12x12, 4 fields, minutes
    python examples/triangular_phase_boundaries.py --size 24 --ed # docs/results.md's table

Writes ``branches.csv`` and ``branches.png`` (energy of each branch relative to the n_sk = 1
crystal against Hz) and ends with one line ``lowest: hz=<n_sk> ...`` (by the model).
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import torch

import klmgraph

CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm" / "triangle_param.cpt"
FIELDS = (0.002, 0.004, 0.006, 0.008, 0.010, 0.012, 0.013, 0.014, 0.016)


def total_energy(provider, spins, hz):
    energy, _ = provider.energy_and_field(spins)
    return float(energy) / spins.shape[0] - hz * float(spins[:, 2].mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="12x12, fields 0.002 0.006 0.010 0.014, 150 steps")
    p.add_argument("--size", type=int, default=None, help="L of the L x L lattice (default 24, quick 12)")
    p.add_argument("--hz", type=float, nargs="+", default=None, help="fields (default 0.002 ... 0.016)")
    p.add_argument("--steps", type=int, default=None, help="LLG steps per field (default 300, quick 150)")
    p.add_argument("--dt", type=float, default=5.0)
    p.add_argument("--ed", action="store_true", help="also the ED energy of every final state")
    p.add_argument("--k-grid", type=int, default=0, metavar="N",
                   help="with --ed: ED on an N x N k-grid (the thermodynamic limit of each state; default Gamma)")
    p.add_argument("--checkpoint", default=str(CHECKPOINT))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="klmgraph-output/triangular_phase_boundaries")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"no checkpoint at {args.checkpoint} (see DESIGN.md section 4)")
    size = args.size or (12 if args.quick else 24)
    fields = sorted(args.hz or ((0.002, 0.006, 0.010, 0.014) if args.quick else FIELDS))
    steps = args.steps or (150 if args.quick else 300)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    graph = klmgraph.triangular(size, size, t1=1.0, t3=-0.85)
    model = klmgraph.load_ecnn4klm(args.checkpoint, graph).bind(graph)
    ed = (klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5, k_grid=(args.k_grid,) * 2 if args.k_grid else None)
          if args.ed else None)

    def relax(spins, hz, n):
        return klmgraph.LLG(model, dt=args.dt, alpha=1.0, field=(0.0, 0.0, hz)).run(spins, n).spins

    q = math.pi / 3
    starts = {
        "n_sk=2 start": relax(klmgraph.random_spins(graph, seed=0), fields[0], 2 * steps),
        "n_sk=1 start": klmgraph.skyrmion_crystal(graph, q=q, m_z=0.3),
        "n_sk=0 start": klmgraph.multi_q(graph, [(q, 0.0)], uniform=(0.0, 0.0, 0.6)),
    }
    rows = []
    for branch, spins in starts.items():
        # the conical state is followed down from the top field, where it is stable
        order = fields[::-1] if branch == "n_sk=0 start" else fields
        for k, hz in enumerate(order):
            spins = relax(spins, hz, 2 * steps if k == 0 else steps)
            row = {"branch": branch, "hz": hz, "n_sk_per_cell": float(klmgraph.skyrmion_number(graph, spins)) * 48
                   / graph.num_nodes, "mz": float(spins[:, 2].mean()), "energy_model": total_energy(model, spins, hz),
                   "energy_ed": total_energy(ed, spins, hz) if ed is not None else math.nan}
            rows.append(row)
            print(f"{branch:13s} Hz = {hz:<6g} n_sk/cell = {row['n_sk_per_cell']:+.2f}  Mz = {row['mz']:.3f}  "
                  f"E/N model {row['energy_model']:.6f}" + (f"  {ed.solver} {row['energy_ed']:.6f}" if ed else ""),
                  flush=True)

    with open(out / "branches.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, fields, out / "branches.png", f"triangular {size}x{size}, published ECNN" + (f"; dotted: {ed.solver}" if ed else ""))
    lowest = []
    for hz in fields:
        best = min((r for r in rows if r["hz"] == hz), key=lambda r: r["energy_model"])
        lowest.append(f"{hz:g}={abs(best['n_sk_per_cell']):.0f}")
    print(f"table {out / 'branches.csv'}, plot {out / 'branches.png'}")
    print("lowest: " + " ".join(lowest))
    return rows


def plot(rows, fields, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = {r["hz"]: r for r in rows if r["branch"] == "n_sk=1 start"}
    fig, ax = plt.subplots(figsize=(6, 4))
    for branch, marker, colour in (("n_sk=2 start", "o", "C0"), ("n_sk=1 start", "s", "C1"), ("n_sk=0 start", "^", "C2")):
        mine = [r for r in rows if r["branch"] == branch]
        for key, style, label in (("energy_model", "-", "model"), ("energy_ed", ":", "ED")):
            x = [r["hz"] for r in mine]
            y = [(r[key] - reference[r["hz"]][key]) * 1e4 for r in mine]
            if all(math.isnan(v) for v in y):
                continue
            ax.plot(x, y, style, marker=marker, color=colour, label=f"{branch} ({label})")
            if key == "energy_model":
                for r, v in zip(mine, y):
                    ax.annotate(f"{abs(r['n_sk_per_cell']):.0f}", (r["hz"], v), fontsize=7, xytext=(2, 3),
                                textcoords="offset points")
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set_xlabel("$H_z$")
    ax.set_ylabel("E/N minus that of the n_sk = 1 branch (1e-4)")
    ax.set_title(title + "; labels: |n_sk| per cell", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
