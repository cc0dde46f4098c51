"""Cost of the IFNN baseline (Zhang and Chern's network) per training step and per evaluation.

The IFNN is the expensive model of the square-lattice comparison on a CPU: about 2300
descriptors per site feed a 1024-wide layer, and a loss on B = -dE/dS needs the double backward.
This times the trainer's own step (``klmgraph.train.predict_stacked`` + ``stacked_loss_terms`` +
Adam, on a ``StackedData`` batch as ``train`` makes it) on random configurations, so that a change of the descriptor code or of the batch size can be measured:

    python benchmarks/ifnn.py --threads 1            # square 30x30, both descriptor sets, batches 1 and 4
"""
from __future__ import annotations

import argparse
import json

import torch
import klmgraph
from klmgraph.data import SpinDataset
from klmgraph.nn import IFNN
from klmgraph.timing import call_times, machine
from klmgraph.train import StackedData, predict_stacked, stacked_loss_terms


def time_ifnn(size: int, batch_size: int, repeats: int, bonds="all") -> dict:
    graph = klmgraph.square(size, size)
    torch.manual_seed(0)
    model = IFNN.for_graph(graph, bonds=bonds)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # random labels: the cost does not depend on them
    generator = torch.Generator().manual_seed(0)
    spins = klmgraph.random_spins(graph, batch=batch_size, seed=0)
    data = SpinDataset(graph, spins, torch.randn(batch_size, generator=generator, dtype=torch.float64),
                       torch.randn(spins.shape, generator=generator, dtype=torch.float64))
    stacked = StackedData(model, data, torch.float32, torch.device("cpu"))
    batch = next(stacked.batches(torch.arange(batch_size), batch_size))

    def training_step():
        optimizer.zero_grad()
        energy, field = predict_stacked(model, stacked.prepared, batch, training=True)
        field_mse, _ = stacked_loss_terms(energy, field, batch)
        field_mse.backward()
        optimizer.step()

    def evaluation():
        predict_stacked(model, stacked.prepared, batch, training=False)

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
