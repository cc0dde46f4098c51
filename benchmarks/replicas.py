"""Replicas of one field in one batch against one run each: LLG steps of the published triangular
model on 96 x 96 (issue 14 item 4: "replicas of a field run as one batch where that is faster").

One Heun step of B replicas batched as (B, N, 3) in one provider call against B steps of (N, 3);
prints ms per replica-step of both and their ratio, with the machine and date:

    python benchmarks/replicas.py [--size 96] [--replicas 2] [--repeat 5] [--threads 1]
"""
import argparse
from pathlib import Path

import torch

import klmgraph
from klmgraph.timing import call_times, machine

CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm" / "triangle_param.cpt"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not CHECKPOINT.is_file():
        raise SystemExit(f"no checkpoint at {CHECKPOINT} (DESIGN.md section 4)")
    torch.set_num_threads(args.threads)
    graph = klmgraph.triangular(args.size, args.size, t1=1.0, t3=-0.85)
    provider = klmgraph.load_ecnn4klm(CHECKPOINT, graph).bind(graph)
    llg = klmgraph.LLG(provider, dt=5.0, alpha=1.0, field=(0.0, 0.0, 0.005), integrator="heun")
    spins = klmgraph.random_spins(graph, batch=args.replicas, seed=0)
    gen = torch.Generator().manual_seed(0)
    # the batched step must be the single steps stacked (same numbers), else the timing means nothing
    batched = llg.step(spins, gen)
    single = torch.stack([llg.step(s, gen) for s in spins])
    diff = float((batched - single).abs().max())
    rows = []
    for _ in range(2):  # alternated, so that a change of the machine's load hits both
        t_batch = call_times(lambda: llg.step(spins, gen), args.repeat)
        t_single = call_times(lambda: [llg.step(s, gen) for s in spins], args.repeat)
        rows.append((min(t_batch), min(t_single)))
    t_batch, t_single = min(r[0] for r in rows), min(r[1] for r in rows)
    print(f"{machine()}; torch threads {args.threads}; kernel: {getattr(provider.model, 'fused', 'n/a')}")
    print(f"triangular {args.size}x{args.size}, {args.replicas} replicas, Heun: batched {t_batch * 1e3 / args.replicas:.1f} "
          f"ms per replica-step, one by one {t_single * 1e3 / args.replicas:.1f} ms; batched / single = "
          f"{t_batch / t_single:.2f} (max |batched - single| = {diff:.1e})")


if __name__ == "__main__":
    main()
