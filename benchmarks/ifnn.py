"""Cost of the IFNN baseline (Zhang and Chern's network) per training step and per evaluation.

The IFNN is the expensive model of the square-lattice comparison on a CPU: about 2300
descriptors per site feed a 1024-wide layer, and a loss on B = -dE/dS needs the double backward.
This times the trainer's own step (``klmgraph.train.predict`` + ``loss_terms`` + Adam) on random
configurations, so that a change of the descriptor code or of the batch size can be measured:

    python benchmarks/ifnn.py --threads 1            # square 30x30, both descriptor sets, batches 1 and 4
"""
from __future__ import annotations

import argparse
import json

import torch
from model import random_batch  # benchmarks/model.py, beside this script

import klmgraph
from klmgraph.nn import IFNN
from klmgraph.timing import call_times, machine
from klmgraph.train import loss_terms, predict


def time_ifnn(size: int, batch_size: int, repeats: int, bonds="all") -> dict:
    graph = klmgraph.square(size, size)
    torch.manual_seed(0)
    model = IFNN.for_graph(graph, bonds=bonds)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = random_batch(graph, batch_size)

    def training_step():
        optimizer.zero_grad()
        energy, field = predict(model, batch, training=True)
        field_mse, _ = loss_terms(energy, field, batch)
        field_mse.backward()
        optimizer.step()

    def evaluation():
        predict(model, batch, training=False)

    return {"lattice": f"square {size}x{size}", "bonds": bonds, "batch": batch_size, "descriptors": model.num_descriptors[0],
            "training_step_s": min(call_times(training_step, repeats)),
            "evaluation_s": min(call_times(evaluation, repeats))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--bonds", nargs="+", default=["all", "centre"], help='descriptor sets ("all", "centre")')
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [time_ifnn(args.size, b, args.repeats, bonds) for bonds in args.bonds for b in args.batches]
    info = machine()
    print(f"{info['date']}, {info['cpu']}, {info['torch_threads']} torch threads, "
          f"load average {info['load_average']}, torch {info['torch']}\n")
    print("| lattice | bonds | descriptors per site | batch | training step (s) | per configuration (s) | evaluation (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['lattice']} | {r['bonds']} | {r['descriptors']} | {r['batch']} | {r['training_step_s']:.3f} "
              f"| {r['training_step_s'] / r['batch']:.3f} | {r['evaluation_s']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
