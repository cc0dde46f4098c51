"""Prediction time of the ECNN against exact diagonalization, against lattice size (paper Fig. S1).

One "prediction" is the electronic energy and the effective field of every spin for one
configuration of the paper's square model (t1 = 1, J = 7, filling 0.48). Exact
diagonalization (ED) costs O(N^3) in the number of sites N; the ECNN costs O(N). The paper
measured on one A100-40GB: about 1 s for the ECNN at 576 x 576, the largest size that fitted,
and a speed-up of about 700x over ED at 128 x 128. This script measures the same curves on the
machine at hand:

    python examples/prediction_time.py --quick               # CPU, ED up to 24x24, ~1 minute
    python examples/prediction_time.py                       # CPU, ED up to 48x48, ~5 minutes
    python examples/prediction_time.py --device cuda --ed-sizes 32 64 96 128 \\
        --model-sizes 64 128 256 576 1024 2048               # the paper's setting on a GPU

The ECNN has the published architecture; with ../shared/ecnn4klm/square_param.cpt present its
published weights are used (the time does not depend on the weights). Writes
``prediction_time.csv`` and ``prediction_time.png`` (log-log, both curves with their fitted
slopes) to ``--out`` and ends with one line ``speedup_at_<L>x<L>=<ED time / ECNN time>`` at the
largest size that both methods ran.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import torch

import klmgraph
from klmgraph.timing import call_times, machine

CHECKPOINT = Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm" / "square_param.cpt"
SQUARE_PAPER = {"J": 7.0, "filling": 0.48}


def ecnn_provider(graph, device):
    if CHECKPOINT.is_file():
        model = klmgraph.load_ecnn4klm(CHECKPOINT, graph)
    else:
        torch.manual_seed(0)
        model = klmgraph.ECNN.for_graph(graph)
    return model.to(device).bind(graph)


def measure(method: str, size: int, device: str, repeats: int) -> dict:
    graph = klmgraph.square(size, size)
    if method == "ED":
        provider = klmgraph.ExactDiagonalization(graph, **SQUARE_PAPER)
        spins = klmgraph.random_spins(graph, seed=0, device=device)
    else:
        provider = ecnn_provider(graph, device)
        spins = klmgraph.random_spins(graph, seed=0, dtype=torch.float32, device=device)
    # ED above ~30 s per call: one timed call is enough
    times = call_times(lambda: provider.energy_and_field(spins), repeats=repeats, device=device,
                       budget=30.0, min_seconds=0.5)
    return {"method": method, "L": size, "sites": graph.num_nodes, "seconds": min(times), "calls": len(times)}


def slope(rows: list) -> float:
    """Exponent of a power-law fit, seconds ~ N^slope, over the larger half of the sizes (small
    sizes are dominated by fixed per-call costs)."""
    rows = sorted(rows, key=lambda r: r["sites"])[len(rows) // 2:]
    if len(rows) < 2:
        return float("nan")
    x, y = np.log([r["sites"] for r in rows]), np.log([r["seconds"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def plot(rows: list, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for method, marker in (("ED", "o"), ("ECNN", "s")):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["sites"])
        if mine:
            ax.loglog([r["sites"] for r in mine], [r["seconds"] for r in mine], marker=marker,
                      label=f"{method} (fit: N^{slope(mine):.2f})")
    ax.set_xlabel("sites N")
    ax.set_ylabel("seconds per prediction (E and B)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="ED up to 24x24, ECNN up to 192x192 (about a minute)")
    p.add_argument("--ed-sizes", type=int, nargs="+", help="ED lattice sides (default 8 12 16 24 32 48)")
    p.add_argument("--model-sizes", type=int, nargs="+", help="ECNN lattice sides (default 8 ... 384)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per size (best is kept)")
    p.add_argument("--out", default="klmgraph-output/prediction_time")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ed_sizes = args.ed_sizes or ([8, 12, 16, 24] if args.quick else [8, 12, 16, 24, 32, 48])
    model_sizes = args.model_sizes or ([8, 12, 16, 24, 48, 96, 192] if args.quick
                                       else [8, 12, 16, 24, 32, 48, 96, 192, 384])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine(args.device)
    weights = "published square weights" if CHECKPOINT.is_file() else "random weights (checkpoint absent)"
    print(f"machine: {json.dumps(info)}; ECNN with {weights}")

    rows = []
    for method, sizes in (("ED", ed_sizes), ("ECNN", model_sizes)):
        for size in sizes:
            try:
                row = measure(method, size, args.device, args.repeats)
            except torch.cuda.OutOfMemoryError:
                print(f"{method} {size}x{size}: out of memory; the largest size that fits is the previous one")
                break
            rows.append(row)
            print(f"{method:5s} {size:5d}x{size:<5d} {row['sites']:8d} sites  {row['seconds']:10.4f} s", flush=True)

    with open(out / "prediction_time.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "L", "sites", "seconds", "calls"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "machine.json").write_text(json.dumps(info, indent=2))
    device = info.get("gpu") or f"{info['cpu']}, {info['torch_threads']} threads"
    plot(rows, out / "prediction_time.png", f"square model, {device}, {info['date']}")

    ed = {r["L"]: r["seconds"] for r in rows if r["method"] == "ED"}
    ml = {r["L"]: r["seconds"] for r in rows if r["method"] == "ECNN"}
    common = sorted(set(ed) & set(ml))
    print(f"table {out / 'prediction_time.csv'}, plot {out / 'prediction_time.png'}")
    if not common:
        print("speedup: no size was run by both methods")
        return math.nan
    largest = common[-1]
    speedup = ed[largest] / ml[largest]
    print(f"speedup_at_{largest}x{largest}={speedup:.1f}")
    return speedup


if __name__ == "__main__":
    main()
