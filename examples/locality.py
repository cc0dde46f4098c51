"""Locality of the effective field: exact diagonalization against the ECNN (paper Fig. S3).

A convolutional model can only be right if the electronic field is nearsighted: B_r must depend
mostly on the spins near r. Miyazaki (2023) checks this by rotating one spin of a random
configuration and measuring how much the field changes with the distance from it. This script
repeats the test on the triangular model of the paper (t1 = 1, t3 = -0.85, J = -1, mu = -3.5,
grand canonical; DESIGN.md section 1) with :func:`klmgraph.locality` (rotation by pi/2), for
exact diagonalization (ED) and for the published ecnn4klm checkpoint, on the same spins:

* ED: |dB_r| / |B_r| falls with distance: its root mean square per hop shell drops by an order
  of magnitude from the nearest neighbours to 4-5 hops, then levels off at a floor, about
  0.2 % of |B| on 36 x 36 and 0.5 % on 48 x 48 (3 % and 7 % of the nearest-neighbour
  response; on 36 x 36 the same for a 0.01 rad rotation, so it is linear response, not levels
  crossing the chemical potential). A metal at T = 0 has no strict cut-off: this long-range
  part is what any local model must miss.
* ECNN: every site energy sees 5 graph hops (4 interaction blocks + the output convolution;
  one hop reaches up to the third neighbours, distance 2). The field B = -dE/dS is a sum of
  site-energy derivatives, so it sees 2 x 5 = 10 hops: the model's dB_r is exactly zero beyond
  10 hops. It follows ED closely up to 4 hops; beyond 5 hops only the site energies that see
  both spins contribute, and its response falls by orders of magnitude below ED's.

    python examples/locality.py --quick    # 36 x 36 (the paper's training lattice), 30-40 s on one core
    python examples/locality.py            # 48 x 48, a few minutes on one core (ED is O(N^3))

--quick is not smaller because a 10-hop reach covers all of a 30 x 30 lattice (33 x 33 is the
first size with sites beyond it; 36 x 36 is the paper's training lattice). Without
``../shared/ecnn4klm/triangle_param.cpt`` (or --checkpoint) the script says so and runs ED
only. The model runs in float64 (its float32 weights converted), so that responses far below
float32 rounding are resolved.

Output in --out: locality.png (left: every site and the largest ratio per distance, Fig. S3;
right: root mean square and largest ratio per graph-hop distance), results.json. The last
line printed is

    locality: ed_decay=<x> model_range=<d> model_hops=<h>

ed_decay: root mean square of the ED ratio over the sites beyond the model's 10-hop reach,
divided by that over the 6 nearest neighbours (distance 1): the share of the response that
any model of this range must miss (on a lattice with no site beyond the reach, the outermost
10 % of distances are used instead). model_range / model_hops: the largest distance and hop
count with a nonzero model response ("n/a" without a checkpoint).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import klmgraph
from klmgraph.plot import plot_locality

TRIANGULAR = {"t1": 1.0, "t3": -0.85}
HAMILTONIAN = {"J": -1.0, "mu": -3.5}
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm" / "triangle_param.cpt"
PUBLISHED_CONVOLUTIONS = 5  # 4 interaction blocks + the output convolution


def hop_distance(graph: klmgraph.HoppingGraph, site: int) -> torch.Tensor:
    """(N,) number of hopping-graph edges on the shortest path from ``site`` (breadth first)."""
    src, dst = graph.edge_index  # row 0 neighbour, row 1 centre; the graph is symmetric
    hops = torch.full((graph.num_nodes,), -1, dtype=torch.long)
    hops[site] = 0
    frontier = hops == 0
    k = 0
    while frontier.any():
        k += 1
        reached = torch.zeros_like(frontier)
        reached[dst[frontier[src]]] = True
        frontier = reached & (hops < 0)
        hops[frontier] = k
    return hops


def rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def per_hop(ratio: torch.Tensor, hops: torch.Tensor) -> dict:
    """Largest and root-mean-square ratio at each hop distance 0 .. max: {"max": [...], "rms": [...]}."""
    shells = [ratio[hops == h] for h in range(int(hops.max()) + 1)]
    return {"max": [float(x.max()) for x in shells], "rms": [rms(x) for x in shells]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="36 x 36 (30-40 s on one core)")
    p.add_argument("--size", type=int, default=None, help="L of the L x L lattice (default 48, --quick 36)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random configuration (default 0)")
    p.add_argument("--site", type=int, default=0, help="the site whose spin is rotated (default 0)")
    p.add_argument("--angle", type=float, default=math.pi / 2, help="rotation angle (default pi/2)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="ecnn4klm triangle_param.cpt")
    p.add_argument("--k-grid", type=int, default=0, metavar="N",
                   help="also ED on an N x N k-grid (the configuration repeated over an infinite lattice; "
                        "N x N times the cost of Gamma; default 0: off)")
    p.add_argument("--device", default="cpu", help="torch device of ED and the model")
    p.add_argument("--out", default=None, help="output folder (default klmgraph-output/locality-L)")
    args = p.parse_args(argv)
    size = args.size or (36 if args.quick else 48)
    out = Path(args.out or f"klmgraph-output/locality-{size}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    graph = klmgraph.triangular(size, size, **TRIANGULAR)
    spins = klmgraph.random_spins(graph, seed=args.seed, device=args.device)  # float64
    hops = hop_distance(graph, args.site)
    reach = 2 * PUBLISHED_CONVOLUTIONS  # hops seen by the field B = -dE/dS
    print(f"{graph.describe()}; rotating spin {args.site} by {args.angle:.4g} rad; "
          f"largest hop distance {int(hops.max())}, model field reach {reach} hops")

    results = {"lattice": graph.describe(), "size": size, "seed": args.seed, "site": args.site,
               "angle": args.angle, **TRIANGULAR, **HAMILTONIAN, "field_reach_hops": reach}
    tick = time.perf_counter()
    ed = klmgraph.ExactDiagonalization(graph, **HAMILTONIAN)
    ed_loc = klmgraph.locality(ed, graph, spins, site=args.site, angle=args.angle)
    results["ed_seconds"] = time.perf_counter() - tick
    results["ed_solver"] = ed.solver
    kgrid_loc = None
    if args.k_grid > 1:
        tick = time.perf_counter()
        ed_k = klmgraph.ExactDiagonalization(graph, **HAMILTONIAN, k_grid=(args.k_grid, args.k_grid))
        kgrid_loc = klmgraph.locality(ed_k, graph, spins, site=args.site, angle=args.angle)
        results["ed_kgrid_seconds"] = time.perf_counter() - tick
        results["ed_kgrid_solver"] = ed_k.solver
    model_loc = None
    if Path(args.checkpoint).is_file():
        model = klmgraph.load_ecnn4klm(args.checkpoint, graph).double().to(args.device)
        conv = model.hparams["num_interactions"] + 1
        if conv != PUBLISHED_CONVOLUTIONS:  # not the published architecture
            reach = 2 * conv
            results["field_reach_hops"] = reach
        tick = time.perf_counter()
        model_loc = klmgraph.locality(model.bind(graph), graph, spins, site=args.site, angle=args.angle)
        results["model_seconds"] = time.perf_counter() - tick
    else:
        print(f"no checkpoint at {args.checkpoint} (see DESIGN.md section 4): running ED only")

    distance = ed_loc.distance.cpu()
    ed_ratio = ed_loc.ratio.cpu()
    near = (distance - 1).abs() < 1e-6  # the nearest neighbours
    beyond = hops > reach
    far = beyond if beyond.any() else distance >= 0.9 * float(distance.max())
    results["far_sites"] = f"beyond {reach} hops" if beyond.any() else "outer 10 % of distances"
    results["ed_near_rms"], results["ed_far_rms"] = rms(ed_ratio[near]), rms(ed_ratio[far])
    results["ed_near_max"], results["ed_far_max"] = float(ed_ratio[near].max()), float(ed_ratio[far].max())
    results["ed_decay"] = results["ed_far_rms"] / results["ed_near_rms"]
    results["ed_per_hop"] = per_hop(ed_ratio, hops)
    if kgrid_loc is not None:
        k_ratio = kgrid_loc.ratio.cpu()
        results["ed_kgrid_near_rms"], results["ed_kgrid_far_rms"] = rms(k_ratio[near]), rms(k_ratio[far])
        results["ed_kgrid_far_max"] = float(k_ratio[far].max())
        results["ed_kgrid_decay"] = results["ed_kgrid_far_rms"] / results["ed_kgrid_near_rms"]
        results["ed_kgrid_per_hop"] = per_hop(k_ratio, hops)
    results["model_range"] = results["model_hops"] = None
    if model_loc is not None:
        m_ratio = model_loc.ratio.cpu()
        nonzero = m_ratio > 0
        results["model_range"] = float(distance[nonzero].max())
        results["model_hops"] = int(hops[nonzero].max())
        results["model_max_beyond_reach"] = float(m_ratio[beyond].max()) if beyond.any() else None
        results["model_per_hop"] = per_hop(m_ratio, hops)

    print("|dB|/|B| per hop distance")
    kname = f"k{args.k_grid}x{args.k_grid}"
    print(f"{'hops':>4} {'sites':>6} {'ED rms':>10} {'ED max':>10} {'ECNN rms':>10} {'ECNN max':>10}"
          + (f" {kname + ' rms':>10} {kname + ' max':>10}" if kgrid_loc is not None else ""))
    for h in range(int(hops.max()) + 1):
        row = f"{h:4d} {int((hops == h).sum()):6d}"
        for key in ("ed_per_hop", "model_per_hop") + (("ed_kgrid_per_hop",) if kgrid_loc is not None else ()):
            row += (f" {results[key]['rms'][h]:10.3e} {results[key]['max'][h]:10.3e}" if key in results
                    else f" {'-':>10} {'-':>10}")
        print(row)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_hop) = plt.subplots(1, 2, figsize=(11, 4.3))
    curves = [("ED at Gamma", ed_loc, "tab:blue")] + ([("ECNN", model_loc, "tab:red")] if model_loc is not None else [])
    if kgrid_loc is not None:
        curves.append((f"ED, k-grid {args.k_grid}x{args.k_grid}", kgrid_loc, "tab:green"))
    for name, loc, colour in curves:
        before = len(ax.lines)
        plot_locality(loc, ax=ax)
        dots, line = ax.lines[before:]
        dots.set_color(colour)
        dots.set_label(f"{name}, sites" + (" (exact zeros at $10^{-17}$)" if name == "ECNN" else ""))
        if name.startswith("ED, k-grid"):
            dots.set_markersize(1.5)
        line.set_color(colour)
        line.set_label(f"{name}, max per distance")
    edge = float(distance[beyond].min()) if beyond.any() else None
    if edge is not None:
        ax.axvline(edge, color="0.4", ls=":", lw=1, label=f"first site beyond {reach} hops")
    ax.legend(frameon=False, fontsize=8, loc="lower left")
    ax.set_title(f"triangular {size}x{size}: one spin rotated by {math.degrees(args.angle):.0f}$^\\circ$", fontsize=10)

    h = list(range(1, int(hops.max()) + 1))
    for name, key, colour in (("ED at Gamma", "ed_per_hop", "tab:blue"), ("ECNN", "model_per_hop", "tab:red"),
                              (f"ED, k-grid {args.k_grid}x{args.k_grid}", "ed_kgrid_per_hop", "tab:green")):
        if key in results:
            ax_hop.semilogy(h, [max(v, 1e-17) for v in results[key]["rms"][1:]], "o-", ms=4, color=colour,
                            label=f"{name}, rms")
            ax_hop.semilogy(h, [max(v, 1e-17) for v in results[key]["max"][1:]], "^--", ms=3, lw=0.8,
                            color=colour, alpha=0.6, label=f"{name}, max")
    ax_hop.axvline(reach // 2, color="0.6", ls="--", lw=1, label=f"site-energy reach ({reach // 2} hops)")
    ax_hop.axvline(reach, color="0.4", ls=":", lw=1, label=f"field reach ({reach} hops)")
    ax_hop.set_xlabel("graph hops to the rotated spin (third neighbours are one hop)")
    ax_hop.set_ylabel(r"$|\delta B| / |B|$ per hop distance")
    ax_hop.legend(frameon=False, fontsize=8, loc="lower left")
    ax_hop.set_title("root mean square and largest ratio per hop distance", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "locality.png", dpi=130)
    plt.close(fig)

    results["wall_time"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"ED |dB|/|B| at distance 1: rms {results['ed_near_rms']:.3e}, max {results['ed_near_max']:.3e}; "
          f"{results['far_sites']}: rms {results['ed_far_rms']:.3e}, max {results['ed_far_max']:.3e}")
    if kgrid_loc is not None:
        print(f"ED, k-grid {args.k_grid}x{args.k_grid}: {results['far_sites']}: rms {results['ed_kgrid_far_rms']:.3e}, "
              f"max {results['ed_kgrid_far_max']:.3e} ({results['ed_kgrid_far_rms'] / results['ed_far_rms']:.2f} x Gamma's)")
    print(f"figure {out / 'locality.png'}, numbers {out / 'results.json'}; {results['wall_time']:.0f} s")
    model_range = "n/a" if results["model_range"] is None else f"{results['model_range']:.2f}"
    model_hops = "n/a" if results["model_hops"] is None else str(results["model_hops"])
    print(f"locality: ed_decay={results['ed_decay']:.3f} model_range={model_range} model_hops={model_hops}")
    return results


if __name__ == "__main__":
    main()
