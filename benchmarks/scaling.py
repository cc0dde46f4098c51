"""Scaling of split and chunked runs: the figures behind docs/scaling.md.

Sections (each writes a CSV under --out, default docs/figures/):

* ``halo``: halo sites and bytes exchanged per LLG step against domain size (no processes: the
  domains of :mod:`klmgraph.domains` for the published models' receptive fields);
* ``memory``: peak memory of one energy + field evaluation of the published ECNN (float32)
  against lattice size, whole lattice against ``chunk_sites`` chunks (each size in a fresh
  subprocess; on CPU the increase of the peak resident set size (VmHWM) during the call, on CUDA
  torch's peak allocation);
* ``strong``: time per Heun step of a fixed lattice with 1 and 2 processes (gloo, one thread
  each), and one process through the split-run code (its overhead);
* ``weak``: the same with the lattice growing with the processes.

Usage::

    python benchmarks/scaling.py --sections halo memory strong weak
    python benchmarks/scaling.py --quick            # seconds: small sizes
    python benchmarks/scaling.py --sections memory --device cuda --max-size 2048

Timings are the best of ``--repeats`` runs of ``--steps`` steps after a warm-up step, wall
time and process CPU time (on a loaded machine the CPU time is what a step costs on an idle
core; of a split run, the slowest process's). The model
has the published hyper-parameters with random weights; float32 spins and weights.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import klmgraph  # noqa: E402
from klmgraph.domains import domain_of, partition  # noqa: E402
from klmgraph.timing import machine, synchronize  # noqa: E402

RECEPTIVE = {"square": 5, "triangular": 5}  # published ECNN: 4 interaction blocks + output convolution


def lattice(kind: str, l1: int, l2: int | None = None):
    l2 = l1 if l2 is None else l2
    return klmgraph.square(l1, l2) if kind == "square" else klmgraph.triangular(l1, l2, t1=1.0, t3=-0.85)


def halo_rows(sizes, parts_list, kinds=("square", "triangular")) -> list[dict]:
    """Halo of domain 0 (periodic lattices split into equal blocks: every domain alike)."""
    rows = []
    for kind in kinds:
        for size in sizes:
            graph = lattice(kind, size)
            for parts in parts_list:
                if parts > size:
                    continue
                d = domain_of(graph, partition(graph, parts, RECEPTIVE[kind]), 0, RECEPTIVE[kind])
                halo = len(d.halo)
                # Heun: 2 evaluations per step, each one exchange of spins and one of gradients,
                # 3 float32 per site
                rows.append({"lattice": kind, "L": size, "sites": graph.num_nodes, "processes": parts,
                             "owned": d.num_owned, "halo": halo, "halo_fraction": halo / d.num_owned,
                             "bytes_per_step": 2 * 2 * halo * 3 * 4})
                print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------- memory

def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; getrusage's ru_maxrss would include the peak of
    the parent that started this subprocess)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_one(kind: str, size: int, chunk: int | None, device: str) -> dict:
    device = torch.device(device)
    graph = lattice(kind, size)
    torch.manual_seed(0)
    model = klmgraph.ECNN.for_graph(graph).to(device)
    spins = klmgraph.random_spins(graph, seed=0, dtype=torch.float32, device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    before = _peak_rss_mb()
    provider = model.bind(graph, chunk_sites=chunk)
    start = time.perf_counter()
    provider.energy_and_field(spins)
    synchronize(device)
    seconds = time.perf_counter() - start
    memory = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if device.type == "cuda" else _peak_rss_mb() - before
    return {"lattice": kind, "L": size, "sites": graph.num_nodes, "chunk_sites": chunk or 0,
            "chunks": len(provider.chunks or [1]), "memory_mb": memory, "seconds": seconds}


def _subprocess(args: list) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- timing

def _time_split(kind: str, l1: int, l2: int, steps: int, repeats: int) -> dict | None:
    """Per-process worker: best time of ``steps`` Heun steps of the split run (rank 0 reports)."""
    import torch.distributed as dist

    from klmgraph.distributed import split_run

    graph = lattice(kind, l1, l2)
    torch.manual_seed(0)
    model = klmgraph.ECNN.for_graph(graph)
    llg = klmgraph.LLG(model.bind(graph), dt=0.1, alpha=0.5, temperature=0.01, field=(0, 0, 0.005))
    share = split_run(llg, graph)
    owned = klmgraph.random_spins(graph, seed=0, dtype=torch.float32)[share.domain.owned]
    share.llg.run(owned, 1, seed=0)  # warm-up
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        dist.barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        share.llg.run(owned, steps, seed=0)
        best, cpu = min(best, time.perf_counter() - start), min(cpu, time.process_time() - cpu_start)
    # the slowest process sets the pace; its CPU time is what the step costs on an idle core
    both = torch.tensor([best, cpu], dtype=torch.float64)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return {"seconds_per_step": float(both[0]) / steps, "cpu_seconds_per_step": float(both[1]) / steps,
            "owned": share.domain.num_owned, "halo": len(share.domain.halo),
            "received_sites": share.exchange.received_sites}


def _time_single(kind: str, l1: int, l2: int, steps: int, repeats: int) -> dict:
    graph = lattice(kind, l1, l2)
    torch.manual_seed(0)
    model = klmgraph.ECNN.for_graph(graph)
    llg = klmgraph.LLG(model.bind(graph), dt=0.1, alpha=0.5, temperature=0.01, field=(0, 0, 0.005))
    spins = klmgraph.random_spins(graph, seed=0, dtype=torch.float32)
    llg.run(spins, 1, seed=0)
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        llg.run(spins, steps, seed=0)
        best, cpu = min(best, time.perf_counter() - start), min(cpu, time.process_time() - cpu_start)
    return {"seconds_per_step": best / steps, "cpu_seconds_per_step": cpu / steps, "owned": graph.num_nodes,
            "halo": 0, "received_sites": 0}


def timing_rows(cases, steps: int, repeats: int) -> list[dict]:
    from klmgraph.distributed import launch

    rows = []
    for label, kind, l1, l2, processes in cases:
        torch.set_num_threads(1)
        if processes == 0:  # one process, no split-run code
            r = _time_single(kind, l1, l2, steps, repeats)
            processes, path = 1, "single"
        else:
            r = launch(_time_split, processes, (kind, l1, l2, steps, repeats), threads=1)
            path = "split"
        rows.append({"scaling": label, "lattice": kind, "L1": l1, "L2": l2, "sites": l1 * l2, "processes": processes,
                     "path": path, **r})
        print(rows[-1], flush=True)
    return rows


def write(rows: list[dict], path: Path) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from klmgraph.plot import plot_scaling

    def rows(name):
        path = out / name
        return list(csv.DictReader(open(path))) if path.exists() else []

    info = json.loads((out / "scaling_machine.json").read_text()) if (out / "scaling_machine.json").exists() else {}
    note = f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores shared with 3 other jobs, {info.get('date', '?')}"
    plot_scaling(rows("scaling_halo.csv"), rows("scaling_memory.csv"), out / "scaling.png", note=note)
    print(f"wrote {out / 'scaling.png'}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", default=["halo", "memory", "strong", "weak"],
                   choices=["halo", "memory", "strong", "weak"])
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-size", type=int, default=768, help="largest L of the memory section (default 768)")
    p.add_argument("--max-unchunked", type=int, default=384, help="largest L evaluated whole (default 384)")
    p.add_argument("--chunk-sites", type=int, default=16384)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "figures"))
    p.add_argument("--plot", action="store_true", help="only draw scaling.png from the CSVs in --out")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        kind, size, chunk, device = json.loads(args.one)
        print(json.dumps(memory_one(kind, size, chunk, device)))
        return
    out = Path(args.out)
    if args.plot:
        plot(out)
        return
    info = {**machine(args.device), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": os.getloadavg()}
    print(info)
    tag = "_quick" if args.quick else ""
    if "halo" in args.sections:
        sizes = [48, 96] if args.quick else [96, 192, 384, 768, 1536]
        write(halo_rows(sizes, [2, 4, 8, 16, 64]), out / f"scaling_halo{tag}.csv")
    if "memory" in args.sections:
        sizes = [32, 64] if args.quick else [s for s in (96, 192, 384, 768, 1536) if s <= args.max_size]
        rows = []
        for size in sizes:
            for chunk in (None, args.chunk_sites):
                if chunk is None and size > (64 if args.quick else args.max_unchunked):
                    continue
                if chunk is not None and args.quick:
                    chunk = 256
                rows.append(_subprocess(["square", size, chunk, args.device]))
                print(rows[-1], flush=True)
        write(rows, out / f"scaling_memory{tag}.csv")
    base = 32 if args.quick else 128
    timing = []
    if "strong" in args.sections:
        timing += [("strong", "square", base, base, p) for p in (0, 1, 2)]
    if "weak" in args.sections:
        timing += [("weak", "square", base // 2, base, 1), ("weak", "square", base, base, 2)]
    if timing:
        write(timing_rows(timing, args.steps, args.repeats), out / f"scaling_time{tag}.csv")
    (out / f"scaling_machine{tag}.json").write_text(json.dumps(info, indent=1) + "\n")
    if not args.quick:
        plot(out)


if __name__ == "__main__":
    main()
