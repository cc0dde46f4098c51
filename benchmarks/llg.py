"""LLG steps per second against lattice size, for the three kinds of force provider:

* spin-only terms (Heisenberg + anisotropy): the integrator's own overhead, with the cost of the
  observables recorded at every step (skyrmion number, structure factor);
* exact diagonalization (triangular model of the paper; small lattices);
* the ECNN (the published triangular checkpoint imported with ``load_ecnn4klm``).

One Heun step costs two provider evaluations. Prints a markdown table and writes it (with the
machine and date) to ``--out``:

    python benchmarks/llg.py [--device cuda] [--out table.md]
        [--ed-sizes 8 12 16 24] [--model-sizes 24 48 96 192] [--spin-sizes 48 96 192]
"""
import argparse
from pathlib import Path

import torch

import klmgraph
from klmgraph.dynamics import Heisenberg, SingleIonAnisotropy
from klmgraph.measure import skyrmion_number, structure_factor
from klmgraph.timing import call_times, machine

CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm" / "triangle_param.cpt"


def timed(fn, repeat: int, budget: float = 20.0) -> tuple[float, int]:
    """Mean seconds per call (after one warm-up call) and the number of timed calls; stops early
    once ``budget`` seconds are spent, so large ED sizes stay affordable."""
    times = call_times(fn, repeat, "cuda" if torch.cuda.is_available() else None, budget=budget)
    return sum(times) / len(times), len(times)


def graph_of(size):
    return klmgraph.triangular(size, size, t1=1.0, t3=-0.85)


def step_row(kind, size, provider, device, repeat, dtype=torch.float64, integrator="heun"):
    graph = graph_of(size)
    llg = klmgraph.LLG(provider, dt=1.0, alpha=1.0, temperature=1e-3, field=(0, 0, 0.005), integrator=integrator)
    spins = klmgraph.skyrmion_crystal(graph, m_z=0.3, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    t, n = timed(lambda: llg.step(spins, gen), repeat)
    return {"provider": kind, "lattice": f"{size}x{size}", "sites": graph.num_nodes, "integrator": integrator,
            "dtype": str(dtype).removeprefix("torch."), "ms_per_step": t * 1e3, "steps_per_s": 1 / t,
            "us_per_site": t / graph.num_nodes * 1e6, "timed": n}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spin-sizes", type=int, nargs="*", default=[48, 96, 192])
    parser.add_argument("--ed-sizes", type=int, nargs="*", default=[8, 12, 16, 24])
    parser.add_argument("--model-sizes", type=int, nargs="*", default=[24, 48, 96, 192])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", help="also write the markdown table to this file (paste it into docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(args.device)
    header = (f"{info['date']}, {info.get('gpu') or info['cpu']}, {info['torch_threads']} torch threads, "
              f"{info['cores']} CPUs (load average {info['load_average']:.1f} at the start), "
              f"torch {info['torch']}, device {args.device}")
    print("#", header)
    rows = []
    for size in args.spin_sizes:
        graph = graph_of(size)
        provider = Heisenberg(graph, 1.0) + SingleIonAnisotropy(0.1)
        for dtype in (torch.float32, torch.float64):
            for integrator in ("heun", "midpoint"):
                rows.append(step_row("spin-only", size, provider, args.device, args.repeat * 5, dtype, integrator))
                print(rows[-1])
    for size in args.ed_sizes:
        graph = graph_of(size)
        ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5)
        rows.append(step_row("ED", size, ed, args.device, args.repeat))
        print(rows[-1])
    if args.model_sizes and CHECKPOINT.is_file() and hasattr(klmgraph, "load_ecnn4klm"):
        for size in args.model_sizes:
            graph = graph_of(size)
            model = klmgraph.load_ecnn4klm(CHECKPOINT, graph).to(args.device)
            rows.append(step_row("ECNN (ecnn4klm, float32)", size, model.bind(graph), args.device, args.repeat))
            print(rows[-1])
    elif args.model_sizes:
        print(f"# no model rows: needs klmgraph.load_ecnn4klm and {CHECKPOINT}")
    observables = []
    for size in args.spin_sizes:
        graph = graph_of(size)
        spins = klmgraph.skyrmion_crystal(graph, m_z=0.3, device=args.device)
        t_nsk, _ = timed(lambda: skyrmion_number(graph, spins), args.repeat * 5)
        t_sq, _ = timed(lambda: structure_factor(graph, spins), args.repeat * 5)
        observables.append((size, graph.num_nodes, t_nsk * 1e3, t_sq * 1e3))

    lines = [f"# LLG steps per second ({header})", "",
             "Triangular lattices (t1 = 1, t3 = -0.85), Heun unless noted, T = 0.001, one configuration; "
             "`PYTHONPATH=. python benchmarks/llg.py`. One Heun step is two provider evaluations.", "",
             "| provider | lattice | sites | integrator | dtype | ms / step | steps / s | us / site / step |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['provider']} | {r['lattice']} | {r['sites']} | {r['integrator']} | {r['dtype']} | "
                     f"{r['ms_per_step']:.3g} | {r['steps_per_s']:.3g} | {r['us_per_site']:.3g} |")
    lines += ["", "Observables recorded at every step of `klmgraph.simulate`:", "",
              "| lattice | sites | skyrmion number (ms) | structure factor (ms) |", "|---|---|---|---|"]
    lines += [f"| {s}x{s} | {n} | {a:.3g} | {b:.3g} |" for s, n, a, b in observables]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return rows, observables


if __name__ == "__main__":
    main()
