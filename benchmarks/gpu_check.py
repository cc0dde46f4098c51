"""One short check of klmgraph on a CUDA GPU: device tests, cross-device equalities, syncs, speed.

Written without a GPU (2026-12-02, issue 16); CI proves the device discipline on the CPU with
``meta`` tensors (tests/test_device.py) and counts host synchronisations there
(tests/test_host_syncs.py). Run on one NVIDIA H200 on 2026-12-04: every check passed except the
device tests, which failed on a bug of the tests (cuda != cuda:0) and passed when rerun alone after
its fix; report in docs/benchmarks.md, section "Host synchronisations per LLG step". Put each new
report there:

    python benchmarks/gpu_check.py [--out gpu_check.md] [--skip-benchmarks]

It writes one markdown report (machine, date, every check with its result) and exits with 1 if
a check failed. The checks, about 5-10 minutes on one GPU with the benchmarks:

1. tests/test_device.py with ``KLMGRAPH_TEST_DEVICE=cuda`` (bound models, LLG steps with every
   provider, a training step, all on the GPU) and the sync/noise/layering tests;
2. the noise stream: Philox words on the GPU equal the CPU's bit for bit, the Gaussians to
   float64 rounding;
3. a run started on the CPU and continued on the GPU equals a run done on the CPU (float64);
4. host synchronisations per LLG step seen by CUDA itself (``torch.cuda.set_sync_debug_mode``);
5. reproducibility: the same model LLG run and training step twice on the GPU, bit for bit
   (atomic index_add in a backward would break it: see the report);
6. the benchmark tables of benchmarks/llg.py, model.py and ed.py with ``--device cuda``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import klmgraph  # noqa: E402
from klmgraph.noise import gaussian, philox4x32  # noqa: E402
from klmgraph.providers import Heisenberg, SingleIonAnisotropy  # noqa: E402
from klmgraph.timing import machine  # noqa: E402

CUDA = torch.device("cuda")


def check(results, name, fn):
    start = time.perf_counter()
    try:
        ok, detail = fn()
    except Exception as exc:  # a check that crashes is a failed check, reported
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    results.append((name, ok, detail, time.perf_counter() - start))
    print(f"[{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)


def device_tests():
    env = {**os.environ, "KLMGRAPH_TEST_DEVICE": "cuda"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_device.py", "tests/test_noise.py",
                          "tests/test_host_syncs.py", "tests/test_layering.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    return out.returncode == 0, out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]


def noise_across_devices():
    counter = torch.randint(0, 2 ** 32, (100_000, 4), dtype=torch.int64)
    words_equal = torch.equal(philox4x32(counter, (123, 456)), philox4x32(counter.to(CUDA), (123, 456)).cpu())
    z_cpu, z_gpu = gaussian(9, 77, (4, 5000, 3)), gaussian(9, 77, (4, 5000, 3), device=CUDA).cpu()
    diff = float((z_cpu - z_gpu).abs().max())
    return words_equal and diff < 1e-12, f"Philox words equal: {words_equal}; max |z_cpu - z_gpu| = {diff:.2e}"


def resume_on_another_device():
    graph = klmgraph.triangular(12, 12)
    llg = klmgraph.LLG(Heisenberg(graph, 1.0) + SingleIonAnisotropy(0.2), dt=0.05, alpha=0.1, temperature=0.1)
    spins = klmgraph.random_spins(graph, seed=0, dtype=torch.float64)
    with tempfile.TemporaryDirectory() as d:
        whole = klmgraph.simulate(llg, graph, spins, 40, Path(d) / "cpu", snapshot_every=10)
        klmgraph.simulate(llg, graph, spins, 20, Path(d) / "moved", snapshot_every=10)
        moved = klmgraph.simulate(llg, graph, spins.to(CUDA), 40, Path(d) / "moved", snapshot_every=10)
    diff = float((whole.spins - moved.spins.cpu()).abs().max())
    return moved.resumed_from == 20 and diff < 1e-9, f"resumed from {moved.resumed_from}; max |dS| = {diff:.2e}"


def _model_llg():
    torch.manual_seed(0)
    graph = klmgraph.triangular(48, 48)
    model = klmgraph.ECNN.for_graph(graph).to(CUDA)
    llg = klmgraph.LLG(model.bind(graph), dt=0.5, alpha=0.1, temperature=0.01, field=(0, 0, 0.005))
    return graph, model, llg, klmgraph.random_spins(graph, seed=1).to(CUDA)


def cuda_syncs_per_step():
    graph, _, llg, spins = _model_llg()
    with tempfile.TemporaryDirectory() as d:
        klmgraph.simulate(llg, graph, spins, 5, Path(d) / "warm")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                klmgraph.simulate(llg, graph, spins, 100, Path(d) / "run")
        finally:
            torch.cuda.set_sync_debug_mode(0)
    per_step = len(caught) / 100
    sites = sorted({str(w.message).splitlines()[0][:80] for w in caught})[:5]
    return per_step <= 1.3, f"{per_step:.2f} synchronising calls per step (100 steps, default recording); {sites}"


def reproducible():
    graph, model, llg, spins = _model_llg()
    a, b = (llg.run(spins, 20, seed=3).spins for _ in range(2))
    llg_equal = torch.equal(a, b)
    from klmgraph.data import SpinDataset
    from klmgraph.train import StackedData, predict_stacked, stacked_loss_terms
    small = klmgraph.triangular(12, 12)
    s = klmgraph.random_spins(small, batch=8, seed=2)
    data = SpinDataset(small, s, torch.zeros(8, dtype=torch.float64), s.clone())
    net = klmgraph.ECNN.for_graph(small).to(CUDA)
    stacked = StackedData(net, data, torch.float32, CUDA)
    grads = []
    for _ in range(2):
        batch = next(stacked.batches(torch.arange(8), 8))
        energy, field = predict_stacked(net, stacked.prepared, batch, training=True)
        loss = sum(stacked_loss_terms(energy, field, batch))
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
    grads_equal = all(torch.equal(x, y) for x, y in zip(*grads))
    return llg_equal and grads_equal, f"LLG twice bit-identical: {llg_equal}; training gradients: {grads_equal}"


def benchmarks(folder: Path):
    rows = []
    for script, args in (("llg.py", ["--device", "cuda", "--out", str(folder / "llg.md")]),
                         ("model.py", ["--device", "cuda", "--quick", "--json", str(folder / "model.json")]),
                         ("ed.py", ["--device", "cuda", "--quick", "--markdown", str(folder / "ed.md")])):
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                             capture_output=True, text=True)
        rows.append(f"### benchmarks/{script} {' '.join(args)} (exit {out.returncode})\n\n"
                    f"{out.stdout.strip() or out.stderr[-2000:]}\n")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check.md")
    p.add_argument("--skip-benchmarks", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False); on the CPU, "
                 "python -m pytest tests/test_device.py tests/test_host_syncs.py runs the meta-device checks")
    results = []
    check(results, "device tests on cuda", device_tests)
    check(results, "noise stream CPU = GPU", noise_across_devices)
    check(results, "run continued on another device", resume_on_another_device)
    check(results, "CUDA synchronisations per LLG step", cuda_syncs_per_step)
    check(results, "bit-identical reruns on the GPU", reproducible)
    info = machine()
    lines = [f"# klmgraph GPU check, {info.get('date', time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))}", "",
             f"Machine: {info}; GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}", "",
             "| check | result | detail | seconds |", "|---|---|---|---|"]
    lines += [f"| {n} | {'ok' if ok else 'FAIL'} | {d} | {s:.1f} |" for n, ok, d, s in results]
    if not args.skip_benchmarks:
        with tempfile.TemporaryDirectory() as d:
            lines += ["", "## Benchmarks", ""] + benchmarks(Path(d))
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"report: {args.out}")
    return 0 if all(ok for _, ok, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
