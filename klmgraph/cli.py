"""Command-line interface: a thin argument layer over the Python API.

    klmgraph demo [--tiny] [--out klmgraph-demo]
    klmgraph generate [--preset square-paper] [--size 12 12] [--samples 20] --out data.h5
    klmgraph info data.h5
    klmgraph train --config run.toml
    klmgraph evaluate MODEL DATA [--plot parity.png]
    klmgraph simulate --preset triangular-paper --size 24 24 --provider ecnn4klm:triangle_param.cpt \
        --hz 0.005 --dt 5 --steps 400 --out run-hz0.005
    klmgraph scan --preset triangular-paper --size 24 24 --provider ecnn4klm:triangle_param.cpt \
        --hz 0.002 0.005 0.008 --dt 5 --steps 400 --jobs 3 --out scan
    klmgraph simulate ... --nprocs 4 (or torchrun --nproc-per-node 4 -m klmgraph simulate ...)
    klmgraph export RUN/trajectory.h5 --format ovf|vtu --out FILE [--step N]
    klmgraph learn --config learn.toml [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import inspect
import functools
import json
import math
import sys
from pathlib import Path

from . import lattice as lattices
from .data import generate_dataset, load_dataset, read_spins
from .distributed import ProcessFailed
from .dynamics import DivergenceError
from .electrons import ExactDiagonalization

# The two models of Miyazaki, Mach. Learn.: Sci. Technol. 4, 045006 (2023) (DESIGN.md section 1).
PRESETS = {
    "square-paper": {"lattice": "square", "t1": 1.0, "J": 7.0, "filling": 0.48},
    "triangular-paper": {"lattice": "triangular", "t1": 1.0, "t3": -0.85, "J": -1.0, "mu": -3.5},
}
# built-in lattices with the hopping amplitudes their builders take
_LATTICES = {name: (builder, tuple(inspect.signature(builder).parameters))
             for name, builder in lattices._BUILT_IN.items()}


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
    g.add_argument("--k-grid", type=int, nargs="+", default=None, metavar="N",
                   help="ED on a k-grid of twisted boundary conditions, one count per lattice direction "
                        "(e.g. 4 4): the lattice is the supercell of an infinite one (default: Gamma only)")


def build_solver(args: argparse.Namespace) -> ExactDiagonalization:
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
    return ExactDiagonalization(graph, J=J, filling=filling, mu=mu, temperature=args.temperature,
                                k_grid=getattr(args, "k_grid", None))



build_model = build_solver  # the old name, kept for scripts that import it (klmgraph.io.build_network builds networks)


def build_provider(spec: str, ed: ExactDiagonalization, device: str = "cpu", kpm_options: dict | None = None,
                   deterministic: bool = False, chunk_sites: int | str | None = None):
    """The force provider named on the command line, for the graph of ``ed``.

    Args:
        spec: "ed" (exact diagonalization), "kpm" (kernel polynomial method on the same
            Hamiltonian), "model:PATH" (a saved klmgraph model) or "ecnn4klm:PATH" (a published
            ecnn4klm checkpoint).
        ed: the ED solver built from the lattice arguments (its graph is the run's graph).
        device: where a model's weights go.
        kpm_options: keyword arguments of :class:`~klmgraph.KPM` (order, probe_distance, ...).
        deterministic: bind a model without atomic additions (bit-identical reruns on a GPU).
        chunk_sites: evaluate a model in chunks of this many sites (or "auto"; see
            :class:`~klmgraph.nn.BoundModel`).

    Raises:
        ValueError: for an unknown provider, a missing file, or a model of another lattice.
    """
    kind, _, path = spec.partition(":")
    if chunk_sites is not None and kind not in ("model", "ecnn4klm"):
        raise ValueError(f"--chunk-sites evaluates a model in chunks; the provider {spec!r} is not a model")
    if kind == "ed" and not path:
        return ed
    if ed.k_grid is not None:
        raise ValueError(f"--k-grid sets the twists of exact diagonalization; {spec!r} "
                         "would ignore it (use ed, or drop --k-grid)")
    if kind == "kpm" and not path:
        return build_kpm(ed, **(kpm_options or {}))
    if kind not in ("model", "ecnn4klm") or not path:
        raise ValueError(f"unknown provider {spec!r}: use ed, kpm, model:PATH or ecnn4klm:PATH")
    if not Path(path).is_file():
        raise ValueError(f"--provider {spec}: no file at {path}")
    try:
        if kind == "model":
            from .io import load_model
            model = load_model(path, graph=ed.graph, map_location=device)
        else:
            from .compat import load_ecnn4klm
            model = load_ecnn4klm(path, ed.graph).to(device)
    except ImportError as err:  # a klmgraph without the model import
        raise ValueError(f"--provider {kind}: this klmgraph cannot load models ({err})") from None
    return model.bind(ed.graph, deterministic=deterministic, chunk_sites=chunk_sites)


# ---- KPM solver: its arguments and construction (self-contained block)
def _add_kpm_arguments(p: argparse.ArgumentParser) -> None:
    from .electrons import KPM

    defaults = inspect.signature(KPM).parameters
    g = p.add_argument_group("KPM solver (--provider kpm / --solver kpm)")
    g.add_argument("--kpm-order", type=int, default=defaults["order"].default,
                   help="Chebyshev moments (default %(default)s)")
    g.add_argument("--kpm-probe-distance", type=int, default=defaults["probe_distance"].default,
                   help="hops between sites that share a probe vector (default %(default)s)")
    g.add_argument("--kpm-kernel", choices=("none", "jackson"), default=defaults["kernel"].default,
                   help="damping of the Chebyshev series (default %(default)s)")


def kpm_options(args: argparse.Namespace) -> dict:
    """The KPM keyword arguments given on the command line."""
    return {"order": args.kpm_order, "probe_distance": args.kpm_probe_distance, "kernel": args.kpm_kernel}


def build_kpm(ed: ExactDiagonalization, **options):
    """A :class:`~klmgraph.KPM` solver for the graph and Hamiltonian of ``ed``."""
    from .electrons import KPM

    return KPM(ed.graph, J=ed.J, filling=ed.filling, mu=ed.mu, temperature=ed.temperature, **options)
# ---- end of the KPM block


def initial_spins(spec: str, graph, seed: int, ansatz_q: float = math.pi / 3, ansatz_mz: float = 0.0):
    """(N, 3) float64 initial state: "random", "ferromagnet" (along z), "ansatz" (triple-Q
    skyrmion crystal with |Q| = ansatz_q and offset ansatz_mz) or "file:PATH" (the last
    configuration of a .npy/.npz/.h5 file, e.g. a trajectory)."""
    from .spins import ferromagnet, random_spins, skyrmion_crystal

    if spec == "random":
        return random_spins(graph, seed=seed)
    if spec == "ferromagnet":
        return ferromagnet(graph)
    if spec == "ansatz":
        return skyrmion_crystal(graph, q=ansatz_q, m_z=ansatz_mz)
    if spec.startswith("file:"):
        return read_spins(spec[5:], graph)[-1]
    raise ValueError(f"unknown initial state {spec!r}: use random, ferromagnet, ansatz or file:PATH")


def _cell_sites(text: str):
    return positive_int_option(text, "--cell-sites", {"auto": "auto", "none": None})


def positive_int_option(text, option: str, keywords: dict):
    """A positive integer from ``text``, or the value of one of the ``keywords`` (text -> value).

    Raises:
        ValueError: naming ``option``.
    """
    if text in keywords:
        return keywords[text]
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be a positive integer or {' or '.join(map(str, keywords))}, "
                         f"got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{option} must be positive, got {value}")
    return value


def run_simulation(args: argparse.Namespace):
    """One simulate run from parsed arguments; returns the :class:`~klmgraph.SimulationResult`."""
    import torch

    from .dynamics import LLG
    from .plot import save_run_figures
    from .simulation import simulate

    ed = build_solver(args)
    graph = ed.graph
    provider = build_provider(args.provider, ed, args.device, kpm_options(args),
                              deterministic=getattr(args, "deterministic", False),
                              chunk_sites=chunk_sites_option(getattr(args, "chunk_sites", None)))
    seed0 = args.seed if args.init_seed is None else args.init_seed
    spins = initial_spins(args.init, graph, seed0, args.ansatz_q, args.ansatz_mz)
    spins = spins.to(dtype=getattr(torch, args.dtype), device=args.device)
    llg = LLG(provider, dt=args.dt, alpha=args.alpha, temperature=args.T, field=(0.0, 0.0, args.hz),
              integrator=args.integrator, iterations=args.iterations)
    # everything that defines the run except its length: a continued run must repeat it
    keys = ("preset", "lattice", "size", "open", "t1", "t2", "t3", "J", "filling", "mu", "temperature",
            "provider", "init", "ansatz_q", "ansatz_mz", "dtype")
    metadata = {k: getattr(args, k) for k in keys}
    if args.provider == "kpm":
        metadata["kpm"] = kpm_options(args)
    metadata["init_seed"] = seed0
    if getattr(args, "k_grid", None):  # only when given, so runs from before k-grids still resume
        metadata["k_grid"] = list(args.k_grid)
    options = uncertainty_options(args)
    runner = simulate
    if split_run_active():
        if options["stop_when_uncertain"] or options["uncertainty_threshold"] is not None:
            raise ValueError("--stop-when-uncertain and --uncertainty-threshold need a run in one process: a split "
                             "run (--nprocs, torchrun) does not evaluate the committee's spread")
        from .distributed import simulate_distributed as runner
        options = {}
    result = runner(llg, graph, spins, args.steps, args.out, snapshot_every=args.snapshot_every,
                    record_every=args.record_every, seed=args.seed, cell_sites=_cell_sites(args.cell_sites),
                    metadata=metadata, overwrite=args.overwrite, progress=not args.quiet, **options)
    if result is None:  # a process of a split run other than the first
        return None
    if not args.no_plots:
        import matplotlib
        matplotlib.use("Agg")
        save_run_figures(graph, args.out, spins=result.spins)
    return result


# ---- committee uncertainty during dynamics (self-contained block)
def _add_uncertainty_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("committee uncertainty (a model:PATH holding a committee)")
    g.add_argument("--stop-when-uncertain", action="store_true",
                   help="stop at the first record whose predicted site error of B leaves the range seen in "
                        "training; that configuration becomes the last snapshot")
    g.add_argument("--uncertainty-threshold", type=float, default=None,
                   help="predicted RMSE of B of a configuration counted as uncertain (default: the committee "
                        "file's threshold; its site threshold applies as well)")


def uncertainty_options(args: argparse.Namespace) -> dict:
    """The uncertainty keyword arguments of :func:`~klmgraph.simulate` from the command line."""
    threshold = getattr(args, "uncertainty_threshold", None)
    if threshold is not None and not threshold > 0:
        raise ValueError(f"--uncertainty-threshold must be positive, got {threshold}")
    return {"stop_when_uncertain": bool(getattr(args, "stop_when_uncertain", False)),
            "uncertainty_threshold": threshold}


def _print_uncertainty(r) -> None:
    u = r.uncertainty
    if not u or "last_rmse_field" not in u:
        return
    first = u["first_uncertain_step"]
    print(f"committee: predicted RMSE(B) {u['last_rmse_field']:.4g} at the end, at most {u['max_rmse_field']:.4g}; "
          f"largest site error {u['max_site_error']:.4g} (thresholds {u['threshold']}, site {u['site_threshold']})"
          + (f"; uncertain from step {first}" if first is not None else "; within the training range")
          + ("; stopped there" if u["stopped_uncertain"] else ""))
# ---- end of the uncertainty block


def _simulate(args: argparse.Namespace) -> None:
    r = launch_simulation(args)
    if r is None:
        return
    start = f"resumed at step {r.resumed_from}" if r.resumed_from is not None else "from step 0"
    print(f"{r.folder}: {r.steps_run} steps {start}, now at step {r.step} (t = {r.time:g}), "
          f"{r.wall_time:.1f} s")
    nsk = "n/a" if r.skyrmion_number is None else f"{r.skyrmion_number:.4f}"
    per = "n/a" if r.skyrmion_number_per_cell is None else f"{r.skyrmion_number_per_cell:.4f}"
    print(f"E/N = {r.energy_per_site:.6f}, |Mz| = {r.abs_mz:.4f}, n_sk = {nsk}, n_sk per cell = {per} ({r.note})")
    _print_uncertainty(r)


def _scan_point(arguments: dict, parameter: str, value: float, folder: Path):
    # module level, so spawned worker processes can unpickle it
    args = argparse.Namespace(**arguments)
    setattr(args, "hz" if parameter == "hz" else "T", value)
    args.out = str(folder)
    args.quiet = True
    return run_simulation(args)


def _scan(args: argparse.Namespace) -> None:
    from .sweep import parse_values, scan

    hz, temps = parse_values(args.hz, "Hz"), parse_values(args.T, "T")
    if len(hz) > 1 and len(temps) > 1:
        raise ValueError("scan one parameter at a time: give several --hz values or several --T values")
    parameter, values = ("temperature", temps) if len(temps) > 1 else ("hz", hz)
    if min(temps) < 0:
        raise ValueError(f"temperatures must be >= 0, got {temps}")
    arguments = dict(vars(args), hz=hz[0], T=temps[0])
    arguments.pop("func")
    if args.jobs > 1 and args.device != "cpu":
        raise ValueError("--jobs > 1 runs on the CPU only; use --jobs 1 with --device " + args.device)
    run = functools.partial(_scan_point, arguments, parameter)
    rows = scan(run, values, args.out, parameter=parameter, jobs=args.jobs,
                title=f"{args.preset}, {'x'.join(map(str, args.size or []))} {args.provider.split(':')[0]}")
    print(f"{'Hz':>10} {'T':>8} {'n_sk/cell':>10} {'|Mz|':>8} {'E/N':>12} {'step':>6}  status")
    for r in rows:
        fmt = (lambda x, f: "" if x is None else format(x, f))
        print(f"{fmt(r['hz'], '10.5g')} {fmt(r['temperature'], '8.4g')} {fmt(r['skyrmion_number_per_cell'], '10.4f')} "
              f"{fmt(r['abs_mz'], '8.4f')} {fmt(r['energy_per_site'], '12.6f')} {fmt(r['step'], '6d')}  {r['status']}")
    print(f"table {Path(args.out) / 'scan.csv'}, plot {Path(args.out) / 'scan.png'}")
    # a run stopped by --stop-when-uncertain did what was asked: not a failure
    failed = [r for r in rows if r["status"] != "ok" and not r["status"].startswith("stopped: uncertain")]
    if failed:
        raise ScanFailed(f"{len(failed)} of {len(rows)} runs failed")


class ScanFailed(RuntimeError):
    """Some runs of a scan stopped (the table holds their messages)."""


def _add_simulation_arguments(p: argparse.ArgumentParser, scan: bool = False) -> None:
    _add_model_arguments(p)
    _add_kpm_arguments(p)
    g = p.add_argument_group("dynamics")
    g.add_argument("--provider", default="ed",
                   help="force provider: ed (exact, small lattices), kpm (kernel polynomial method, O(N)), "
                        "model:PATH (klmgraph model file) or ecnn4klm:PATH (published checkpoint) (default ed)")
    many = {"nargs": "+", "type": str} if scan else {"type": float}
    g.add_argument("--hz", default=["0"] if scan else 0.0, **many,
                   help="field Hz along z, B = B_el + Hz z" + (" (several values: the scan)" if scan else "")
                        + " (default 0)")
    g.add_argument("--T", default=["0"] if scan else 0.0, **many,
                   help="temperature of the thermal noise" + (" (several values: the scan)" if scan else "")
                        + " (default 0; --temperature is the electrons')")
    g.add_argument("--alpha", type=float, default=1.0, help="Gilbert damping (default 1)")
    g.add_argument("--dt", type=float, required=True, help="time step (1 / energy units)")
    g.add_argument("--steps", type=int, required=True, help="total number of steps of the run")
    g.add_argument("--integrator", choices=("heun", "midpoint"), default="heun", help="(default heun)")
    g.add_argument("--iterations", type=int, default=2, help="field evaluations per midpoint step (default 2)")
    g.add_argument("--init", default="random",
                   help="initial state: random, ferromagnet, ansatz (triple-Q skyrmion crystal) or file:PATH "
                        "(default random)")
    g.add_argument("--init-seed", type=int, default=None, help="seed of the random initial state (default --seed)")
    g.add_argument("--ansatz-q", type=float, default=math.pi / 3, help="|Q| of the ansatz (default pi/3)")
    g.add_argument("--ansatz-mz", type=float, default=0.0, help="uniform z offset of the ansatz (default 0)")
    g.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    o = p.add_argument_group("output")
    o.add_argument("--snapshot-every", type=int, default=100, help="store the spins every this many steps (default 100)")
    o.add_argument("--record-every", type=int, default=1, help="record observables every this many steps (default 1)")
    o.add_argument("--cell-sites", default="auto",
                   help="sites per magnetic unit cell for n_sk per cell (48 for triangular-paper), auto (from "
                        "S(q) peaks) or none (default auto)")
    o.add_argument("--device", default="cpu", help="torch device (default cpu)")
    o.add_argument("--deterministic", action="store_true",
                   help="a model provider without atomic additions: bit-identical reruns on a GPU (ECNN only)")
    o.add_argument("--dtype", choices=("float64", "float32"), default="float64", help="spin precision (default float64)")
    o.add_argument("--out", default="klmgraph-scan" if scan else "klmgraph-run",
                   help="output folder; rerunning with the same settings resumes it")
    o.add_argument("--overwrite", action="store_true", help="start afresh in an existing folder")
    o.add_argument("--no-plots", action="store_true", help="no PNG figures")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    if scan:
        o.add_argument("--jobs", type=int, default=1, help="parallel processes (default 1)")
    _add_uncertainty_arguments(p)


# ---- scaling: chunked evaluation, split runs (--nprocs, torchrun), export (self-contained block)
def _add_scaling_arguments(p: argparse.ArgumentParser, scan: bool = False) -> None:
    g = p.add_argument_group("large lattices (docs/scaling.md)")
    g.add_argument("--chunk-sites", default=None,
                   help="evaluate the model in spatial chunks of about this many sites (each with a halo as wide "
                        "as its receptive field): memory of a chunk, not of the lattice; auto: from free memory "
                        "(default: the whole lattice at once)")
    if scan:
        return
    g.add_argument("--nprocs", type=int, default=1,
                   help="split the lattice over this many processes on this machine (torch.distributed; one GPU "
                        "each with --device cuda); the run folder is the same as with one (default 1). Under "
                        "torchrun leave it out: the processes are torchrun's")
    g.add_argument("--backend", choices=("auto", "gloo", "nccl", "mpi"), default="auto",
                   help="torch.distributed backend of a split run (default auto: nccl on CUDA, gloo otherwise)")


def chunk_sites_option(text):
    """--chunk-sites: None, "auto" or a positive integer."""
    return None if text is None else positive_int_option(text, "--chunk-sites", {"auto": "auto"})


def split_run_active() -> bool:
    """Whether this process belongs to a torch.distributed group of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def launch_simulation(args: argparse.Namespace):
    """simulate with --nprocs P (spawned processes), under torchrun (the group it describes), or
    in this process; the result on the first process, None on the others."""
    nprocs = getattr(args, "nprocs", 1)
    from .distributed import init_from_environment, launch

    if init_from_environment(getattr(args, "backend", "auto"), args.device):
        if nprocs != 1:
            raise ValueError("--nprocs spawns processes on this machine; under torchrun leave it out "
                             "(torchrun's --nproc-per-node sets the processes)")
        return run_simulation(args)
    if nprocs == 1:
        return run_simulation(args)
    if nprocs < 1:
        raise ValueError(f"--nprocs must be a positive integer, got {nprocs}")
    if args.provider.partition(":")[0] in ("ed", "kpm"):
        from .distributed import provider_terms
        provider_terms(build_provider(args.provider, build_solver(args), "cpu", kpm_options(args)))  # refuses
    backend = args.backend
    if backend == "auto":
        from .distributed import default_backend
        backend = default_backend(args.device)
    arguments = dict(vars(args))
    arguments.pop("func")
    try:
        return launch(_split_simulation, nprocs, (arguments,), backend=backend)
    except ProcessFailed as err:
        from .trajectory import last_snapshot

        path = Path(args.out) / "trajectory.h5"
        kept = last_snapshot(path) if path.exists() else None
        where = f"; {path} keeps its snapshots up to step {kept.step}" if kept else ""
        raise ProcessFailed(f"{err}{where}", rank=err.rank) from None


def _split_simulation(arguments: dict):
    # module level, so spawned processes can import it
    return run_simulation(argparse.Namespace(**arguments))


def _add_export_parser(sub) -> None:
    ex = sub.add_parser("export", help="write a snapshot of a trajectory as OVF 2.0 or VTK (ParaView)",
                        description="Write one stored configuration of a trajectory for other tools: OVF 2.0 "
                                    "(ubermag/discretisedfield, mumax3 tools, Spirit; a rectangular mesh for "
                                    "square and cubic lattices, an irregular mesh with positions otherwise) or a "
                                    "VTK unstructured grid of points with the spin vectors and S^z (ParaView).")
    ex.add_argument("path", help="trajectory.h5 of a run (or a run folder)")
    ex.add_argument("--format", choices=("ovf", "vtu"), required=True, help="output format")
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--step", type=int, default=None, help="the snapshot's step (default: the last one)")
    ex.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    from .export import export_snapshot

    path = Path(args.path)
    if path.is_dir():
        path = path / "trajectory.h5"
    info = export_snapshot(path, args.out, args.format, step=args.step)
    print(f"wrote {info['path']}: step {info['step']}, {info['sites']} sites, {info['mesh']}")
# ---- end of the scaling block


def _generate(args: argparse.Namespace) -> None:
    ed = build_solver(args)
    solver = build_provider(args.solver, ed, args.device, kpm_options(args))  # "ed" or "kpm"
    spins = read_spins(args.spins) if args.spins else None
    path = generate_dataset(args.out, solver, num_samples=None if spins is not None else args.samples,
                            spins=spins, seed=args.seed, batch_size=args.batch_size,
                            progress=not args.quiet, overwrite=args.overwrite, device=args.device)
    data = load_dataset(path)
    print(f"wrote {path}: {len(data)} configurations on {data.graph.describe()}")
    print(f"Hamiltonian: {json.dumps(data.hamiltonian)}")
    print(f"E_el per site: mean {float(data.energy.mean()) / data.graph.num_nodes:.6f}, "
          f"|B| per site: mean {float(data.field.norm(dim=-1).mean()):.6f}")


def _info(args: argparse.Namespace) -> None:
    data = load_dataset(args.path, allow_partial=True)
    print(f"{args.path}: {len(data)} complete configurations on {data.graph.describe()}")
    print(f"Hamiltonian: {json.dumps(data.hamiltonian)}")


def _models(args: argparse.Namespace) -> None:
    from .pretrained import describe, model_card, model_folders, pretrained

    if args.name:
        print(json.dumps(model_card(args.name), indent=2))
        return
    names = pretrained()
    if not names:
        print("no shipped models found (searched: " + (", ".join(map(str, model_folders())) or "nothing") + ")")
    for name in names:
        print(describe(name))


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
    print(f"rmse_field={metrics['rmse_field']:.6g} rmse_energy_per_site={metrics['rmse_energy_per_site']:.6g} "
          f"rmse_field_transverse={metrics['rmse_field_transverse']:.6g}")
    plot = args.plot or str(Path(args.model).with_suffix("")) + "-parity.png"
    parity_plot(metrics["field_pred"], metrics["field_true"], plot,
                title=f"{Path(args.model).name} on {Path(args.data).name}: RMSE(B) = {metrics['rmse_field']:.4g}")
    print(f"parity plot: {plot}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import DEFAULT, TINY, run_demo

    settings = TINY if args.tiny else DEFAULT
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    print(f"klmgraph demo{' --tiny' if args.tiny else ''}: output folder {Path(args.out).resolve()}")
    summary = run_demo(args.out, settings, device=args.device, progress=not args.quiet)
    print(f"summary: {Path(summary['output']) / 'summary.md'}; figures: parity.png, llg/spins.png, "
          f"llg/time_series.png in {Path(summary['output']).resolve()}")


def _add_run_options(p, device_help: str = "torch device (default cpu)", quiet_help: str = "no progress bars") -> None:
    """--device, --threads and --quiet of the long jobs (demo, learn)."""
    p.add_argument("--device", default="cpu", help=device_help)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default torch's; 1 is often faster on a busy machine)")
    p.add_argument("--quiet", action="store_true", help=quiet_help)


# ---- the active-learning loop (self-contained block)
def _learn(args: argparse.Namespace) -> None:
    from .learn import load_learn_config, run_learning

    config = load_learn_config(args.config, quick=args.quick)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    log = (lambda line: None) if args.quiet else print
    result = run_learning(config, args.out, device=args.device, progress=not args.quiet, log=log)
    last = result["iterations"][-1]
    print(f"{args.out}: {len(result['iterations'])} iteration(s), stopped: {result['stopped']}")
    print(f"explored states: RMSE(B) {result['iterations'][0]['explored_rmse_field']:.4f} -> "
          f"{last['explored_rmse_field']:.4f} by ED (predicted {last['predicted_rmse_field']:.4f}); "
          f"committee {result['model']}; report {Path(args.out) / 'report.md'}")


def _add_learn_parser(sub) -> None:
    p = sub.add_parser("learn", help="active learning: label with ED the states the committee's dynamics visits",
                       description="ED on random configurations, a committee trained on them, then iterations of "
                                   "committee-driven ML-LLG on the ED-sized lattice, ED labels of the states of "
                                   "highest committee spread, and fine-tuning, until the predicted error on the "
                                   "explored states is below the target or the ED budget is spent. Every key of "
                                   "the configuration is documented in docs/learning.md. Rerunning continues an "
                                   "interrupted loop.")
    p.add_argument("--config", required=True, help="TOML configuration (examples/learn_square.toml)")
    p.add_argument("--out", default="klmgraph-learn", help="output folder (default klmgraph-learn)")
    p.add_argument("--quick", action="store_true", help="apply the configuration's [quick] overrides (minutes)")
    _add_run_options(p, device_help="torch device of training and exploration (default cpu)",
                     quiet_help="no progress bars or stage lines")
    p.set_defaults(func=_learn)
# ---- end of the learning block


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="klmgraph", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="ED data, a committee of ECNNs and a learning iteration, ML-LLG on a 16x "
                                       "larger lattice, checked against ED, in minutes",
                          description="The whole path on the paper's square model (t1 = 1, J = 7, filling "
                                      "0.48): ED data on 12x12, a committee of ECNNs, one active-learning "
                                      "iteration on the states of its own dynamics, damped ML-LLG on 48x48 with "
                                      "the committee's predicted error, and ED of the final state to check the "
                                      "model and the prediction. About 6 minutes on an idle 2-core CPU; --tiny runs "
                                      "8x8 -> 32x32 in a few. Rerunning continues an interrupted demo.")
    demo.add_argument("--tiny", action="store_true", help="smaller and shorter (a few minutes)")
    demo.add_argument("--out", default="klmgraph-demo", help="output folder (default klmgraph-demo)")
    _add_run_options(demo)
    demo.set_defaults(func=_demo)

    gen = sub.add_parser("generate", help="write an exact-diagonalization (or KPM) data set (HDF5)",
                         description="Label random or given spin configurations with the exact electronic "
                                     "energy and effective field (or KPM's, with --solver kpm). Re-running on "
                                     "an unfinished file resumes it.")
    _add_model_arguments(gen)
    gen.add_argument("--solver", choices=("ed", "kpm"), default="ed",
                     help="electronic solver of the labels (default ed)")
    _add_kpm_arguments(gen)
    gen.add_argument("--samples", type=int, default=20, help="random configurations (default 20)")
    gen.add_argument("--spins", help="label the configurations in this .npy/.npz/.h5 file instead")
    gen.add_argument("--seed", type=int, default=0, help="seed of the random configurations (default 0)")
    gen.add_argument("--batch-size", type=int, default=1, help="configurations diagonalised together (default 1)")
    gen.add_argument("--out", default="klmgraph-data.h5", help="output file (default klmgraph-data.h5)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing file with other settings")
    gen.add_argument("--device", default="cpu", help="torch device of the solver (default cpu)")
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

    sim = sub.add_parser("simulate", help="LLG dynamics with ED or a model; resumable HDF5 trajectory",
                         description="Integrate stochastic LLG dynamics. The run folder gets trajectory.h5, "
                                     "summary.json and figures; rerunning the same command continues from the "
                                     "last snapshot (a larger --steps extends a finished run).")
    _add_simulation_arguments(sim)
    _add_scaling_arguments(sim)
    sim.set_defaults(func=_simulate)

    sc = sub.add_parser("scan", help="one simulate run per Hz (or T) value; CSV table and |n_sk|, |Mz| plot",
                        description="Sweep --hz (or --T) over several values, each an independent simulate run "
                                    "in OUT/hz=<value>; writes OUT/scan.csv and OUT/scan.png (paper Fig. 4a).")
    _add_simulation_arguments(sc, scan=True)
    _add_scaling_arguments(sc, scan=True)
    sc.set_defaults(func=_scan)

    _add_export_parser(sub)
    _add_learn_parser(sub)

    info = sub.add_parser("info", help="summarise a data set")
    info.add_argument("path")
    info.set_defaults(func=_info)

    # -- models shipped in data/models (issue 14) --
    models = sub.add_parser("models", help="list the trained models shipped with klmgraph and their cards",
                            description="List the models that klmgraph.pretrained(name) loads, with the key "
                                        "facts of each card (lattice, Hamiltonian, solver, metrics, date); "
                                        "with NAME, that model's full card (JSON).")
    models.add_argument("name", nargs="?", help="print this model's whole card")
    models.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"klmgraph {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ProcessFailed as err:
        print(f"klmgraph {args.command}: stopped: {err}", file=sys.stderr)
        return 4
    except (DivergenceError, ScanFailed) as err:
        print(f"klmgraph {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
