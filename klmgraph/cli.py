"""Command-line interface: a thin argument layer over the Python API.

    klmgraph generate [--preset square-paper] [--size 12 12] [--samples 20] --out data.h5
    klmgraph info data.h5
    klmgraph train --config run.toml
    klmgraph evaluate MODEL DATA [--plot parity.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import lattice as lattices
from .data import generate_dataset, load_dataset, read_spins
from .ed import ExactDiagonalization

# The two models of Miyazaki, Mach. Learn.: Sci. Technol. 4, 045006 (2023) (DESIGN.md section 1).
PRESETS = {
    "square-paper": {"lattice": "square", "t1": 1.0, "J": 7.0, "filling": 0.48},
    "triangular-paper": {"lattice": "triangular", "t1": 1.0, "t3": -0.85, "J": -1.0, "mu": -3.5},
}
_LATTICES = {
    "square": (lattices.square_lattice, ("t1", "t2", "t3")),
    "triangular": (lattices.triangular_lattice, ("t1", "t2", "t3")),
    "honeycomb": (lattices.honeycomb_lattice, ("t1",)),
    "kagome": (lattices.kagome_lattice, ("t1",)),
    "cubic": (lattices.cubic_lattice, ("t1",)),
}


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("lattice and Hamiltonian (a preset, then any explicit value overrides it)")
    g.add_argument("--preset", choices=sorted(PRESETS), default="square-paper",
                   help="paper model to start from (default: square-paper = square, t1=1, J=7, filling 0.48)")
    g.add_argument("--lattice", choices=sorted(_LATTICES), help="lattice (default: the preset's)")
    g.add_argument("--size", type=int, nargs="+", default=None, metavar="L",
                   help="cells along each primitive vector (default: 12 12, or 4 4 4 for cubic)")
    g.add_argument("--open", action="store_true", help="open instead of periodic boundaries")
    for name in ("t1", "t2", "t3"):
        g.add_argument(f"--{name}", type=float, help=f"hopping {name} (default: the preset's, else 0; t1 = 1)")
    g.add_argument("--J", type=float, help="Kondo coupling J (default: the preset's)")
    g.add_argument("--filling", type=float, help="electrons per orbital in (0, 1): canonical ensemble")
    g.add_argument("--mu", type=float, help="chemical potential: grand canonical ensemble")
    g.add_argument("--temperature", type=float, default=0.0, help="electronic temperature (default 0)")


def build_model(args: argparse.Namespace) -> ExactDiagonalization:
    """The graph and ED solver named by the lattice/Hamiltonian arguments."""
    preset = dict(PRESETS[args.preset])
    name = args.lattice or preset["lattice"]
    if args.lattice and args.lattice != preset["lattice"]:
        preset = {k: v for k, v in preset.items() if k in ("J", "filling", "mu")}
    builder, hopping_names = _LATTICES[name]
    hoppings = {}
    for key in hopping_names:
        value = getattr(args, key)
        hoppings[key] = value if value is not None else preset.get(key, 1.0 if key == "t1" else 0.0)
    for key in {"t1", "t2", "t3"} - set(hopping_names):
        if getattr(args, key) is not None:
            raise ValueError(f"--{key} is not available for the {name} lattice")
    size = args.size or ([4, 4, 4] if name == "cubic" else [12, 12])
    graph = builder(**hoppings).graph(size, periodic=not args.open)
    J = args.J if args.J is not None else preset["J"]
    filling, mu = args.filling, args.mu
    if filling is None and mu is None:
        filling, mu = preset.get("filling"), preset.get("mu")
    return ExactDiagonalization(graph, J=J, filling=filling, mu=mu, temperature=args.temperature)


def _generate(args: argparse.Namespace) -> None:
    ed = build_model(args)
    spins = read_spins(args.spins) if args.spins else None
    path = generate_dataset(args.out, ed, num_samples=None if spins is not None else args.samples,
                            spins=spins, seed=args.seed, batch_size=args.batch_size,
                            progress=not args.quiet, overwrite=args.overwrite)
    data = load_dataset(path)
    print(f"wrote {path}: {len(data)} configurations on {data.graph.describe()}")
    print(f"Hamiltonian: {json.dumps(data.hamiltonian)}")
    print(f"E_el per site: mean {float(data.energy.mean()) / data.graph.num_nodes:.6f}, "
          f"|B| per site: mean {float(data.field.norm(dim=-1).mean()):.6f}")


def _info(args: argparse.Namespace) -> None:
    data = load_dataset(args.path, allow_partial=True)
    print(f"{args.path}: {len(data)} complete configurations on {data.graph.describe()}")
    print(f"Hamiltonian: {json.dumps(data.hamiltonian)}")


def _train(args: argparse.Namespace) -> None:
    from .train import load_config, train

    config = load_config(args.config)
    result = train(config, resume=not args.restart, progress=not args.quiet)
    last = result["history"][-1] if result["history"] else {}
    print(f"run folder {result['out']}: {result['epochs_run']} epochs, best at epoch {result['best_epoch']}")
    if last:
        print(f"last epoch: train RMSE(B) {last['train_rmse_field']:.5f}, "
              f"validation RMSE(B) {last['val_rmse_field']:.5f}")


def _evaluate(args: argparse.Namespace) -> None:
    from .io import load_model
    from .plot import parity_plot
    from .train import evaluate

    data = load_dataset(args.data)
    model = load_model(args.model, graph=data.graph)
    metrics = evaluate(model, data, batch_size=args.batch_size)
    print(f"{args.data}: {len(data)} configurations on {data.graph.describe()}")
    print(f"rmse_field={metrics['rmse_field']:.6g} rmse_energy_per_site={metrics['rmse_energy_per_site']:.6g}")
    plot = args.plot or str(Path(args.model).with_suffix("")) + "-parity.png"
    parity_plot(metrics["field_pred"], metrics["field_true"], plot,
                title=f"{Path(args.model).name} on {Path(args.data).name}: RMSE(B) = {metrics['rmse_field']:.4g}")
    print(f"parity plot: {plot}")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klmgraph", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write an exact-diagonalization data set (HDF5)",
                         description="Label random or given spin configurations with the exact electronic "
                                     "energy and effective field. Re-running on an unfinished file resumes it.")
    _add_model_arguments(gen)
    gen.add_argument("--samples", type=int, default=20, help="random configurations (default 20)")
    gen.add_argument("--spins", help="label the configurations in this .npy/.npz/.h5 file instead")
    gen.add_argument("--seed", type=int, default=0, help="seed of the random configurations (default 0)")
    gen.add_argument("--batch-size", type=int, default=1, help="configurations diagonalised together (default 1)")
    gen.add_argument("--out", default="klmgraph-data.h5", help="output file (default klmgraph-data.h5)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing file with other settings")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_generate)

    tr = sub.add_parser("train", help="train a model on ED data sets (TOML configuration)",
                        description="Train an ECNN or IFNN. Every key of the configuration, with its "
                                    "default, is documented in docs/training.md. An interrupted run "
                                    "resumes from <out>/last.pt.")
    tr.add_argument("--config", required=True, help="TOML run configuration")
    tr.add_argument("--restart", action="store_true", help="ignore an existing last.pt and start afresh")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="RMSE of a saved model on a data set, and a parity plot")
    ev.add_argument("model", help="model file (model.save / klmgraph train's best.pt)")
    ev.add_argument("data", help="HDF5 data set from klmgraph generate")
    ev.add_argument("--plot", help="parity plot PNG (default: next to the model)")
    ev.add_argument("--batch-size", type=int, default=4)
    ev.set_defaults(func=_evaluate)

    info = sub.add_parser("info", help="summarise a data set")
    info.add_argument("path")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:
        print(f"klmgraph {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
