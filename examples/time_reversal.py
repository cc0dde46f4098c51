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


import klmgraph  # noqa: E402
from klmgraph.train import config_from_dict, evaluate, train  # noqa: E402

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
        print(f"   time_reversal={symmetric!s:5}: B RMSE vs {ed.solver} {rmse:.5f}; |E(S) - E(-S)| per site "
              f"{(e - e_m).abs().max() / graph.num_nodes:.2e}; rms of (B(S) + B(-S))/2 {odd_part:.2e} "
              f"(rms B {b_ed.pow(2).mean().sqrt():.3f})")


def train_variant(paths: dict, out: Path, time_reversal: bool, epochs: int, channels: int, seed: int):
    """One model trained by the package trainer; (RMSE of B, RMSE of E/N) on train and validation."""
    config = config_from_dict({
        "data": {"train": str(paths["train"]), "validation": str(paths["val"]), "augment": False},
        "model": {"type": "ecnn", "channels": channels, "time_reversal": time_reversal},
        "optimizer": {"name": "adam", "lr": 0.01, "schedule": "cosine", "early_stopping": 0},
        "training": {"out": str(out), "epochs": epochs, "batch_size": 8, "energy_weight": 1.0, "seed": seed},
    })
    model = train(config, progress=False)["model"]
    return [(m["rmse_field"], m["rmse_energy_per_site"])
            for m in (evaluate(model, klmgraph.load_dataset(paths[split]), batch_size=8) for split in ("train", "val"))]


def main(argv=None):
    parser = argparse.ArgumentParser(description="time-reversal study")
    parser.add_argument("--full", action="store_true", help="larger lattice, more data and steps")
    parser.add_argument("--quick", action="store_true", help="the default small setting (as without --full)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="klmgraph-output/time_reversal", help="data sets and run folders")
    args = parser.parse_args(argv)
    start = time.time()
    published_check(size=24 if args.full else 12, configs=4 if args.full else 2)

    L, n_train, n_val, epochs, channels = (16, 100, 50, 300, 8) if args.full else (8, 40, 20, 100, 4)
    out = Path(args.out)
    graph = klmgraph.square(L, L)
    ed = klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48)
    paths = {split: klmgraph.generate_dataset(out / f"{split}.h5", ed, num_samples=n, seed=seed, progress=False)
             for split, n, seed in (("train", n_train, 100), ("val", n_val, 200))}
    print(f"2. training on square {L}x{L} (J=7, n=0.48, labels: {ed.solver}): {n_train} train / {n_val} validation configurations, "
          f"{epochs} epochs of batch 8, {channels} channels, seeds 0..{args.seeds - 1}")
    for tr in (False, True):
        for seed in range(args.seeds):
            (b_tr, e_tr), (b_val, e_val) = train_variant(paths, out / f"tr{int(tr)}-seed{seed}", tr, epochs,
                                                         channels, seed)
            print(f"   time_reversal={tr!s:5} seed {seed}: B RMSE train {b_tr:.4f} val {b_val:.4f}; "
                  f"E/site RMSE train {e_tr:.2e} val {e_val:.2e}", flush=True)
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
