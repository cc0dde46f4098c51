"""Speed and memory of the ECNN against the published ecnn4klm code and the FLOP bound.

Writes the tables of docs/benchmarks.md (markdown on stdout, raw rows with ``--json``):

1. headline: energy + field of the published triangular (K = 13) and square (K = 5) models at
   96x96 through ``model.bind(graph).energy_and_field``, 1 thread: the compiled kernel
   (default), the eager PyTorch path, the e3nn reference and the published ecnn4klm code (its
   own ``Net``), timed interleaved in one process so that the ratios are side by side; with the
   FLOP estimate of the architecture and the fraction of this machine's float32 matmul speed
   (measured on one core in the same run) that the kernel reaches;
2. per-site time and memory against lattice size (16x16 to 512x512), each in a fresh process
   (memory: increase of the peak resident set size during the calls);
3. threads: 1 and 2 pinned and the default "auto", continuous runs in alternating blocks,
   4. batches of configurations, 5. the training step of the
   trainer's path (``model.energy(spins, model.prepare(graph))`` + ``compute_field(...,
   training=True)``, energy + force loss, double backward) through the kernel and the eager
   path against the same step of the ecnn4klm code, 6. the time an LLG step spends outside the
   force provider.

Usage::

    python benchmarks/model.py                    # CPU plan (about 25 minutes on a loaded 2-core machine)
    python benchmarks/model.py --quick            # a smoke run (a minute)
    python benchmarks/model.py --device cuda      # GPU: eager path and ecnn4klm, sizes until out of memory,
                                                  # peak memory; training step (--sections sizes training)

The published checkpoints and code are looked for in ../shared/ecnn4klm/ beside the repository;
where they are absent, the models get random weights with the published hyper-parameters and
the ecnn4klm rows are skipped with a message. Speed does not depend on the weights.
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
from klmgraph.files import atomic_path  # noqa: E402
from klmgraph.timing import call_times, machine, synchronize  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
PEER = SHARED / "ecnn4klm"
CHECKPOINTS = {"triangular": PEER / "triangle_param.cpt", "square": PEER / "square_param.cpt"}
LATTICES = {
    "square": lambda L: klmgraph.square(L, L),
    "triangular": lambda L: klmgraph.triangular(L, L, t1=1.0, t3=-0.85),
}
IMPLEMENTATIONS = ("kernel", "eager", "reference", "ecnn4klm")


# ----------------------------------------------------------------------------- models
def published_model(lattice: str, graph, device="cpu") -> klmgraph.ECNN:
    """The published model (checkpoint if present, else random weights, published sizes)."""
    if CHECKPOINTS[lattice].is_file():
        return klmgraph.load_ecnn4klm(CHECKPOINTS[lattice], graph).to(device)
    torch.manual_seed(0)
    return klmgraph.ECNN.for_graph(graph).to(device)


def peer_net(lattice: str):
    """The ecnn4klm ``Net`` with its checkpoint, or None (with a message) where absent."""
    if not (PEER / "upstream" / "model.py").is_file():
        print(f"# ecnn4klm rows skipped: {PEER / 'upstream'} is absent", flush=True)
        return None
    sys.path.insert(0, str(SHARED))
    module = __import__(f"ecnn4klm.upstream.{'triangle' if lattice == 'triangular' else 'square'}_net",
                        fromlist=["Net"])
    net = module.Net()
    if CHECKPOINTS[lattice].is_file():
        state = torch.load(CHECKPOINTS[lattice], map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("model_state_dict", state))
    return net


def evaluator(kind: str, lattice: str, size: int, batch: int | None = None, device="cpu", threads="auto"):
    """A call ``fn()`` computing energy + field of one (or ``batch``) random configuration(s)
    (``threads``: the bound model's kernel threads, see ``bind``)."""
    graph = LATTICES[lattice](size)
    spins = klmgraph.random_spins(graph, batch=batch, seed=0, dtype=torch.float32, device=device)
    if kind == "ecnn4klm":
        net = peer_net(lattice)
        if net is None:
            return None, graph, None
        net = net.to(device)
        grid = spins.reshape(batch or 1, size, size, 3)  # sites are numbered i1 * L2 + i2

        def fn():
            s = grid.detach().requires_grad_(True)
            energy = net(s).sum()
            return energy, -torch.autograd.grad(energy, s)[0]
        return fn, graph, None
    model = published_model(lattice, graph, device)
    model.fused = kind == "kernel"
    if kind == "reference":
        model.implementation = "reference"
    bound = model.bind(graph, threads=threads)
    return (lambda: bound.energy_and_field(spins)), graph, bound


def flops_per_site(model: klmgraph.ECNN) -> float:
    """Multiply-adds x 2 of energy + field: per convolution the mixing matmuls (forward and the
    input gradient), the Clebsch-Gordan products and the read-out, counted from the model."""
    macs = 0
    for conv in [b.conv for b in model.blocks] + [model.output.conv]:
        for a, (mul, ir) in enumerate(conv.irreps_in):
            q = sum(conv.irreps_out[c].mul for _, c, _ in conv._paths[a])
            macs += 2 * ir.dim * conv.num_classes * mul * q  # forward + input gradient
        for c, (mul, ir) in enumerate(conv.irreps_out):
            nonzero = int((conv._cg_matrix(c, torch.float64, "cpu") != 0).sum())
            macs += 3 * mul * nonzero  # forward, dE/dz, dE/dY
    macs += 2 * sum(l.irreps_in.dim * l.irreps_out.dim for l in model.output.linears)
    return 2.0 * macs


def matmul_gflops(seconds: float = 2.0) -> float:
    """float32 matmul speed of one core: best CPU time (process time, as the CPU-time columns:
    on a shared machine wall time also counts other jobs' slices) of 512 x 512 products."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.process_time()
        for _ in range(20):
            a @ b
        best = min(best, (time.process_time() - t) / 20)
    torch.set_num_threads(threads)
    return 2 * 512 ** 3 / best / 1e9


def interleaved(fns: dict, rounds: int, budget: float = 60.0, block: int = 1) -> dict:
    """Best wall and CPU seconds of each call, the different entries alternating (``block``
    consecutive calls of each entry per round: the later ones find their data in cache, as the
    steps of a training run do, not flushed by the other entry's call)."""
    for fn in fns.values():
        fn()  # warm-up: compiles the kernel, builds e3nn code
    best = {k: (float("inf"), float("inf")) for k in fns}
    start = time.perf_counter()
    for r in range(rounds):
        for k, fn in fns.items():
            for _ in range(block):
                t, c = time.perf_counter(), time.process_time()
                fn()
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                best[k] = (min(best[k][0], wall), min(best[k][1], cpu))
        if r >= 1 and time.perf_counter() - start > budget:
            break
    return best


# ----------------------------------------------------------------------------- sections
def headline(args) -> list:
    torch.set_num_threads(1)
    rows = []
    for lattice in args.lattices:
        fns, graph = {}, None
        for kind in IMPLEMENTATIONS:
            fn, graph, _ = evaluator(kind, lattice, args.headline_size)
            if fn is not None:
                fns[kind] = fn
        model = published_model(lattice, graph)
        best = interleaved(fns, args.rounds, budget=args.budget)
        flops = flops_per_site(model)
        for kind, (wall, cpu) in best.items():
            rows.append({"lattice": lattice, "size": args.headline_size, "implementation": kind,
                         "us_per_site": wall / graph.num_nodes * 1e6, "cpu_us_per_site": cpu / graph.num_nodes * 1e6,
                         "mflop_per_site": flops / 1e6})
            print(rows[-1], flush=True)
    return rows


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def one_size(kind: str, lattice: str, size: int, repeats: int) -> dict:
    """Child process: best time of one call and the memory the calls needed: the peak resident
    set during the calls (the first one included) above the resident set before them (the peak is reset first, Linux
    /proc/self/clear_refs, so that building the model, e.g. e3nn's code generation, does not
    hide it; elsewhere the increase of the lifetime peak, an underestimate)."""
    import gc

    fn, graph, _ = evaluator(kind, lattice, size)
    if fn is None:
        return {}
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        before, peak = _status_mb("VmRSS"), lambda: _status_mb("VmHWM")
    except OSError:
        before, peak = _peak_rss_mb(), _peak_rss_mb
    # the first call counts (the kernel's workspace is allocated there and kept with the graph)
    best = interleaved({kind: fn}, repeats)[kind]
    return {"lattice": lattice, "size": size, "sites": graph.num_nodes, "implementation": kind,
            "us_per_site": best[0] / graph.num_nodes * 1e6, "cpu_us_per_site": best[1] / graph.num_nodes * 1e6,
            "memory_mb": peak() - before}


def sizes_table(args) -> list:
    rows = []
    for lattice in args.lattices:
        for size in args.sizes:
            for kind, limit in (("kernel", 10**9), ("eager", args.eager_max), ("reference", args.reference_max),
                                ("ecnn4klm", args.peer_max)):
                if size > limit:
                    continue
                cmd = [sys.executable, __file__, "--threads", "1", "--one",
                       json.dumps([kind, lattice, size, 2 if size >= 256 else args.repeats])]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"# {kind} {lattice} {size}: failed\n{out.stderr[-1500:]}", flush=True)
                    continue
                row = json.loads(out.stdout.strip().splitlines()[-1])
                if row:
                    rows.append(row)
                    print(row, flush=True)
    return rows


def blocks(fns: dict, block: int, rounds: int, budget: float) -> dict:
    """Wall and CPU seconds of every call, ``block`` consecutive calls of one entry at a time,
    the entries alternating (a load change hits all of them); stateful entries (the adaptive
    thread count) see one continuous run, as in a simulation."""
    for fn in fns.values():
        fn()  # warm-up: compiles the kernel, builds e3nn code
    times = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(rounds):
        for k, fn in fns.items():
            for _ in range(block):
                t, c = time.perf_counter(), time.process_time()
                fn()
                times[k].append((time.perf_counter() - t, time.process_time() - c))
        if r >= 1 and time.perf_counter() - start > budget:
            break
    return times


def threads_table(args) -> list:
    """Threads 1 and 2 pinned (``bind(graph, threads=k)``) and the default "auto" (torch's
    count 2, the count chosen by timing), each a continuous run of calls in blocks, the blocks
    alternating: mean (what a simulation sees) and best per-call times, and for "auto" the share
    of calls it made with 2 threads. The eager path (no thread choice) with torch 1 and 2."""
    rows = []
    for lattice in args.lattices:
        for size in args.thread_sizes:
            calls, counts = {}, []
            for setting in (1, 2, "auto"):
                fn, graph, bound = evaluator("kernel", lattice, size, threads=setting)
                if setting == "auto":
                    record = bound.threads.record
                    bound.threads.record = (lambda count, *a, record=record: counts.append(count) or record(count, *a))

                def call(fn=fn, torch_threads=1 if setting == 1 else 2):
                    torch.set_num_threads(torch_threads)
                    fn()
                calls[("kernel", setting)] = call
            if size <= args.eager_threads_max:  # the eager path with 2 threads can take seconds per call
                fn, graph, _ = evaluator("eager", lattice, size)
                for threads in (1, 2):
                    calls[("eager", threads)] = (lambda fn=fn, threads=threads: torch.set_num_threads(threads) or fn())
            load = os.getloadavg()[0]
            times = blocks(calls, args.thread_block, args.rounds, args.budget)
            for (kind, setting), t in times.items():
                wall, cpu = [x[0] for x in t], [x[1] for x in t]
                row = {"lattice": lattice, "size": size, "implementation": kind, "threads": setting,
                       "calls": len(t), "us_per_site_mean": sum(wall) / len(wall) / graph.num_nodes * 1e6,
                       "us_per_site": min(wall) / graph.num_nodes * 1e6,
                       "cpu_us_per_site": sum(cpu) / len(cpu) / graph.num_nodes * 1e6,
                       "load": (load + os.getloadavg()[0]) / 2}
                if setting == "auto":
                    row["two_thread_share"] = counts.count(2) / max(1, len(counts))
                rows.append(row)
                print(rows[-1], flush=True)
    torch.set_num_threads(1)
    return rows


def batch_table(args) -> list:
    torch.set_num_threads(1)
    rows = []
    for lattice in args.lattices:
        fns, sites = {}, {}
        for batch, size in args.batches:
            fn, graph, _ = evaluator("kernel", lattice, size, batch=None if batch == 1 else batch)
            fns[(batch, size)] = fn
            sites[(batch, size)] = batch * graph.num_nodes
        best = interleaved(fns, args.rounds, budget=args.budget)
        for (batch, size), (wall, cpu) in best.items():
            rows.append({"lattice": lattice, "batch": batch, "size": size, "us_per_site": wall / sites[(batch, size)] * 1e6,
                         "cpu_us_per_site": cpu / sites[(batch, size)] * 1e6})
            print(rows[-1], flush=True)
    return rows


def training_step(kind: str, lattice: str, size: int, batch: int, peer_backward: str = "own", device="cpu"):
    """One Adam step, loss mean|B - B_ref|^2 + mean((E - E_ref) / N)^2 (double backward), each
    implementation's own: klmgraph's trainer asks for the parameters' gradient alone
    (``loss.backward(inputs=parameters)``); ecnn4klm's learn.py calls ``loss.backward()``, which
    also differentiates with respect to the input spins (``peer_backward="params"``: the peer
    asked for the parameters alone too, a like-for-like comparison)."""
    graph = LATTICES[lattice](size)
    spins0 = klmgraph.random_spins(graph, batch=batch, seed=1, dtype=torch.float32, device=device)
    gen = torch.Generator().manual_seed(2)
    b_ref, e_ref = torch.randn(batch, graph.num_nodes, 3, generator=gen), torch.randn(batch, generator=gen)
    b_ref, e_ref = b_ref.to(device), e_ref.to(device)
    if kind == "ecnn4klm":
        net = peer_net(lattice)
        if net is None:
            return None
        net = net.to(device)
        grid0 = spins0.reshape(batch, size, size, 3)

        def predict():
            s = grid0.detach().requires_grad_(True)
            energy = net(s).reshape(batch, -1).sum(-1)
            field = -torch.autograd.grad(energy.sum(), s, create_graph=True)[0]
            return energy, field.reshape(batch, -1, 3)
        params = list(net.parameters())
    else:
        model = published_model(lattice, graph, device)
        model.fused = kind == "kernel"
        prepared = model.prepare(graph)

        def predict():  # the trainer's path (klmgraph.train.predict_stacked)
            s = spins0.detach().requires_grad_(True)
            energy = model.energy(s, prepared)
            return energy, klmgraph.compute_field(energy, s, training=True)
        params = list(model.parameters())
    optimiser = torch.optim.Adam(params, lr=1e-4)

    own_peer = kind == "ecnn4klm" and peer_backward == "own"

    def step():
        optimiser.zero_grad()
        energy, field = predict()
        loss = ((field - b_ref) ** 2).mean() + (((energy - e_ref) / graph.num_nodes) ** 2).mean()
        loss.backward() if own_peer else loss.backward(inputs=params)
        optimiser.step()
    return step


def training_table(args) -> list:
    torch.set_num_threads(1)
    rows = []
    for lattice in args.lattices:
        size, batch = args.train_size[lattice], args.train_batch
        fns = {k: training_step(k, lattice, size, batch, args.peer_backward) for k in ("kernel", "eager", "ecnn4klm")}
        fns = {k: v for k, v in fns.items() if v is not None}
        best = interleaved(fns, max(2, args.rounds // 2), budget=args.budget, block=args.train_block)
        for kind, (wall, cpu) in best.items():
            rows.append({"lattice": lattice, "size": size, "batch": batch, "implementation": kind, "seconds": wall,
                         "cpu_seconds": cpu, "us_per_site": wall / (batch * size * size) * 1e6,
                         "backward": "loss.backward()" if kind == "ecnn4klm" and args.peer_backward == "own"
                         else "loss.backward(inputs=parameters)"})
            print(rows[-1], flush=True)
    return rows


class _Timed:
    """A force provider that adds up the time spent inside it."""

    def __init__(self, provider):
        self.provider, self.seconds = provider, 0.0

    def energy_and_field(self, spins):
        t = time.perf_counter()
        out = self.provider.energy_and_field(spins)
        self.seconds += time.perf_counter() - t
        return out

    def energy_and_field_unchecked(self, spins):
        t = time.perf_counter()
        out = self.provider.energy_and_field_unchecked(spins)
        self.seconds += time.perf_counter() - t
        return out


def llg_table(args) -> list:
    torch.set_num_threads(1)
    rows = []
    for integrator in ("heun", "midpoint"):
        graph = LATTICES["triangular"](args.headline_size)
        timed = _Timed(published_model("triangular", graph).bind(graph))
        llg = klmgraph.LLG(timed, dt=1.0, alpha=1.0, temperature=1e-3, field=(0, 0, 0.005), integrator=integrator,
                           iterations=2)
        spins = klmgraph.random_spins(graph, seed=3)
        llg.run(spins, 1, seed=0)  # warm-up
        timed.seconds = 0.0
        steps = 3 if args.quick else 20
        start = time.perf_counter()
        llg.run(spins, steps, seed=0)
        total = time.perf_counter() - start
        rows.append({"integrator": integrator, "size": args.headline_size, "ms_per_step": total / steps * 1e3,
                     "provider_ms_per_step": timed.seconds / steps * 1e3,
                     "outside_fraction": 1 - timed.seconds / total})
        print(rows[-1], flush=True)
    return rows


OUT_OF_MEMORY = "out of memory"


def _device_call(make, device, repeats: int, budget: float):
    """Build a call with ``make()`` (None where the implementation is absent) and time it on
    ``device`` with :func:`klmgraph.timing.call_times` (a warm-up call, then ``repeats`` timed
    ones, at least one, fewer once ``budget`` seconds are spent; GPU work waited for). Returns (best seconds, peak MiB of
    the calls above the memory allocated before them: the model, graph tables and inputs built
    by ``make`` are not counted; NaN off CUDA), None where ``make`` gives None, or
    ``OUT_OF_MEMORY``."""
    cuda = torch.device(device).type == "cuda"
    fn = None
    try:
        fn = make()
        if fn is None:
            return None
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = call_times(fn, repeats, device, budget=budget)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
    except torch.OutOfMemoryError:
        return OUT_OF_MEMORY
    finally:
        fn = None  # free the call's tensors before the next size
        if cuda:
            torch.cuda.empty_cache()
    return min(times), peak


def device_sizes(args, device="cuda", rows=None, on_row=lambda: None) -> list:
    """Energy + field on a GPU: the eager path (the compiled kernel is CPU-only) and the
    published ecnn4klm code on the same device, growing lattices until an implementation runs
    out of memory or one of its calls takes longer than a quarter of ``--budget`` (a row says
    which). Rows are appended to ``rows`` and ``on_row()`` is called after each, so that a run
    stopped by a time limit keeps what it measured."""
    rows = [] if rows is None else rows
    sizes = [64, 96] if args.quick else args.gpu_sizes
    for lattice in args.lattices:
        last_fit, stopped = {}, set()
        for size in sizes:
            for kind in ("eager", "ecnn4klm"):
                if kind in stopped:
                    continue

                def make(kind=kind, size=size):
                    return evaluator(kind, lattice, size, device=device)[0]
                result = _device_call(make, device, args.repeats, args.budget)
                row = {"lattice": lattice, "size": size, "implementation": kind}
                if result is None:  # the peer's code is absent (message printed)
                    stopped.add(kind)
                    continue
                if result == OUT_OF_MEMORY:
                    stopped.add(kind)
                    fits = last_fit.get(kind)
                    row["out_of_memory"] = True
                    print(f"{lattice} {size}x{size} {kind}: out of memory; the largest that fit in this run: "
                          + (f"{fits}x{fits}" if fits else "none"), flush=True)
                else:
                    seconds, peak = result
                    sites = size * size
                    last_fit[kind] = size
                    row.update(sites=sites, ms=seconds * 1e3, us_per_site=seconds / sites * 1e6, peak_mib=peak,
                               bytes_per_site=peak * 2**20 / sites)
                    if seconds > args.budget / 4:
                        stopped.add(kind)
                        row["stopped_after"] = f"a call took more than --budget / 4 = {args.budget / 4:g} s"
                    print(row, flush=True)
                rows.append(row)
                on_row()
    return rows


def device_training(args, device="cuda", rows=None, on_row=lambda: None) -> list:
    """The training step on a GPU (eager path; the peer on the same device), at the CPU table's
    batch and size and at larger batches, which a GPU needs not to be launch-bound (``rows``,
    ``on_row``: as :func:`device_sizes`)."""
    rows = [] if rows is None else rows
    for lattice in args.lattices:
        cases = [(args.train_batch, args.train_size[lattice])] + ([] if args.quick else [(16, 96), (64, 96)])
        for batch, size in cases:
            for kind in ("eager", "ecnn4klm"):
                def make(kind=kind, batch=batch, size=size):
                    return training_step(kind, lattice, size, batch, args.peer_backward, device=device)
                result = _device_call(make, device, args.repeats, args.budget)
                if result is None:
                    continue
                row = {"lattice": lattice, "size": size, "batch": batch, "implementation": kind}
                if result == OUT_OF_MEMORY:
                    row["out_of_memory"] = True
                else:
                    seconds, peak = result
                    row.update(seconds=seconds, us_per_site=seconds / (batch * size * size) * 1e6, peak_mib=peak)
                print(row, flush=True)
                rows.append(row)
                on_row()
    return rows


# ----------------------------------------------------------------------------- report
def markdown(info: dict, res: dict) -> str:
    out = [f"Machine: {info.get('gpu', info['cpu'])}, {info['cores']} cores, torch {info['torch']}, {info['date']}; "
           f"load average {info['load_average']:.1f} at the start, {info.get('load_average_end', float('nan')):.1f} "
           "at the end" + ("." if "matmul_gflops" not in info else
                           f"; float32 matmul on one core: {info['matmul_gflops']:.0f} GFLOP/s at the "
                           f"start, {info.get('matmul_gflops_end', float('nan')):.0f} at the end.")]
    gf = info.get("matmul_gflops_end") or info.get("matmul_gflops")
    if res.get("headline"):
        out += ["", "| lattice | 96x96, 1 thread | us / site (wall) | CPU us / site | x ecnn4klm | FLOP bound us / site | "
                "fraction of matmul speed |", "|---|---|---|---|---|---|---|"]
        for r in res["headline"]:
            peer = [q for q in res["headline"] if q["lattice"] == r["lattice"] and q["implementation"] == "ecnn4klm"]
            ratio = f"{peer[0]['cpu_us_per_site'] / r['cpu_us_per_site']:.0f}x" if peer else ""
            bound = r["mflop_per_site"] * 1e6 / (gf * 1e9) * 1e6
            out.append(f"| {r['lattice']} | {r['implementation']} | {r['us_per_site']:.2f} | {r['cpu_us_per_site']:.2f} | "
                       f"{ratio} | {bound:.2f} | {bound / r['cpu_us_per_site']:.1%} |")
        out.append(f"\nFLOP estimate of energy + field: " + ", ".join(
            f"{r['lattice']} {r['mflop_per_site']:.3f} MFLOP/site" for r in res["headline"] if r["implementation"] == "kernel"))
    if res.get("sizes"):
        out += ["", "| lattice | size | sites | implementation | us / site (wall) | CPU us / site | memory | KB / site |",
                "|---|---|---|---|---|---|---|---|"]
        for r in res["sizes"]:
            mem = r.get("memory_mb", float("nan"))
            mem = "| |" if mem != mem else f"| {mem:.0f} MB | {mem * 1024 / r['sites']:.1f} |"
            out.append(f"| {r['lattice']} | {r['size']}x{r['size']} | {r['sites']} | {r['implementation']} | "
                       f"{r['us_per_site']:.2f} | {r['cpu_us_per_site']:.2f} {mem}")
    if res.get("threads"):
        out += ["", "| lattice | size | implementation | threads | calls | us / site, mean (wall) | x 1 thread | "
                "best | CPU us / site, mean | 2 threads chosen | load |", "|---" * 11 + "|"]
        for r in res["threads"]:
            one = [q for q in res["threads"] if q["lattice"] == r["lattice"] and q["size"] == r["size"]
                   and q["implementation"] == r["implementation"] and q["threads"] == 1][0]
            share = f"{r['two_thread_share']:.0%}" if "two_thread_share" in r else ""
            out.append(f"| {r['lattice']} | {r['size']}x{r['size']} | {r['implementation']} | {r['threads']} | "
                       f"{r['calls']} | {r['us_per_site_mean']:.2f} | "
                       f"{one['us_per_site_mean'] / r['us_per_site_mean']:.2f}x | {r['us_per_site']:.2f} | "
                       f"{r['cpu_us_per_site']:.2f} | {share} | {r['load']:.1f} |")
    if res.get("batch"):
        out += ["", "| lattice | configurations x size | us / site (wall) | CPU us / site |", "|---|---|---|---|"]
        out += [f"| {r['lattice']} | {r['batch']} x {r['size']}x{r['size']} | {r['us_per_site']:.2f} | "
                f"{r['cpu_us_per_site']:.2f} |" for r in res["batch"]]
    if res.get("training"):
        out += ["", "| training step (1 thread) | batch | implementation | backward | s (wall) | CPU s | us / site | x ecnn4klm |",
                "|---|---|---|---|---|---|---|---|"]
        for r in res["training"]:
            peer = [q for q in res["training"] if q["lattice"] == r["lattice"] and q["implementation"] == "ecnn4klm"]
            ratio = f"{peer[0]['cpu_seconds'] / r['cpu_seconds']:.1f}x" if peer else ""
            out.append(f"| {r['lattice']} {r['size']}x{r['size']} | {r['batch']} | {r['implementation']} | "
                       f"`{r['backward']}` | {r['seconds']:.3f} | {r['cpu_seconds']:.3f} | {r['us_per_site']:.1f} | {ratio} |")
    if res.get("llg"):
        out += ["", f"| LLG step, triangular {res['llg'][0]['size']}x{res['llg'][0]['size']}, published model, 1 thread | ms / step | in the provider | outside |",
                "|---|---|---|---|"]
        out += [f"| {r['integrator']} | {r['ms_per_step']:.1f} | {r['provider_ms_per_step']:.1f} ms | "
                f"{r['outside_fraction']:.1%} |" for r in res["llg"]]
    if res.get("cuda"):
        out += ["", f"GPU: {info.get('gpu', '?')}. Energy + field of one configuration (eager path; the compiled "
                "kernel is CPU-only), best of the calls after a warm-up; peak memory of the calls above the memory "
                "before them (the model, graph tables and inputs not counted).",
                "", "| lattice | size | implementation | ms | us / site | peak MiB | bytes / site |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['lattice']} | {r['size']}x{r['size']} | {r['implementation']} | " +
                ("out of memory | | | |" if r.get("out_of_memory") else
                 f"{r['ms']:.2f} | {r['us_per_site']:.4f} | {r['peak_mib']:.0f} | {r['bytes_per_site']:.0f} |")
                for r in res["cuda"]]
    if res.get("cuda_training"):
        out += ["", "| GPU training step | batch x size | implementation | s | us / site | peak MiB |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['lattice']} | {r['batch']} x {r['size']}x{r['size']} | {r['implementation']} | " +
                ("out of memory | | |" if r.get("out_of_memory") else
                 f"{r['seconds']:.4f} | {r['us_per_site']:.4f} | {r['peak_mib']:.0f} |") for r in res["cuda_training"]]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--lattices", nargs="+", default=list(LATTICES), choices=list(LATTICES))
    parser.add_argument("--sections", nargs="+", default=["headline", "sizes", "threads", "batch", "training", "llg"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 96, 128, 256, 512])
    parser.add_argument("--headline-size", type=int, default=96)
    parser.add_argument("--eager-max", type=int, default=256)
    parser.add_argument("--gpu-sizes", type=int, nargs="+",
                        default=[64, 96, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096],
                        help="--device cuda: lattice sizes, each implementation until it runs out of memory")
    parser.add_argument("--reference-max", type=int, default=32)
    parser.add_argument("--peer-max", type=int, default=32)
    parser.add_argument("--thread-sizes", type=int, nargs="+", default=[96, 256])
    parser.add_argument("--eager-threads-max", type=int, default=96)
    parser.add_argument("--thread-block", type=int, default=8, help="consecutive calls per entry (threads section)")
    parser.add_argument("--batches", default="1x96,16x24,4x48,64x12", help="configurations x L, comma-separated")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-block", type=int, default=3,
                        help="consecutive training steps per entry and round (training section)")
    parser.add_argument("--peer-backward", choices=["own", "params"], default="own",
                        help="the peer's training step: its learn.py's loss.backward() (also the spins' "
                             "gradient), or the parameters' gradient alone as klmgraph's trainer asks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=90.0,
                        help="seconds per interleaved comparison (--device cuda: per timed call; an "
                             "implementation stops growing once a call takes a quarter of it)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # child process of the size table
        print(json.dumps(one_size(*json.loads(args.one))))
        return
    args.batches = [tuple(int(v) for v in b.split("x")) for b in args.batches.split(",")]
    args.train_size = {"triangular": 36, "square": 30}
    if args.quick:
        args.sizes, args.headline_size, args.thread_sizes, args.rounds = [16, 32], 32, [32], 2
        args.batches, args.train_size, args.budget = [(1, 32), (4, 16)], {"triangular": 12, "square": 12}, 10.0
    info = machine(args.device)
    res = {}

    def save():  # also after every GPU row: a run stopped by a time limit keeps its rows
        if args.json:
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps({"machine": info, **res}, indent=1))

    if args.device == "cuda":
        print(json.dumps(info), flush=True)
        if "sizes" in args.sections:
            device_sizes(args, rows=res.setdefault("cuda", []), on_row=save)
        if "training" in args.sections:
            device_training(args, rows=res.setdefault("cuda_training", []), on_row=save)
    else:
        info["matmul_gflops"] = matmul_gflops()
        print(json.dumps(info), flush=True)
        for section in args.sections:
            res[section] = {"headline": headline, "sizes": sizes_table, "threads": threads_table,
                            "batch": batch_table, "training": training_table, "llg": llg_table}[section](args)
        info["matmul_gflops_end"] = matmul_gflops()
    info["load_average_end"] = os.getloadavg()[0]
    print()
    print(markdown(info, res))
    save()


if __name__ == "__main__":
    main()
