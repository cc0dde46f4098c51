"""A model's phase diagram of the triangular Kondo lattice model: item 3 of the Fig. 4 issue.

The candidate states of examples/triangular_phase_diagram.py (the n_sk = 2 and 1 skyrmion
crystals, the random-start n_sk = 0 triple-Q state, ...) tiled over a large periodic lattice
(L x L, L a multiple of 12) and relaxed at every field by damped LLG with a model as the force
provider (the published ecnn4klm checkpoint, or ``--model`` a klmgraph model file), in float64,
followed up in field and back down exactly as the ED version does (the same relaxation, the same
crossing rule). The energies per site are the model's; the boundaries are set beside item 1's
k-grid ED ones when ``--phase-diagram`` names that script's summary.json.

    PYTHONPATH=. python examples/triangular_model_phase_diagram.py --quick   # 24 x 24, minutes
    PYTHONPATH=. python examples/triangular_model_phase_diagram.py --size 48 --phase-diagram \
        klmgraph-output/triangular_phase_diagram/full/summary.json

Every (state, direction, field) is a JSON record under ``--out``/records (resumable). Writes
``model_phase_diagram.csv``, ``summary.json`` and ends with ``hz_2_1=<value> hz_1_0=<value>``
(as item 1: a bound ``>hz`` / ``<hz`` where no crossing lies in the field range).

``--check-ed N`` labels every model-relaxed state by k-grid ED (an N x N grid of the L x L
lattice, i.e. the tiled NL x NL lattice; 8 on 12 x 12 is the training labels' 96 x 96), adds
``energy_ed`` and ``model_minus_ed`` to the table and the phase diagram of these states by ED to
the summary: whether the model's lowest state is ED's lowest among the states the model found,
and how far off each state's energy is. A model whose relaxation ends in a false minimum is seen
there, without a second ED relaxation. Each check is stored under ``--out``/ed_check, one file per
record (resumable).

``--ed-states RECORDS`` asks the converse: does the model hold the states that k-grid ED relaxed?
Every distinct state of item 1's records folder (data/reference/triangular/phase_records), tiled
onto the lattice, is relaxed by the model at its own field as above, and ``ed_states.csv`` gives
how far the model carries it (RMS spin change per site, n_sk and M^z before and after) and, with
``--check-ed N``, what that move costs by ED (energy after minus before: about 0 where the model's
minimum is ED's; negative where the record was not a minimum on this lattice and the model went
downhill, positive where the model's field drives the state off ED's minimum) and the model's
energy error at ED's own state. A soft state (a small restoring field) is carried far by a small
field error, and a boundary that involves it is then set by the model's state, not ED's. Stored
under ``--out``/ed_states, one file per state (resumable); ``--no-diagram`` runs this check alone:

    PYTHONPATH=. python examples/triangular_model_phase_diagram.py --size 12 --model data/models/triangular-paper.pt \
        --ed-states data/reference/triangular/phase_records --check-ed 8 --no-diagram   # 63 states, minutes
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import klmgraph
from klmgraph.files import atomic_path
from triangular_phase_diagram import (HAMILTONIAN, PAPER, QUICK, STATES, ansatz, boundary_text, cell_graph,
                                      crossing, follow, record_path, relax, solver, to_lattice)
from triangular_paper_model import distinct_states, relaxed_records
from triangular_skyrmions import DEFAULT_CHECKPOINT, check_input_files, load_provider_model

# the ED script's relaxation, with the model's stable step (dt 30 is halved to it anyway) and
# more steps: an ML step costs little on these lattices
MODEL = replace(QUICK, dt=10.0, max_steps=400, tol=1e-10)


ED_STATES_COLUMNS = ["branch", "hz", "n_sk_start", "n_sk_relaxed", "mz_start", "mz_relaxed", "rms_change",
                     "energy_model_start", "energy_model_relaxed", "steps", "converged", "max_torque",
                     "energy_ed_start", "energy_ed_relaxed", "ed_cost", "model_minus_ed_start"]


def periodic_lattice(size: int):
    """The size x size periodic lattice of the model's relaxations."""
    return klmgraph.triangular(size, size, t1=HAMILTONIAN["t1"], t3=HAMILTONIAN["t3"])


def run_state(state: str, s, size: int, settings: dict, out: Path) -> list[dict]:
    """One state relaxed with the model along the field sweeps (records resumed or written)."""
    lattice = periodic_lattice(size)
    provider = load_provider_model(settings, lattice).double().bind(lattice)
    cells = lattice.num_nodes // cell_graph().num_nodes

    def step(spins, hz):
        r = relax(provider, spins, hz, s)
        spins = r.pop("spins")
        return spins, {"n_sk_per_cell": float(klmgraph.skyrmion_number(lattice, spins)) / cells,
                       "mz": float(spins[:, 2].mean()), "energy_model": r["energy_relax"], **r}

    return follow(state, ansatz(state, lattice).double(), s.fields, out, step)


def ed_label(ed, spins: torch.Tensor) -> dict:
    """k-grid ED of one state as stored under ed_check and ed_states: E_el / N and M^z."""
    energy, _ = ed.energy_and_field(spins)
    return {"energy_el_per_site": float(energy) / spins.shape[0], "mz": float(spins[:, 2].mean()), "solver": ed.solver}


def model_convention(label: dict, hz: float) -> float:
    """E_el / N - Hz M^z: the total energy per site that the model's relaxation reports."""
    return label["energy_el_per_site"] - hz * label["mz"]


def spins_digest(spins: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(spins.to(torch.float64).contiguous().numpy().tobytes()).hexdigest()


def check_ed(rows: list[dict], size: int, grid: int, out: Path) -> None:
    """Add ``energy_ed`` (``model_convention`` of k-grid ED, the model's ``energy_model``
    convention) to every row, from its record's spins; stored per record under out/ed_check."""
    from tqdm.auto import tqdm

    lattice = periodic_lattice(size)
    ed = solver(lattice, grid)
    for row in tqdm(rows, desc=f"ED {grid}x{grid}", unit="state"):
        source = record_path(out, row)  # a return sweep's first row is the first sweep's record
        if not source.exists():
            raise SystemExit(f"--check-ed: no record {source} for {row['branch']} at Hz = {row['hz']:g}")
        path = out / "ed_check" / f"k{grid}" / source.relative_to(out / "records")
        if not path.exists():
            record = json.loads(source.read_text())
            label = ed_label(ed, torch.tensor(record["spins"], dtype=torch.float64))
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(label))
        row["energy_ed"] = model_convention(json.loads(path.read_text()), row["hz"])
        row["model_minus_ed"] = row["energy_model"] - row["energy_ed"]


def ed_states(records: Path, size: int, settings: dict, s, grid: int, out: Path) -> list[dict]:
    """Every distinct k-grid-ED-relaxed state of ``records`` tiled onto the size x size lattice and
    relaxed by the model at its own field (``relax`` with the settings ``s``): one row per state,
    stored as out/ed_states/<branch>/<Hz>.json with the relaxed spins; where ``grid``, both states
    labelled by ED with a grid x grid k-grid (out/ed_states/k<grid>/<branch>/<Hz>.json) in the
    model's energy convention (``model_convention``). Each file carries the digest of the spins it
    was made from, so a record that changed since is relaxed and labelled again."""
    from tqdm.auto import tqdm

    lattice, cell = periodic_lattice(size), cell_graph()
    cells = lattice.num_nodes // cell.num_nodes
    index = to_lattice(cell, lattice)
    provider = load_provider_model(settings, lattice).double().bind(lattice)
    ed = solver(lattice, grid) if grid else None
    states = distinct_states(relaxed_records(records, lambda h: True, option="--ed-states"))
    for state in states:
        if len(state["cell_spins"]) != cell.num_nodes:
            raise SystemExit(f"--ed-states {records}: {state['source']} holds {len(state['cell_spins'])} spins, not "
                             f"the {cell.num_nodes} of the magnetic cell; pass item 1's records folder "
                             f"(examples/triangular_phase_diagram.py), not a model run's")
    rows = []
    for state in tqdm(states, desc="ED states", unit="state"):
        hz, name = state["hz"], Path(state["name"]) / f"{state['hz']:.5f}.json"
        start = torch.tensor(state["cell_spins"], dtype=torch.float64)[index]
        start = start / start.norm(dim=-1, keepdim=True)
        digest = spins_digest(start)
        path = out / "ed_states" / name
        row = json.loads(path.read_text()) if path.exists() else None
        if row is None or row.get("start_sha256") != digest:
            r = relax(provider, start.clone(), hz, s)
            end = r.pop("spins")
            row = {"branch": state["name"], "hz": hz, "start_sha256": digest,
                   "n_sk_start": float(klmgraph.skyrmion_number(lattice, start)) / cells,
                   "n_sk_relaxed": float(klmgraph.skyrmion_number(lattice, end)) / cells,
                   "mz_start": float(start[:, 2].mean()), "mz_relaxed": float(end[:, 2].mean()),
                   "rms_change": float((end - start).pow(2).sum(-1).mean().sqrt()),
                   "energy_model_start": r["energy_start"], "energy_model_relaxed": r["energy_relax"],
                   "steps": r["steps"], "converged": r["converged"], "max_torque": r["max_torque"],
                   "spins": end.tolist()}
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(row))
        end = torch.tensor(row.pop("spins"), dtype=torch.float64)
        if ed is not None:
            checked = out / "ed_states" / f"k{grid}" / name
            labels = json.loads(checked.read_text()) if checked.exists() else None
            key = {"start_sha256": row["start_sha256"], "relaxed_sha256": spins_digest(end)}
            if labels is None or {k: labels.get(k) for k in key} != key:
                labels = {**key, "start": ed_label(ed, start), "relaxed": ed_label(ed, end)}
                checked.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(checked) as tmp:
                    tmp.write_text(json.dumps(labels))
            before, after = (model_convention(labels[k], hz) for k in ("start", "relaxed"))
            row.update(energy_ed_start=before, energy_ed_relaxed=after, ed_cost=after - before,
                       model_minus_ed_start=row["energy_model_start"] - before)
        rows.append(row)
    return rows


def relaxation_of(settings: dict) -> dict:
    """What a run's settings.json fixes for ``--ed-states`` alone: the lattice, the model and the
    relaxation's step, tolerance and step limit, not the fields and candidates of the diagram."""
    keep = ("dt", "tol", "max_steps", "chunk")
    return {"size": settings["size"], "model": settings["model"],
            **{k: settings["relaxation"][k] for k in keep}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="24 x 24 (default 48 x 48)")
    p.add_argument("--size", type=int, default=None, help="L of the L x L lattice, a multiple of 12")
    p.add_argument("--hz", type=float, nargs="+", help=f"fields (default {list(MODEL.fields)})")
    p.add_argument("--states", nargs="+", choices=STATES, help=f"candidates (default {list(MODEL.states)})")
    p.add_argument("--max-steps", type=int, help=f"LLG steps per field at most (default {MODEL.max_steps})")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="triangle_param.cpt")
    p.add_argument("--model", default=None, help="a klmgraph model file instead of the checkpoint")
    p.add_argument("--phase-diagram", default=None, metavar="SUMMARY",
                   help="examples/triangular_phase_diagram.py's summary.json: its boundaries beside the model's")
    p.add_argument("--out", default=None, help="default klmgraph-output/triangular_model_phase_diagram/<model>-L")
    p.add_argument("--check-ed", type=int, default=0, metavar="N",
                   help="label every relaxed state by ED with an N x N k-grid of the lattice (0: no check)")
    p.add_argument("--ed-states", default=None, metavar="RECORDS",
                   help="also relax every k-grid-ED-relaxed state of this records folder (item 1's "
                        "phase_records) with the model: whether it holds them (ed_states.csv)")
    p.add_argument("--no-diagram", action="store_true",
                   help="only the --ed-states check: no candidates followed in field (minutes instead of half an hour)")
    args = p.parse_args(argv)
    if args.no_diagram and not args.ed_states:
        raise SystemExit("--no-diagram leaves nothing to do without --ed-states RECORDS")
    if args.check_ed < 0:
        raise SystemExit(f"--check-ed {args.check_ed}: a k-grid size N >= 1, or 0 for no check")
    torch.set_num_threads(1)
    size = args.size or (24 if args.quick else 48)
    if size % 12:
        raise SystemExit(f"--size {size}: the 48-site magnetic cell needs L divisible by 12")
    check_input_files(args)
    if args.ed_states and not Path(args.ed_states).is_dir():
        raise SystemExit(f"--ed-states {args.ed_states}: not a folder; pass the records folder of "
                         f"examples/triangular_phase_diagram.py (e.g. data/reference/triangular/phase_records)")
    s = replace(MODEL, fields=tuple(sorted(args.hz)) if args.hz else MODEL.fields,
                states=tuple(args.states) if args.states else MODEL.states,
                max_steps=args.max_steps or MODEL.max_steps)
    name = Path(args.model or args.checkpoint).stem
    out = Path(args.out or f"klmgraph-output/triangular_model_phase_diagram/{name}-{size}")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint": args.checkpoint, "model": args.model, "device": "cpu"}
    record = {"relaxation": {k: v for k, v in asdict(s).items() if k not in ("relax_grid", "energy_grids", "refine_grids")},
              "size": size, "model": name}
    path = out / "settings.json"
    if path.exists():
        stored, record = json.loads(path.read_text()), json.loads(json.dumps(record))
        if args.no_diagram:  # the fields and candidates of a diagram there do not matter to --ed-states
            stored, record = (relaxation_of(r) for r in (stored, record))
        if stored != record:
            raise SystemExit(f"{out} holds a run with other settings ({path}); use another --out")
    if not (args.no_diagram and path.exists()):
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, indent=2))

    summary = {"model": name, "size": size}
    if not args.no_diagram:
        summary.update(diagram(args, s, size, name, settings, out))
    if args.ed_states:
        held = ed_states(Path(args.ed_states), size, settings, s, args.check_ed, out)
        keys = [k for k in ED_STATES_COLUMNS if k in held[0]]
        with atomic_path(out / "ed_states.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(sorted(held, key=lambda r: (r["hz"], r["branch"])))
        summary["ed_states"] = {"records": str(args.ed_states), "states": len(held),
                                "rms_change_max": max(r["rms_change"] for r in held),
                                "topology_changed": [f"{r['branch']} {r['hz']:g}" for r in held
                                                     if round(r["n_sk_start"]) != round(r["n_sk_relaxed"])]}
        if args.check_ed:
            summary["ed_states"].update(
                ed_cost_max=max(r["ed_cost"] for r in held),
                model_minus_ed_start={"min": min(r["model_minus_ed_start"] for r in held),
                                      "max": max(r["model_minus_ed_start"] for r in held)})
        for r in sorted(held, key=lambda r: (r["hz"], r["branch"])):
            cost = (f", by ED {r['ed_cost']:+.1e} per site, model - ED at ED's state {r['model_minus_ed_start']:+.1e}"
                    if args.check_ed else "")
            print(f"ED state {r['branch']} at Hz = {r['hz']:g} relaxed by {name}: RMS change {r['rms_change']:.3f}, "
                  f"n_sk {r['n_sk_start']:+.2f} -> {r['n_sk_relaxed']:+.2f}, M^z {r['mz_start']:.4f} -> "
                  f"{r['mz_relaxed']:.4f}{cost}")
        print(f"table {out / 'ed_states.csv'}")
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float))
    if not args.no_diagram:
        print(f"table {out / 'model_phase_diagram.csv'}")
        print(f"hz_2_1={boundary_text(summary['hz_2_1'])} hz_1_0={boundary_text(summary['hz_1_0'])}")
    return summary


def diagram(args, s, size: int, name: str, settings: dict, out: Path) -> dict:
    """The candidates followed up and down in field with the model (``--check-ed``: and labelled
    by ED): writes model_phase_diagram.csv, prints the ground states and boundaries, returns the
    summary's entries."""
    from tqdm.auto import tqdm

    started, rows = time.perf_counter(), []
    for state in tqdm(s.states, desc="states", unit="state"):
        rows += run_state(state, s, size, settings, out)
    if args.check_ed:
        check_ed(rows, size, args.check_ed, out)
    lowest = {h: min(r["energy_model"] for r in rows if r["hz"] == h) for h in s.fields}
    columns = ["branch", "state", "direction", "hz", "n_sk_per_cell", "mz", "energy_start", "energy_model",
               "minus_lowest", "max_torque", "steps", "dt", "seconds"] + (
        ["energy_ed", "model_minus_ed"] if args.check_ed else [])
    with atomic_path(out / "model_phase_diagram.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in sorted(rows, key=lambda r: (r["branch"], r["hz"])):
            writer.writerow({**r, "minus_lowest": r["energy_model"] - lowest[r["hz"]]})
    summary = {"solver": f"{name} on {size}x{size} (float64)",
               "hz_2_1": crossing(rows, s.fields, 2, 1, "energy_model"),
               "hz_1_0": crossing(rows, s.fields, 1, 0, "energy_model"), "paper": PAPER,
               "ground_states": [min((r for r in rows if r["hz"] == h), key=lambda r: r["energy_model"])["branch"]
                                 for h in s.fields],
               "seconds": time.perf_counter() - started}
    if args.check_ed:
        errors = [r["model_minus_ed"] for r in rows]
        summary["ed_check"] = {
            "solver": f"ED, k-grid {args.check_ed}x{args.check_ed} on {size}x{size}, of the states relaxed by {name}",
            "hz_2_1": crossing(rows, s.fields, 2, 1, "energy_ed"), "hz_1_0": crossing(rows, s.fields, 1, 0, "energy_ed"),
            "ground_states": [min((r for r in rows if r["hz"] == h), key=lambda r: r["energy_ed"])["branch"]
                              for h in s.fields],
            "model_minus_ed": {"min": min(errors), "max": max(errors)}}
    if args.phase_diagram:
        ed = json.loads(Path(args.phase_diagram).read_text())
        summary["ed"] = {"solver": ed["solver"], "hz_2_1": ed["hz_2_1"], "hz_1_0": ed["hz_1_0"]}
    for h, branch in zip(s.fields, summary["ground_states"]):
        print(f"Hz = {h:<7g} lowest with {name}: {branch}")
    for key in ("hz_2_1", "hz_1_0"):
        c = summary[key]
        gaps = ", ".join(f"{h:g}: {g:+.1e}" for h, g in zip(s.fields, c["gaps"]))
        beside = (f"; k-grid ED ({summary['ed']['solver']}): {boundary_text(summary['ed'][key])}"
                  if "ed" in summary else "")
        print(f"{key} ({name}, {size}x{size}): {boundary_text(c)}{beside}; paper {PAPER[key]}; gaps per field: {gaps}")
    if args.check_ed:
        c = summary["ed_check"]
        wrong = [h for h, a, b in zip(s.fields, summary["ground_states"], c["ground_states"])
                 if round(abs(next(r["n_sk_per_cell"] for r in rows if r["hz"] == h and r["branch"] == a)))
                 != round(abs(next(r["n_sk_per_cell"] for r in rows if r["hz"] == h and r["branch"] == b)))]
        print(f"{c['solver']}: model - ED {c['model_minus_ed']['min']:+.1e} to {c['model_minus_ed']['max']:+.1e} "
              f"per site; by ED of these states hz_2_1={boundary_text(c['hz_2_1'])} hz_1_0={boundary_text(c['hz_1_0'])}; "
              f"the model's lowest |n_sk| is not ED's at "
              f"{', '.join(f'{h:g}' for h in wrong) if wrong else 'no field'}")
    return summary


if __name__ == "__main__":
    main()
