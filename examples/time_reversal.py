"""Does building in time reversal help the ECNN?

With real hoppings the electronic energy of the Kondo lattice model is even under time
reversal, E_el(-S) = E_el(S), and B(-S) = -B(S); the published ECNN does not build this in.
``ECNN(time_reversal=True)`` symmetrises the site energies, e(S) -> (e(S) + e(-S)) / 2.

This example measures both sides of the question:

1. the published triangular checkpoint: how far it is from time-reversal symmetric, and whether
   symmetrising it changes its field error against exact diagonalization;
2. training from scratch: two models with the same seed and data, one symmetrised, on ED data
   of a small square lattice (quick) or larger settings (``--full``); validation RMSE of B and E.

Run: ``python examples/time_reversal.py`` (about four minutes on a 2-core laptop).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402

import klmgraph  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm" / "triangle_param.cpt"


def published_check(size: int, configs: int) -> None:
    if not CHECKPOINT.is_file():
        print(f"(published checkpoint not found at {CHECKPOINT}; skipping part 1)")
        return
    graph = klmgraph.triangular(size, size, t1=1.0, t3=-0.85)
    ed = klmgraph.ExactDiagonalization(graph, J=-1.0, mu=-3.5)
    spins = klmgraph.random_spins(graph, batch=configs, seed=5)
    e_ed, b_ed = ed.energy_and_field(spins)
    print(f"1. published triangular model on {size}x{size}, {configs} random configurations")
    for symmetric in (False, True):
        provider = klmgraph.load_ecnn4klm(CHECKPOINT, graph, time_reversal=symmetric).bind(graph)
        e, b = provider.energy_and_field(spins.float())
        e_m, b_m = provider.energy_and_field(-spins.float())
        rmse = ((b.double() - b_ed) ** 2).mean().sqrt()
        odd_part = ((b + b_m) / 2).pow(2).mean().sqrt()
        print(f"   time_reversal={symmetric!s:5}: B RMSE vs ED {rmse:.5f}; |E(S) - E(-S)| per site "
              f"{(e - e_m).abs().max() / graph.num_nodes:.2e}; rms of (B(S) + B(-S))/2 {odd_part:.2e} "
              f"(rms B {b_ed.pow(2).mean().sqrt():.3f})")


def make_data(graph, ed, count, seed):
    spins = klmgraph.random_spins(graph, batch=count, seed=seed)
    energy, field = ed.energy_and_field(spins)
    datas = []
    for k in range(count):
        d = graph.clone()
        d.spins, d.energy, d.field = spins[k].float(), energy[k:k + 1].float(), field[k].float()
        datas.append(d)
    return datas


def evaluate(model, datas):
    batch = Batch.from_data_list(datas)
    spins = batch.spins.clone().requires_grad_(True)
    batch.spins = spins
    energy = model(batch)
    field = klmgraph.compute_field(energy, spins)
    n = datas[0].num_nodes
    energy = energy.detach()
    return (float((field - batch.field).pow(2).mean().sqrt()),
            float(((energy - batch.energy) / n).pow(2).mean().sqrt()))


def train(train_set, val_set, graph, time_reversal, steps, batch_size, channels, seed):
    torch.manual_seed(seed)
    model = klmgraph.ECNN.for_graph(graph, channels=channels, time_reversal=time_reversal)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    e_mean = torch.cat([d.energy for d in train_set]).mean()
    with torch.no_grad():  # start the energy offset at the data mean (last bias, per site)
        model.output.linears[-1].bias.fill_(float(e_mean) / graph.num_nodes)
    gen = torch.Generator().manual_seed(seed)
    n = graph.num_nodes
    for step in range(steps):
        idx = torch.randperm(len(train_set), generator=gen)[:batch_size]
        batch = Batch.from_data_list([train_set[i] for i in idx])
        spins = batch.spins.clone().requires_grad_(True)
        batch.spins = spins
        energy = model(batch)
        field = klmgraph.compute_field(energy, spins, training=True)
        loss = (field - batch.field).pow(2).mean() + ((energy - batch.energy) / n).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return evaluate(model, train_set), evaluate(model, val_set)


def main(argv=None):
    parser = argparse.ArgumentParser(description="time-reversal study")
    parser.add_argument("--full", action="store_true", help="larger lattice, more data and steps")
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args(argv)
    start = time.time()
    published_check(size=24 if args.full else 12, configs=4 if args.full else 2)

    L, n_train, n_val, steps, channels = (16, 100, 50, 3000, 8) if args.full else (8, 40, 20, 300, 4)
    graph = klmgraph.square(L, L)
    ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
    train_set, val_set = make_data(graph, ed, n_train, seed=100), make_data(graph, ed, n_val, seed=200)
    print(f"2. training on square {L}x{L} (J=7, n=0.48): {n_train} train / {n_val} validation configurations, "
          f"{steps} steps, {channels} channels, seeds 0..{args.seeds - 1}")
    for tr in (False, True):
        for seed in range(args.seeds):
            (b_tr, e_tr), (b_val, e_val) = train(train_set, val_set, graph, tr, steps, 8, channels, seed)
            print(f"   time_reversal={tr!s:5} seed {seed}: B RMSE train {b_tr:.4f} val {b_val:.4f}; "
                  f"E/site RMSE train {e_tr:.2e} val {e_val:.2e}", flush=True)
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
