"""Time and peak memory of ExactDiagonalization.energy_and_field against a bare torch.linalg.eigh.

For each lattice size, both are run on the same spins in the same process (interleaved, median
of ``--repeats``): the ED call assembles the 2N x 2N Hamiltonian from the edge list, diagonalises
it and extracts energy and field; the bare call only diagonalises a prepared copy of the same
matrix. Their ratio is the overhead of klmgraph's assembly and field extraction.

Peak memory: on CUDA, torch.cuda.max_memory_allocated during the call; on CPU, the peak resident
set size sampled every millisecond during the call, minus the resident size just before it.

    python benchmarks/ed.py                       # square 8..48, triangular 12..48 (CPU: ~15 min)
    python benchmarks/ed.py --quick               # up to 24x24
    python benchmarks/ed.py --device cuda --markdown docs/ed_gpu.md
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

import klmgraph
from klmgraph.timing import call_times, machine

MODELS = {
    "square": (lambda L: klmgraph.square(L, L), {"J": 7.0, "filling": 0.48}),
    "triangular": (lambda L: klmgraph.triangular(L, L, t3=-0.85), {"J": -1.0, "mu": -3.5}),
}
SIZES = {"square": [8, 12, 16, 24, 32, 48], "triangular": [12, 16, 24, 32, 48]}


def _libc_malloc(fixed_mmap_threshold: bool = False) -> None:
    """Return freed heap memory to the OS, so that CPU RSS tracks allocations: glibc otherwise
    keeps freed blocks resident and reuses them, and a second large allocation would not show
    in the resident set size. With ``fixed_mmap_threshold`` large blocks are always mmapped
    (and unmapped on free), which slows allocation: only for the memory-measuring child."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    if fixed_mmap_threshold:
        libc.mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD = 128 KiB
    libc.malloc_trim(0)


class PeakMemory:
    """Extra memory used while the block runs (bytes): CUDA allocator peak or sampled CPU RSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, self._rss())
            time.sleep(0.001)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            _libc_malloc()
            self._base = self._max = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._rss()) - self._base


def _setup(name: str, L: int, device: torch.device):
    build, params = MODELS[name]
    graph = build(L)
    ed = klmgraph.ExactDiagonalization(graph, **params)
    spins = klmgraph.random_spins(graph, seed=0, device=device)
    matrix = ed.hamiltonian(spins).to(device)
    ed.energy_and_field(spins)  # warm-up (caches the hopping block on the device)
    return graph, ed, spins, matrix


def bench_time(name: str, L: int, repeats: int, device: torch.device) -> dict:
    graph, ed, spins, matrix = _setup(name, L, device)
    # _setup made the warm-up call of ED; the eigh needs none
    ed_times = call_times(lambda: ed.energy_and_field(spins), repeats, device, warmup=False)
    eigh_times = call_times(lambda: torch.linalg.eigh(matrix), repeats, device, warmup=False)
    ed_t, eigh_t = statistics.median(ed_times), statistics.median(eigh_times)
    return {"N": graph.num_nodes, "ed_s": ed_t, "eigh_s": eigh_t, "ratio": ed_t / eigh_t}


def bench_memory_here(name: str, L: int, device: torch.device) -> dict:
    _, ed, spins, matrix = _setup(name, L, device)
    result = {}
    for key, fn in (("ed_mib", lambda: ed.energy_and_field(spins)), ("eigh_mib", lambda: torch.linalg.eigh(matrix))):
        with PeakMemory(device) as memory:
            fn()
        result[key] = memory.peak / 2**20
    return result


def bench_memory(name: str, L: int, device: torch.device) -> dict:
    """Peak extra memory of one call of each (MiB). On CPU this runs in a child process, since
    making RSS track allocations slows allocation down and would distort the timings."""
    if device.type == "cpu":
        out = subprocess.run([sys.executable, __file__, "--memory-of", name, str(L)], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    return bench_memory_here(name, L, device)


def machine_line(device: torch.device) -> str:
    info = machine(device)
    return f"{info.get('gpu') or info['cpu']}, {info['torch_threads']} threads, load average {info['load_average']}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="sizes up to 24x24 only")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per size (1 above 32x32)")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--memory-of", nargs=2, metavar=("LATTICE", "L"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.memory_of:
        _libc_malloc(fixed_mmap_threshold=True)
        print(json.dumps(bench_memory_here(args.memory_of[0], int(args.memory_of[1]), device)))
        return
    header = (f"ED benchmark, {datetime.date.today()}, {machine_line(device)}, torch {torch.__version__}\n\n"
              "| lattice | L x L | N | energy_and_field (s) | bare eigh (s) | ratio | ED peak (MiB) | eigh peak (MiB) |\n"
              "|---|---|---|---|---|---|---|---|")
    print(header, flush=True)
    rows = []
    for name in MODELS:
        for L in SIZES[name]:
            if args.quick and L > 24:
                continue
            r = {**bench_time(name, L, args.repeats if L <= 32 else 1, device), **bench_memory(name, L, device)}
            row = (f"| {name} | {L}x{L} | {r['N']} | {r['ed_s']:.4f} | {r['eigh_s']:.4f} | {r['ratio']:.2f} "
                   f"| {r['ed_mib']:.0f} | {r['eigh_mib']:.0f} |")
            print(row, flush=True)
            rows.append(row)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(header + "\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
