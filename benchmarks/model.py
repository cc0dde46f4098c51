"""Speed and memory of the ECNN: energy + forces per site against lattice size, both convolution
implementations, and the time of one training step (double backward).

Usage::

    python benchmarks/model.py                    # CPU plan (~5 minutes on 2 cores)
    python benchmarks/model.py --device cuda      # GPU: grows the lattice until it no longer fits
    python benchmarks/model.py --quick            # a smoke run (seconds)
    python benchmarks/model.py --json out.json    # also write the raw rows

Timings are the best of ``--repeats`` calls (more for small lattices) after one warm-up call;
on a shared machine the best is the least disturbed. The process CPU time is reported too: with
``--threads 1`` it is what the run costs on an idle core even when other jobs compete for it
(with 2 threads on an oversubscribed machine, OpenMP barriers make many small ops very slow). Memory: on CUDA the peak allocated by torch during one call; on
CPU every configuration runs in a fresh subprocess and the increase of its peak resident set
size during the calls is reported (an upper bound on what the evaluation needs).
The model has the published hyper-parameters with random weights (speed does not depend on
the weights); float32.
"""
from __future__ import annotations

import argparse
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
from klmgraph.timing import machine, synchronize  # noqa: E402

LATTICES = {
    "square": lambda L: klmgraph.square(L, L),
    "triangular": lambda L: klmgraph.triangular(L, L, t1=1.0, t3=-0.85),
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def time_energy_and_field(lattice: str, size: int, implementation: str, device: str, repeats: int) -> dict:
    """Best time of one energy + forces call, per site, and the memory it needed."""
    device = torch.device(device)
    graph = LATTICES[lattice](size)
    torch.manual_seed(0)
    model = klmgraph.ECNN.for_graph(graph, implementation=implementation).to(device)
    provider = model.bind(graph)
    spins = klmgraph.random_spins(graph, seed=0, dtype=torch.float32, device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _peak_rss_mb()
    provider.energy_and_field(spins)  # warm-up (builds the reference TensorProduct, caches plans)
    synchronize(device)
    times = []
    # at least `repeats` calls, more for small lattices (up to 20 calls or 0.5 s)
    cpu_times = []
    while len(times) < repeats or (sum(times) < 0.5 and len(times) < 20):
        start, cpu_start = time.perf_counter(), time.process_time()
        provider.energy_and_field(spins)
        synchronize(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if device.type == "cuda":
        memory = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        memory = _peak_rss_mb() - rss_before
    best = min(times)
    return {"lattice": lattice, "size": size, "sites": graph.num_nodes, "implementation": implementation,
            "device": device.type, "seconds": best, "us_per_site": best / graph.num_nodes * 1e6,
            "cpu_us_per_site": min(cpu_times) / graph.num_nodes * 1e6, "memory_mb": memory}


def random_batch(graph, size: int, seed: int = 0):
    """A PyG batch of ``size`` random configurations with random labels (costs do not depend on them)."""
    from torch_geometric.data import Batch

    generator = torch.Generator().manual_seed(seed)
    items = []
    for k in range(size):
        data = graph.clone()
        data.spins = klmgraph.random_spins(graph, seed=seed + k, dtype=torch.float32)
        data.energy = torch.randn(1, generator=generator)
        data.field = torch.randn(graph.num_nodes, 3, generator=generator)
        items.append(data)
    return Batch.from_data_list(items, exclude_keys=["symmetry_perm", "symmetry_rotation"])


def time_training_step(lattice: str, size: int, batch: int, implementation: str, device: str,
                       repeats: int) -> dict:
    """One optimiser step on a batch of configurations with an energy + force loss: the force
    loss needs the derivative of B = -dE/dS with respect to the weights (double backward)."""
    device = torch.device(device)
    graph = LATTICES[lattice](size)
    torch.manual_seed(0)
    model = klmgraph.ECNN.for_graph(graph, implementation=implementation).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = random_batch(graph, batch).to(device)

    def step():
        optimiser.zero_grad()
        spins = data.spins.detach().requires_grad_(True)
        data.spins = spins
        energy = model(data)
        field = klmgraph.compute_field(energy, spins, training=True)
        loss = ((field - data.field) ** 2).mean() + ((energy - data.energy) ** 2).mean()
        loss.backward()
        optimiser.step()

    step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"lattice": lattice, "size": size, "batch": batch, "implementation": implementation,
            "device": device.type, "seconds": min(times)}


def _in_subprocess(kind: str, args: list, threads: int) -> dict:
    """Run one measurement in a fresh interpreter so that peak memory is its own."""
    cmd = [sys.executable, __file__, "--threads", str(threads), "--one", json.dumps([kind, *args])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def plan(args) -> list:
    if args.quick:
        return [(lat, L, impl) for lat in LATTICES for L in (16,) for impl in ("fast", "reference")]
    rows = []
    for lat in args.lattices:
        for L in args.sizes:
            rows.append((lat, L, "fast"))
            if L <= args.reference_max_size:
                rows.append((lat, L, "reference"))
    return rows


def run_cpu(args) -> tuple[list, list]:
    results = []
    for lat, L, impl in plan(args):
        r = _in_subprocess("field", [lat, L, impl, "cpu", args.repeats], args.threads)
        print(f"{lat:10s} {L:4d}x{L:<4d} {impl:9s} {r['us_per_site']:9.2f} us/site  "
              f"(CPU time {r['cpu_us_per_site']:9.2f} us/site)  {r['seconds']:8.3f} s  {r['memory_mb']:8.1f} MB",
              flush=True)
        results.append(r)
    training = []
    for lat, L in (("square", 30), ("triangular", 36)) if args.training else ():
        for impl in ("fast", "reference"):
            if args.quick and impl == "reference":
                continue
            r = _in_subprocess("train", [lat, 12 if args.quick else L, args.batch, impl, "cpu",
                                         1 if args.quick else 2], args.threads)
            print(f"training step {lat} {r['size']}x{r['size']} batch {r['batch']} {impl}: {r['seconds']:.3f} s",
                  flush=True)
            training.append(r)
    return results, training


def run_cuda(args) -> tuple[list, list]:
    results = []
    sizes = [64, 128, 256, 384, 576, 768, 1024, 1536, 2048, 3072, 4096] if not args.quick else [64]
    for lat in args.lattices:
        for impl in ("fast", "reference"):
            for L in sizes:
                if impl == "reference" and L > args.reference_max_size_gpu:
                    break
                try:
                    r = time_energy_and_field(lat, L, impl, "cuda", args.repeats)
                except torch.cuda.OutOfMemoryError:
                    print(f"{lat:10s} {L:4d}x{L:<4d} {impl:9s} out of memory: the largest size that fits "
                          "is the previous one", flush=True)
                    results.append({"lattice": lat, "size": L, "implementation": impl, "device": "cuda",
                                    "out_of_memory": True})
                    torch.cuda.empty_cache()
                    break
                print(f"{lat:10s} {L:4d}x{L:<4d} {impl:9s} {r['seconds'] * 1e3:9.2f} ms  "
                      f"{r['us_per_site']:8.4f} us/site  {r['memory_mb']:9.1f} MB", flush=True)
                results.append(r)
                torch.cuda.empty_cache()
    training = []
    for lat, L in (("square", 30), ("triangular", 36)) if args.training else ():
        for impl in ("fast", "reference"):
            r = time_training_step(lat, L, args.batch, impl, "cuda", args.repeats)
            print(f"training step {lat} {L}x{L} batch {args.batch} {impl}: {r['seconds'] * 1e3:.1f} ms", flush=True)
            training.append(r)
    return results, training


def markdown(info: dict, results: list, training: list) -> str:
    lines = [f"Machine: {info.get('gpu', info['cpu'])} ({info['cores']} cores, {info['torch_threads']} torch "
             f"threads), torch {info['torch']}, {info['date']}; load average {info['load_average']:.1f} at the "
             f"start, {info.get('load_average_end', float('nan')):.1f} at the end.", "",
             "| lattice | size | sites | implementation | energy+forces | per site | CPU time per site | memory |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("out_of_memory"):
            lines.append(f"| {r['lattice']} | {r['size']}x{r['size']} | | {r['implementation']} | out of memory | | | |")
            continue
        lines.append(f"| {r['lattice']} | {r['size']}x{r['size']} | {r['sites']} | {r['implementation']} | "
                     f"{r['seconds'] * 1e3:.1f} ms | {r['us_per_site']:.2f} us | "
                     f"{r.get('cpu_us_per_site', float('nan')):.2f} us | {r['memory_mb']:.0f} MB |")
    speedups = []
    for r in results:
        ref = [q for q in results if q.get("implementation") == "reference" and q["lattice"] == r["lattice"]
               and q["size"] == r["size"] and not q.get("out_of_memory")]
        if r.get("implementation") == "fast" and ref and not r.get("out_of_memory"):
            speedups.append(f"{r['lattice']} {r['size']}x{r['size']}: {ref[0]['seconds'] / r['seconds']:.1f}x")
    if speedups:
        lines += ["", "Fast over reference: " + ", ".join(speedups) + "."]
    if training:
        lines += ["", "| training step (energy + force loss, Adam) | batch | implementation | time |", "|---|---|---|---|"]
        for r in training:
            lines.append(f"| {r['lattice']} {r['size']}x{r['size']} | {r['batch']} | {r['implementation']} | "
                         f"{r['seconds'] * 1e3:.0f} ms |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 96, 128, 256])
    parser.add_argument("--reference-max-size", type=int, default=96)
    parser.add_argument("--reference-max-size-gpu", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="configurations per training step")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lattices", nargs="+", default=list(LATTICES), choices=list(LATTICES))
    parser.add_argument("--no-training", dest="training", action="store_false", help="skip the training step")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:  # child process: one measurement, JSON on stdout
        kind, *rest = json.loads(args.one)
        result = time_energy_and_field(*rest) if kind == "field" else time_training_step(*rest)
        print(json.dumps(result))
        return
    info = machine(args.device)
    print(json.dumps(info))
    results, training = run_cuda(args) if args.device == "cuda" else run_cpu(args)
    print()
    info["load_average_end"] = os.getloadavg()[0]
    print(markdown(info, results, training))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "energy_and_field": results, "training": training},
                                        indent=1))


if __name__ == "__main__":
    main()
