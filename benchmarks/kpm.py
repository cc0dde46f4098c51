"""Error and time of the KPM solver against exact diagonalization, for both paper models.

Tables:

1. error against order and probing distance (triangular 24x24, mu = -3.5, grand canonical;
   square 24x24, J = 7, filling 0.48, canonical; random configurations, T = 0): field RMSE and
   the largest |E_KPM - E_ED| per site over the configurations, the number of probe vectors and
   the seconds per configuration (one call each: the calls are long, so no repeats);
2. time against lattice size (triangular): KPM at ``--size-order`` moments and the default
   probing, next to ED where it is affordable (up to ``--ed-max``) and ED extrapolated with its
   N^3 law beyond (marked as such). KPM's time is linear in the order (table 1 shows it), so
   the default order's time is the measured one scaled by order / size-order.

    python benchmarks/kpm.py --markdown kpm.md          # 1 thread, ~25 min on a busy 2-core CPU
    python benchmarks/kpm.py --quick                    # 12x12, a minute
"""
from __future__ import annotations

import argparse
import inspect
import subprocess
import time
import warnings

import torch

import klmgraph
from klmgraph.timing import machine

MODELS = {
    "triangular": (lambda L: klmgraph.triangular(L, L, t1=1.0, t3=-0.85), {"J": -1.0, "mu": -3.5}),
    "square": (lambda L: klmgraph.square(L, L), {"J": 7.0, "filling": 0.48}),
}


def header(device) -> str:
    info = machine(device)
    try:
        lscpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        lscpu = info["cpu"]
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (f"Machine: {lscpu} (lscpu), {info['cores']} cores, {info['torch_threads']} torch thread(s), "
            f"load average {info['load_average']}{gpu}; torch {info['torch']}, python {info['python']}; "
            f"{info['date']}.")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def error_table(name: str, size: int, orders, distances, configs: int, device, phases_off: tuple | None,
                jackson=()):
    build, params = MODELS[name]
    graph = build(size)
    spins = klmgraph.random_spins(graph, batch=configs, seed=0).to(device)
    n = graph.num_nodes
    ed = klmgraph.ExactDiagonalization(graph, **params)
    (e_ref, b_ref), ed_time = timed(lambda: ed.energy_and_field(spins))
    lines = [f"### {name} {size}x{size}: {params}, T = 0, {configs} random configuration(s) (seed 0)", "",
             header(device), "",
             f"ED: {ed_time / configs:.2f} s per configuration; field RMS {float(b_ref.pow(2).mean().sqrt()):.4g}, "
             f"E per site {float(e_ref.mean()) / n:.6f}.", "",
             "| order | probe distance | kernel | random phases | probes | field RMSE | max abs dE per site | s per config |",
             "|---:|---:|:---:|:---:|---:|---:|---:|---:|"]
    runs = [(o, d, "none", True) for d in distances for o in orders]
    runs += [(o, d, "jackson", True) for o, d in jackson]
    if phases_off is not None:
        runs.append((*phases_off, "none", False))
    for order, distance, kernel, random_phases in runs:
        kpm = klmgraph.KPM(graph, order=order, probe_distance=distance, kernel=kernel,
                           random_phases=random_phases, **params)
        (e, b), seconds = timed(lambda: kpm.energy_and_field(spins))
        rmse = float((b - b_ref).pow(2).mean().sqrt())
        de = float((e - e_ref).abs().max()) / n
        lines.append(f"| {order} | {distance} | {kernel} | {'yes' if random_phases else 'no'} | {kpm.num_probes} | "
                     f"{rmse:.2e} | {de:.2e} | {seconds / configs:.1f} |")
        print(lines[-1], flush=True)
    return lines


def size_table(sizes, order: int, distance: int, default_order: int, ed_max: int, device):
    build, params = MODELS["triangular"]
    lines = [f"### time against size: triangular, {params}, KPM order {order}, probe distance {distance}", "",
             header(device), "",
             f"| L x L | sites | probes | KPM s (order {order}) | KPM s at order {default_order} (scaled) | ED s |",
             "|---:|---:|---:|---:|---:|---:|"]
    ed_measured = None
    for size in sizes:
        graph = build(size)
        spins = klmgraph.random_spins(graph, seed=0).to(device)
        kpm = klmgraph.KPM(graph, order=order, probe_distance=distance, probe_chunk=128, **params)
        _, seconds = timed(lambda: kpm.energy_and_field(spins))
        if size <= ed_max:
            ed = klmgraph.ExactDiagonalization(graph, **params)
            _, ed_seconds = timed(lambda: ed.energy_and_field(spins))
            ed_measured = (graph.num_nodes, ed_seconds)
            ed_text = f"{ed_seconds:.2f}"
        elif ed_measured is not None:
            ed_text = f"~{ed_measured[1] * (graph.num_nodes / ed_measured[0]) ** 3:.3g} (N^3 from {ed_measured[0]} sites)"
        else:
            ed_text = "-"
        lines.append(f"| {size} | {graph.num_nodes} | {kpm.num_probes} | {seconds:.2f} | "
                     f"{seconds * default_order / order:.1f} | {ed_text} |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="12x12 and small orders (a minute)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", type=int, default=1, help="random configurations per model (default 1)")
    p.add_argument("--orders", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--distances", type=int, nargs="+", default=[4, 8, 12],
                   help="probe distances of the triangular model (hops; 12 colours every site of 24x24: an exact trace)")
    p.add_argument("--square-distances", type=int, nargs="+", default=[6, 12, 24],
                   help="probe distances of the square model (nearest neighbours only: a hop is shorter)")
    p.add_argument("--sizes", type=int, nargs="+", default=[24, 48, 96, 192])
    p.add_argument("--size-order", type=int, default=64, help="KPM order of the size table (default 64)")
    p.add_argument("--ed-max", type=int, default=36, help="largest L timed with ED (default 36)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--error-size", type=int, default=24,
                   help="L of the error tables (default 24; 36 shows the probing error that 24x24 cannot, "
                        "where distance 12 already colours every site)")
    p.add_argument("--no-variants", action="store_true", help="no Jackson-kernel and fixed-phase rows")
    p.add_argument("--no-size-table", action="store_true", help="only the error tables")
    p.add_argument("--no-error-tables", action="store_true", help="only the size table")
    p.add_argument("--markdown", help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    defaults = inspect.signature(klmgraph.KPM).parameters
    default_order, default_distance = defaults["order"].default, defaults["probe_distance"].default
    size = 12 if args.quick else args.error_size
    orders = [64, 128] if args.quick else args.orders
    lines = ["## KPM against ED", ""]
    for name in [] if args.no_error_tables else args.models:
        distances = [2, 4] if args.quick else args.distances if name == "triangular" else args.square_distances
        lines += error_table(name, size, orders, distances, args.configs, args.device,
                             phases_off=None if args.no_variants else (orders[1], distances[1]),
                             jackson=[] if args.no_variants else [(orders[1], distances[1]),
                                                                   (orders[1], distances[-1])]) + [""]
    sizes = [12, 24] if args.quick else args.sizes
    if not args.no_size_table:
        lines += size_table(sizes, 32 if args.quick else args.size_order, default_distance, default_order,
                            12 if args.quick else args.ed_max, args.device) + [""]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
