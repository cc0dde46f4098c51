"""Cost of one LLG step (spin-only providers, so the integrator's own overhead shows) and of the
observables, on lattice sizes a user would run. Prints one line per case.

    PYTHONPATH=. python benchmarks/bench_llg.py [--device cuda] [--sizes 48 96 192]

With exact diagonalization or a model as the provider the step cost is two provider calls plus
the numbers here.
"""
import argparse
import datetime
import platform
import time

import torch

import klmgraph
from klmgraph.dynamics import Heisenberg, SingleIonAnisotropy
from klmgraph.measure import skyrmion_number, structure_factor


def timed(fn, repeat):
    fn()  # warm-up (triangulation cache, allocator)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 96, 192])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for size in args.sizes:
        graph = klmgraph.triangular(size, size, t1=1.0, t3=-0.85)
        spins = klmgraph.skyrmion_crystal(graph, m_z=0.3, device=args.device)
        provider = Heisenberg(graph, 1.0) + SingleIonAnisotropy(0.1)
        for dtype in (torch.float32, torch.float64):
            s = spins.to(dtype)
            for integrator in ("heun", "midpoint"):
                llg = klmgraph.LLG(provider, dt=0.05, alpha=0.1, temperature=0.01, field=(0, 0, 0.01),
                                   integrator=integrator)
                gen = torch.Generator(device=args.device).manual_seed(0)
                t = timed(lambda: llg.step(s, gen), args.repeat)
                print(f"triangular {size}x{size} {str(dtype)[6:]} {integrator:8s} step: {t * 1e3:8.2f} ms "
                      f"({t / graph.num_nodes * 1e9:6.1f} ns/site)")
        t = timed(lambda: skyrmion_number(graph, spins), args.repeat)
        print(f"triangular {size}x{size} skyrmion_number: {t * 1e3:.2f} ms")
        t = timed(lambda: structure_factor(graph, spins), args.repeat)
        print(f"triangular {size}x{size} structure_factor: {t * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
