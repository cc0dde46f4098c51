"""The triangular Kondo lattice model's own phase diagram in field: k-grid ED, no model.

DESIGN.md section 1's triangular model (t1 = 1, t3 = -0.85, J = -1, mu = -3.5, grand canonical,
T = 0) with a Zeeman term -Hz sum S^z. Candidate states, each a periodic state of the 48-site
magnetic unit cell (ordering vectors |Q| = pi/3):

* ``sk2``: the n_sk = 2 triple-Q skyrmion crystal (:func:`klmgraph.double_skyrmion_crystal`);
* ``sk1``: the n_sk = 1 skyrmion crystal (:func:`klmgraph.skyrmion_crystal`);
* ``sk1r``: the n_sk = 1 crystal as random starts reach it at Hz = 0.008 (24 x 24, the published
  model; data/states/triangular_sk1_hz0.008.json);
* ``tq0``: the topologically trivial (n_sk = 0) triple-Q state that random starts reach at
  Hz = 0.008 (three Q's of unequal amplitude, M^z ~ 0.35): seeded from one such start, stored in
  data/states/triangular_tq0_hz0.008.json (``--make-starts`` regenerates both with the
  published model);
* ``tq0z``: another n_sk = 0 triple-Q state (the n_sk = 2 ansatz with a large offset m_z = 1.2,
  which unwinds its skyrmions);
* ``1q``: a single-Q conical state (xy spiral along Q_1 canted towards z);
* ``fm``: the ferromagnet along z.

Each is relaxed at every field by damped LLG (alpha = 1, Heun, dt halved whenever the energy
rises, stopped when the energy falls by less than ``--tol`` per site and step) with k-grid ED
forces, and followed in field: an ansatz up from the lowest field, then back down from the state
the up sweep reached at the highest; a random-start state (found at Hz = 0.008) down from the
top field first, then back up (each field starts from the state relaxed at the previous one, so
the sweeps show hysteresis, and the warm starts need few steps). The supercell is the 48-site magnetic cell
itself (``BravaisLattice.supercell([[8, 4], [4, 8]])``: a third of the 12 x 12 lattice, whose
k-grid ED is the thermodynamic limit of the periodic state at a ninth of the 12 x 12 cost), so a
k-grid n x n stands for a tiled lattice of 48 n^2 sites. Energies per site (E_el / N - Hz M^z)
of the relaxed states: the electrons by the linear tetrahedron method (eigenvalues only,
``ExactDiagonalization.energy(integration="tetrahedron")``), whose error falls smoothly as 1 / n^2,
on a ladder of grids (every record) and extrapolated to n -> inf from the two finest
(``klmgraph.richardson``: ``energy_tl``); the states within 1e-5 of the lowest of their |n_sk|
class at a field are then evaluated on the finer refinement grids too (``refine.csv``), and the
change between the extrapolations from the two finest and from the two grids before
(``energy_tl_prev``) is the grid error that every reported number carries. (The plain T = 0
grid sum oscillates with the grid, by 1e-6 at 128 x 128: docs/electrons.md.) Boundaries: the fields
where the lowest state of one |n_sk| class crosses the lowest of the next (linear interpolation
between neighbouring fields), with the uncertainty that the grid error gives through the slope;
where no crossing lies inside the field range the boundary is given as a bound
(``hz_1_0>0.008``: the lower class stays lowest up to the top field).

    python examples/triangular_phase_diagram.py --quick --workers 2  # 4 fields, grids 16 / 32, 64 / 88, 176 (13.8-16.5 min on 2 cores)
    nice -n 10 python examples/triangular_phase_diagram.py           # 13 fields, grids 20 / 32, 64 / 128, 256: 3.7 CPU hours, resumable

Every (branch, field) is a JSON record under ``--out``/records, written atomically; running the
same command again skips what is done. Writes ``phase_diagram.csv``, ``energies.png`` (E(Hz) of
every branch minus the lowest), ``phase_diagram.png`` (|n_sk| and M^z of the lowest state) and
``summary.json``, and ends with the line ``hz_2_1=<value> hz_1_0=<value>`` (a value is a
crossing, placed along the tangents d(E/N)/dHz = -M^z of the two states lowest at the nearer
bracketing field, see :func:`crossing`; ``>hz`` or ``<hz`` a bound where none lies inside the
field range, nan where a class has no candidate).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import klmgraph
from klmgraph.files import atomic_path

PAPER = {"hz_2_1": 0.00325, "hz_1_0": 0.0065}  # Miyazaki 2023, ML-LLG at T = 0 on 96 x 96
MAGNETIC_CELL = ((8, 4), (4, 8))  # A1 = 8 a1 + 4 a2, A2 = 4 a1 + 8 a2: 48 sites
HAMILTONIAN = {"t1": 1.0, "t3": -0.85, "J": -1.0, "mu": -3.5}
STATES = ("sk2", "sk1", "sk1r", "tq0", "tq0z", "1q", "fm")
_STATES_DIR = Path(__file__).resolve().parents[1] / "data" / "states"
# states that random starts reach at Hz = 0.008 on 24 x 24 with the published model: file, seed, |n_sk|
RANDOM_STARTS = {"tq0": (_STATES_DIR / "triangular_tq0_hz0.008.json", 7, 0),
                 "sk1r": (_STATES_DIR / "triangular_sk1_hz0.008.json", 2, 1)}
PROTOCOL = "ansatz: up, then down from the top; random starts: down from the top, then up"


@dataclass(frozen=True)
class Settings:
    """Everything a record depends on (a run folder refuses other settings)."""

    fields: tuple
    relax_grid: int
    energy_grids: tuple
    dt: float
    tol: float
    max_steps: int
    chunk: int
    states: tuple
    refine_grids: tuple = ()
    protocol: str = PROTOCOL


# k-grids are n x n on the 48-site cell (48 n^2 sites tiled), never multiples of 3 (their twists
# hit the K points, where levels of the triple-Q states cross mu: docs/electrons.md). A state
# relaxed on a coarse grid sits off the fine grid's minimum: the n_sk = 1 crystal at Hz = 0.006,
# relaxed on 16x16 and then further on 8x8 or 12x12, rises by 2.6e-5 or 3.7e-6 per site on the
# 64x64 grid, so the relaxation grid is 16 (quick) and the energies come from finer grids.
# Energies: the linear tetrahedron method (ExactDiagonalization.energy(integration="tetrahedron"))
# on every grid, extrapolated to n -> inf from the two finest (richardson); the plain T = 0 sum
# oscillates with the grid by 1e-6 up to 128x128, Fermi smearing with T -> 0 extrapolation scatters
# by 5e-7 (docs/electrons.md). The ladder (energy_grids) is cheap and covers every record; the
# refinement grids (refine_grids) only the states near the lowest of each |n_sk| class, which
# decide the boundaries.
# Quick: the candidates that compete (the unwound tq0z and the conical 1q lie 3e-4 and 6e-4
# above at every field: docs/results.md), four fields.
# Nested grids (each dividing the next) cost only the finest: 32, 64 for every record (its
# extrapolation within 2e-6 of the converged one on the quick run's states), 88, 176 or
# 128, 256 for the refined ones.
QUICK = Settings(fields=(0.002, 0.004, 0.006, 0.008), relax_grid=16, energy_grids=(32, 64), dt=30.0,
                 tol=1e-9, max_steps=100, chunk=5, states=("sk2", "sk1", "sk1r", "tq0", "fm"),
                 refine_grids=(88, 176))
# Full: fields 0.002 to 0.008 every 0.0005 (both boundaries inside), relaxation on 20 x 20 (16 x 16
# leaves the relaxed energies ~4e-6 off), the same competing candidates (about 4 CPU hours, 2.5 to 7: docs/results.md).
FULL = Settings(fields=tuple(round(0.0005 * k, 4) for k in range(4, 17)), relax_grid=20,
                energy_grids=(32, 64), dt=30.0, tol=1e-10, max_steps=400, chunk=5, states=QUICK.states,
                refine_grids=(128, 256))
# states within this of their class's lowest (ladder estimate) at a field are refined
REFINE_MARGIN = 1e-5


def cell_graph():
    """The 48-site magnetic cell as a periodic lattice of its own (k-grid ED needs no more)."""
    lattice = klmgraph.triangular_lattice(HAMILTONIAN["t1"], 0.0, HAMILTONIAN["t3"])
    return lattice.supercell(MAGNETIC_CELL, name="triangular magnetic cell").graph((1, 1), symmetries=False)


def to_lattice(cell, graph) -> torch.Tensor:
    """Index map (N,) from the sites of a lattice ``graph`` (L1, L2 multiples of 12) to the cell's."""
    a = cell.cell[:2, :2].double()  # (2, 2) cell vectors
    d = graph.pos[:, None, :2].double() - cell.pos[None, :, :2].double()  # (N, 48, 2)
    frac = d @ torch.linalg.inv(a)
    hit = ((frac - frac.round()).abs() < 1e-6).all(-1)  # (N, 48): exactly one per site
    if not bool((hit.sum(-1) == 1).all()):
        raise ValueError(f"{graph.describe()} is not a whole number of magnetic cells (L1, L2 multiples of 12)")
    return hit.to(torch.int64).argmax(-1)


def ansatz(name: str, graph) -> torch.Tensor:
    """The starting configuration of a candidate state on ``graph``: (N, 3)."""
    q = klmgraph.triple_q_vectors(math.pi / 3)
    if name == "sk2":
        return klmgraph.double_skyrmion_crystal(graph, m_z=0.3)
    if name == "sk1":
        return klmgraph.skyrmion_crystal(graph, m_z=0.3)
    if name in RANDOM_STARTS:
        return random_start(name, graph)
    if name == "tq0z":
        return klmgraph.double_skyrmion_crystal(graph, m_z=1.2)
    if name == "1q":
        return klmgraph.multi_q(graph, [q[0]], planes=[((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))], uniform=(0.0, 0.0, 0.3))
    if name == "fm":
        return klmgraph.ferromagnet(graph)
    raise ValueError(f"unknown state {name!r}; known: {list(STATES)}")


def random_start(name: str, graph) -> torch.Tensor:
    """A stored random-start state (RANDOM_STARTS) on ``graph`` (the 48-site cell or a lattice of them)."""
    path = RANDOM_STARTS[name][0]
    if not path.is_file():
        raise SystemExit(f"no {path}: run with --make-starts (needs the published checkpoint)")
    spins = torch.tensor(json.loads(path.read_text())["spins"], dtype=torch.float64)
    cell = cell_graph()
    return spins if graph.num_nodes == cell.num_nodes else spins[to_lattice(cell, graph)]


def make_random_start(name: str, checkpoint: Path, steps: int = 600) -> dict:
    """Damped ML-LLG from random spins at Hz = 0.008 on 24 x 24 with the published model (the
    issue's experiment), folded onto the 48-site cell; written to RANDOM_STARTS[name]'s file."""
    path, seed, expected = RANDOM_STARTS[name]
    lattice = klmgraph.triangular(24, 24, t1=HAMILTONIAN["t1"], t3=HAMILTONIAN["t3"])
    provider = klmgraph.load_ecnn4klm(checkpoint, lattice).bind(lattice)
    llg = klmgraph.LLG(provider, dt=5.0, alpha=1.0, field=(0.0, 0.0, 0.008), integrator="heun")
    spins = llg.run(klmgraph.random_spins(lattice, seed=seed), steps).spins.double()
    cell = cell_graph()
    index = to_lattice(cell, lattice)
    mean = torch.zeros(cell.num_nodes, 3, dtype=torch.float64).index_add_(0, index, spins)
    mean = mean / mean.norm(dim=-1, keepdim=True)
    spread = float((spins - mean[index]).norm(dim=-1).max())
    n_sk = float(klmgraph.skyrmion_number(lattice, spins)) / (lattice.num_nodes / cell.num_nodes)
    if spread > 0.05 or abs(round(n_sk)) != expected:
        raise SystemExit(f"{name}: seed {seed} ended in n_sk = {n_sk:.2f} per cell with copies differing by "
                         f"{spread:.3f}, not a periodic |n_sk| = {expected} state")
    record = {"description": (
        f"An |n_sk| = {expected} triple-Q state of the triangular model (t1 = 1, t3 = -0.85, J = -1, mu = -3.5) at "
        f"Hz = 0.008, reached from klmgraph.random_spins(seed={seed}) on 24 x 24 by damped ML-LLG with the published "
        f"ecnn4klm model (Heun, dt = 5, alpha = 1, T = 0, {steps} steps), averaged over the 12 copies of the 48-site "
        f"magnetic cell (they differed by at most {spread:.1e}) and normalised; sites in the order of "
        "triangular_lattice(1, 0, -0.85).supercell([[8, 4], [4, 8]]).graph((1, 1)). Written by "
        "examples/triangular_phase_diagram.py --make-starts."),
        "hz": 0.008, "seed": seed, "n_sk_per_cell": n_sk, "mz": float(spins[:, 2].mean()), "spread": spread}
    rows = [[round(x, 10) for x in row] for row in mean.tolist()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        lines = ",\n".join("  " + json.dumps(row) for row in rows)
        tmp.write_text(json.dumps(record, indent=1)[:-2] + ',\n "spins": [\n' + lines + "\n ]\n}\n")
    return {**record, "spins": rows}


def solver(graph, grid: int):
    return klmgraph.ExactDiagonalization(graph, J=HAMILTONIAN["J"], mu=HAMILTONIAN["mu"], k_grid=(grid, grid))


def relax(provider, spins: torch.Tensor, hz: float, s: Settings) -> dict:
    """Damped LLG until the energy per site falls by less than s.tol per step (or s.max_steps).

    The step starts at s.dt and is halved whenever a chunk of steps raises the energy (that chunk
    is discarded): the largest stable step without a stability analysis.
    """
    n = spins.shape[0]
    dt, steps, drop, converged = s.dt, 0, math.inf, False
    llg = klmgraph.LLG(provider, dt=dt, alpha=1.0, field=(0.0, 0.0, hz))
    energy = float(llg.energy_and_field(spins)[0]) / n
    start = energy
    while steps < s.max_steps:
        try:
            run = llg.run(spins, s.chunk)
            new = float(run.energies[-1]) / n
        except klmgraph.DivergenceError:
            new = math.inf
        if not new <= energy + 1e-13:  # rose (or diverged): a smaller step
            dt /= 2
            if dt < s.dt / 256:
                break
            llg = klmgraph.LLG(provider, dt=dt, alpha=1.0, field=(0.0, 0.0, hz))
            continue
        steps += s.chunk
        spins, drop, energy = run.spins, energy - new, new
        if drop < s.tol * s.chunk:
            converged = True
            break
    total, field = llg.energy_and_field(spins)
    torque = float(torch.linalg.cross(spins, field, dim=-1).norm(dim=-1).max())
    # not converged: the step limit came first; the last chunk's fall per step says how far off
    return {"spins": spins, "energy_start": start, "energy_relax": float(total) / n, "steps": steps,
            "dt": dt, "max_torque": torque, "converged": converged, "last_drop_per_step": drop / s.chunk}


def follow(state: str, spins: torch.Tensor, fields, out, step) -> list[dict]:
    """Follow one state through ``fields`` from ``spins`` and back: an ansatz up from the lowest
    field, then down from the state reached at the top; a random-start state (RANDOM_STARTS,
    found at the top field) down from the top first, then back up. The return sweep's first
    field is the first sweep's last record; the ferromagnet is followed once, up.
    ``step(spins, hz)`` relaxes and measures: (spins, row values). Every record is a JSON file
    under ``out``/records, read back instead of computed again."""
    up = list(fields)
    first, back = (("down", up[::-1]), ("up", up)) if state in RANDOM_STARTS else (("up", up), ("down", up[::-1]))
    sweeps = [first] + ([] if state == "fm" or len(up) < 2 else [(back[0], back[1][1:])])
    rows = []
    for k, (direction, sweep) in enumerate(sweeps):
        folder = Path(out) / "records" / f"{state}_{direction}"
        folder.mkdir(parents=True, exist_ok=True)
        if k:
            rows.append({**rows[-1], "branch": f"{state}_{direction}", "direction": direction, "seconds": 0.0,
                         "cpu_seconds": 0.0})
        for hz in sweep:
            path = folder / f"{hz:.5f}.json"
            if path.exists():
                row = json.loads(path.read_text())
                spins = torch.tensor(row.pop("spins"), dtype=torch.float64)
                rows.append(row)
                continue
            t0, cpu = time.perf_counter(), time.process_time()
            spins, values = step(spins, hz)
            # CPU time as well: on a shared machine the wall time says little about the cost
            row = {"branch": f"{state}_{direction}", "state": state, "direction": direction, "hz": hz, **values,
                   "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu}
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps({**row, "spins": spins.tolist()}))
            rows.append(row)
    return rows


def run_state(args: tuple) -> list[dict]:
    """One state relaxed with k-grid ED along the field sweeps (module level: for the workers)."""
    state, s_dict, out = args
    torch.set_num_threads(1)
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in s_dict.items()})
    cell = cell_graph()
    lattice = klmgraph.triangular(12, 12, t1=HAMILTONIAN["t1"], t3=HAMILTONIAN["t3"])
    index = to_lattice(cell, lattice)
    relax_ed = solver(cell, s.relax_grid)

    def step(spins, hz):
        r = relax(relax_ed, spins, hz, s)
        spins = r.pop("spins")
        big = spins[index]  # the 12 x 12 lattice (3 magnetic cells) for the topology
        row = {"n_sk_per_cell": float(klmgraph.skyrmion_number(lattice, big)) / 3, "mz": float(spins[:, 2].mean()),
               **r}
        row.update(tetrahedron_energies(cell, s.energy_grids, spins, hz, row["mz"]))
        return spins, row

    return follow(state, ansatz(state, cell), s.fields, out, step)


def tetrahedron_energies(cell, grids, spins: torch.Tensor, hz: float, mz: float) -> dict:
    """E/N (electrons by the tetrahedron method, minus Hz M^z) on each grid (``energy_k<n>``), and
    the n -> inf limits: ``energy_tl`` from the two finest grids, ``energy_tl_prev`` from the two
    before (the finest grid's own value where there are only two): their difference is the
    grid error of ``energy_tl``. A grid that divides a finer one is a slice of its twists (nested
    grids such as 44, 88, 176 cost only the finest)."""
    levels = {}  # grid -> (n, n, 2N) levels of every twist
    for g in sorted(grids, reverse=True):
        parent = next((big for big in levels if big % g == 0), None)
        levels[g] = (solver(cell, g).twist_levels(spins).reshape(g, g, -1) if parent is None
                     else levels[parent][::parent // g, ::parent // g])
    ed = solver(cell, max(grids))
    values = [float(ed.tetrahedron_energy(levels[g].reshape(1, g * g, -1), (g, g))) / spins.shape[0] - hz * mz
              for g in grids]
    return {**{f"energy_k{g}": v for g, v in zip(grids, values)}, **extrapolate(values, grids)}


def extrapolate(values, grids) -> dict:
    """energy_tl and energy_tl_prev (see :func:`tetrahedron_energies`) of E/N on ascending grids."""
    e = torch.tensor(values, dtype=torch.float64)
    tl = float(klmgraph.richardson(e, grids))
    prev = float(klmgraph.richardson(e[:-1], grids[:-1])) if len(grids) > 2 else values[-1]
    return {"energy_tl": tl, "energy_tl_prev": prev}


def class_lowest(rows: list[dict], hz: float, key: str) -> dict:
    """{|n_sk|: the row of the lowest state of that class at the field hz}."""
    best = {}
    for r in rows:
        if r["hz"] == hz:
            k = round(abs(r["n_sk_per_cell"]))
            if k not in best or r[key] < best[k][key]:
                best[k] = r
    return best


def class_gaps(rows: list[dict], fields, low: int, high: int, key: str) -> list[float]:
    """E of the lowest |n_sk| = low state minus the lowest |n_sk| = high one, per field (nan
    where a class has no state)."""
    gaps = []
    for hz in fields:
        best = class_lowest(rows, hz, key)
        gaps.append(best[low][key] - best[high][key] if low in best and high in best else math.nan)
    return gaps


def tangent_crossing(rows: list[dict], h: float, gap: float, low: int, high: int, key: str) -> float:
    """Where the gap E_low - E_high of the two states lowest at the field h vanishes, followed
    along their tangents: for a relaxed state d(E/N)/dHz = -M^z (its spins are stationary), so
    the gap changes as M^z_high - M^z_low. Unlike the interpolation between two fields, this
    follows the same two states, which matters where a class's lowest state at the other field is
    another state (a crystal that turned into another one). nan without magnetisations."""
    best = class_lowest(rows, h, key)
    if "mz" not in best[low] or "mz" not in best[high]:
        return math.nan
    slope = best[high]["mz"] - best[low]["mz"]
    return h - gap / slope if slope > 0 else math.nan


def crossing(rows: list[dict], fields, low: int, high: int, fine: str, coarse: str | None = None) -> dict:
    """Where the lowest |n_sk| = low state stops being below the lowest |n_sk| = high one, by the
    energies under the key ``fine`` (and ``coarse``, a coarser solver, for the uncertainty).

    Returns the crossing field ``hz`` with its bracket, grid uncertainty and
    ``interpolation_uncertainty``, or,
    where the gap keeps one sign over the fields, a bound: ``bound`` ">" (the low class is lowest
    up to the top field) or "<" (the high class is lowest from the bottom field), and ``hz`` the
    field that bounds it. ``gaps`` (fine) and ``grid_error`` (fine minus coarse) per field go
    with it. ``hz`` is the tangent crossing (:func:`tangent_crossing`) from the end of the bracket
    nearer to it (the smaller gap) where that lies in the bracket; ``interpolation_uncertainty``
    is its distance from the linear interpolation of the gap between the two fields
    (``hz_linear``), the two estimates of a curve known at two points. Without magnetisations, or
    with a tangent outside the bracket, ``hz`` is the linear interpolation and the uncertainty nan.
    """
    d = class_gaps(rows, fields, low, high, fine)
    err = ([abs(a - b) for a, b in zip(d, class_gaps(rows, fields, low, high, coarse))] if coarse
           else [math.nan] * len(d))
    out = {"gaps": d, "grid_error": err, "bracket": None, "grid_uncertainty": math.nan, "bound": None,
           "interpolation_uncertainty": math.nan}
    known = [(h, g, e) for h, g, e in zip(fields, d, err) if math.isfinite(g)]
    if not known:
        return {**out, "hz": math.nan}
    for (h0, g0, e0), (h1, g1, e1) in zip(known, known[1:]):
        if g0 < 0 <= g1:
            slope = (g1 - g0) / (h1 - h0)
            linear = h0 - g0 / slope
            near_h, near_g = (h0, g0) if abs(g0) <= abs(g1) else (h1, g1)
            tangent = tangent_crossing(rows, near_h, near_g, low, high, fine)
            found = {**out, "hz": linear, "hz_linear": linear, "bracket": [h0, h1],
                     "grid_uncertainty": max(e0, e1) / slope}
            if h0 <= tangent <= h1:
                found.update(hz=tangent, interpolation_uncertainty=abs(tangent - linear))
            return found
    if all(g < 0 for _, g, _ in known):
        return {**out, "hz": known[-1][0], "bound": ">"}
    if all(g >= 0 for _, g, _ in known):
        return {**out, "hz": known[0][0], "bound": "<"}
    return {**out, "hz": math.nan}  # re-entrant: the table tells


def transitions(rows: list[dict], fields, ground: list[dict], fine: str, coarse: str) -> list[dict]:
    """Where the |n_sk| class of the lowest state changes between neighbouring fields: the
    crossing of the two classes there (which may skip a class, e.g. 2 -> 0)."""
    classes = [round(abs(g["n_sk_per_cell"])) for g in ground]
    return [{"from": a, "to": b, **crossing(rows, fields[i:i + 2], a, b, fine, coarse)}
            for i, (a, b) in enumerate(zip(classes, classes[1:])) if a != b]


def boundary_text(c: dict) -> str:
    """A crossing as it appears in the result line: 0.00503, >0.00800 (a bound) or nan."""
    return f"{c.get('bound') or ''}{c['hz']:.5f}" if math.isfinite(c["hz"]) else "nan"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="4 fields, relax grid 16, energy grids 32, 64, refinement grids 88, 176")
    p.add_argument("--hz", type=float, nargs="+", help="fields (default: the setting's)")
    p.add_argument("--relax-grid", type=int, help="k-grid n (n x n) of the relaxation")
    p.add_argument("--energy-grids", type=int, nargs="+", metavar="N",
                   help="k-grids of every record's energies (tetrahedron method), ascending, at least two")
    p.add_argument("--states", nargs="+", choices=STATES, help="candidate states (default: all)")
    p.add_argument("--max-steps", type=int, help="LLG steps per field at most")
    p.add_argument("--tol", type=float, help="stop when E/N falls by less than this per step")
    p.add_argument("--workers", type=int, default=1, help="processes (one state each at a time)")
    p.add_argument("--out", default=None, help="default klmgraph-output/triangular_phase_diagram/{quick,full}")
    p.add_argument("--refine-grids", type=int, nargs="*", metavar="N",
                   help="further k-grids, above the energy grids, for the states near the lowest of each "
                        "|n_sk| class (refine.csv); the boundaries come from them (default: the setting's; "
                        "none: the energy grids alone)")
    p.add_argument("--make-starts", action="store_true",
                   help="regenerate the random-start states in data/states with the published model and stop")
    p.add_argument("--checkpoint", default=str(Path(__file__).resolve().parents[2] / "shared" / "ecnn4klm"
                                              / "triangle_param.cpt"), help="for --make-starts")
    args = p.parse_args(argv)
    if args.make_starts:
        if not Path(args.checkpoint).is_file():
            raise SystemExit(f"--make-starts: no checkpoint at {args.checkpoint}")
        records = {name: make_random_start(name, Path(args.checkpoint)) for name in RANDOM_STARTS}
        for name, record in records.items():
            print(f"{RANDOM_STARTS[name][0]}: n_sk per cell {record['n_sk_per_cell']:.2f}, Mz {record['mz']:.3f}, "
                  f"copies within {record['spread']:.1e}")
        return records
    base = QUICK if args.quick else FULL
    s = Settings(fields=tuple(sorted(args.hz)) if args.hz else base.fields,
                 relax_grid=args.relax_grid or base.relax_grid,
                 energy_grids=tuple(args.energy_grids) if args.energy_grids else base.energy_grids,
                 dt=base.dt, tol=args.tol or base.tol, max_steps=args.max_steps or base.max_steps,
                 chunk=base.chunk, states=tuple(args.states) if args.states else base.states,
                 refine_grids=tuple(args.refine_grids) if args.refine_grids is not None else base.refine_grids)
    if s.relax_grid < 1:
        raise SystemExit(f"--relax-grid must be positive, got {s.relax_grid}")
    if any(g < 2 for g in s.energy_grids):
        raise SystemExit(f"--energy-grids: the tetrahedron method needs grids of at least 2, got {list(s.energy_grids)}")
    if len(s.energy_grids) < 2 or list(s.energy_grids) != sorted(set(s.energy_grids)):
        raise SystemExit(f"--energy-grids: give at least two grids in ascending order, got {list(s.energy_grids)}")
    if s.refine_grids and list(s.refine_grids) != sorted(set(s.refine_grids)) or any(
            g <= s.energy_grids[-1] for g in s.refine_grids):
        raise SystemExit(f"--refine-grids: give grids in ascending order above the energy grids "
                         f"{list(s.energy_grids)}, got {list(s.refine_grids)}")
    out = Path(args.out or f"klmgraph-output/triangular_phase_diagram/{'quick' if args.quick else 'full'}")
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != json.loads(json.dumps(asdict(s))):
        raise SystemExit(f"{out} holds a run with other settings ({settings_path}); use another --out")
    with atomic_path(settings_path) as tmp:
        tmp.write_text(json.dumps(asdict(s), indent=2))

    from tqdm.auto import tqdm

    # the slowest states first, so that two workers finish together
    todo = [(state, asdict(s), str(out)) for state in sorted(s.states, key=lambda x: x == "fm")]
    print(f"{len(todo)} states x {len(s.fields)} fields (up, then down) on the 48-site magnetic cell; relax with "
          f"ED, k-grid {s.relax_grid}x{s.relax_grid} (tiled {48 * s.relax_grid ** 2} sites), energies on "
          + ", ".join(f"{g}x{g}" for g in s.energy_grids), flush=True)
    start, rows = time.perf_counter(), []
    for result in in_workers(run_state, todo, args.workers, tqdm(total=len(todo), desc="states", unit="state")):
        rows += result
    refined = refine(rows, s, out, args.workers) if s.refine_grids else []
    summary = report(rows, s, out, time.perf_counter() - start, refined)
    print(f"hz_2_1={boundary_text(summary['hz_2_1'])} hz_1_0={boundary_text(summary['hz_1_0'])}")
    return summary


def in_workers(fn, tasks: list, workers: int, bar):
    """fn(task) for every task in order, in ``workers`` processes where there is more than one
    of each (fn at module level), advancing and closing the tqdm ``bar``."""
    with bar:
        if workers > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(workers) as pool:
                for result in pool.map(fn, tasks):
                    yield result
                    bar.update(1)
        else:
            for task in tasks:
                yield fn(task)
                bar.update(1)


def record_path(out: Path, row: dict) -> Path:
    """The JSON record holding a row's spins (a return sweep's first field is the first sweep's)."""
    path = out / "records" / row["branch"] / f"{row['hz']:.5f}.json"
    other = "down" if row["direction"] == "up" else "up"
    return path if path.exists() else out / "records" / f"{row['state']}_{other}" / f"{row['hz']:.5f}.json"


def refine_one(args: tuple) -> dict:
    """E/N of one record on the refinement grids (module level: for the workers)."""
    path, hz, mz, grids = args
    torch.set_num_threads(1)
    cpu = time.process_time()
    spins = torch.tensor(json.loads(Path(path).read_text())["spins"], dtype=torch.float64)
    energies = tetrahedron_energies(cell_graph(), grids, spins, hz, mz)
    return {**{f"energy_k{g}": energies[f"energy_k{g}"] for g in grids}, "cpu_seconds": time.process_time() - cpu}


def refine(rows: list[dict], s: Settings, out: Path, workers: int = 1) -> list[dict]:
    """The states within REFINE_MARGIN of the lowest of their |n_sk| class at each field (by the
    ladder's extrapolation) on the refinement grids too, extrapolated from the two finest of all
    grids: the entries the boundaries come from (refine.csv; each state's energies cached under
    ``out``/refine). Prints how the class gaps converge: per grid and per extrapolated pair."""
    grids = (*s.energy_grids, *s.refine_grids)
    chosen = {}
    for hz in s.fields:
        here = [r for r in rows if r["hz"] == hz]
        for k in {round(abs(r["n_sk_per_cell"])) for r in here}:
            mine = [r for r in here if round(abs(r["n_sk_per_cell"])) == k]
            low = min(r["energy_tl"] for r in mine)
            for r in mine:
                path = record_path(out, r)
                if r["energy_tl"] <= low + REFINE_MARGIN:
                    chosen.setdefault(path, r)  # a return sweep's first record is its first sweep's last
    folder = out / "refine"
    folder.mkdir(exist_ok=True)
    cache = {path: folder / f"{path.parent.name}_{path.name}" for path in chosen}
    todo = [(str(p), chosen[p]["hz"], chosen[p]["mz"], s.refine_grids) for p in chosen if not cache[p].exists()]

    def store(task, values):
        with atomic_path(cache[Path(task[0])]) as tmp:
            tmp.write_text(json.dumps(values))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"refine on {', '.join(f'{g}x{g}' for g in s.refine_grids)}", unit="state")
    for task, values in zip(todo, in_workers(refine_one, todo, workers, bar)):
        store(task, values)
    table = []
    for path, r in sorted(chosen.items(), key=lambda item: (item[1]["hz"], item[1]["branch"])):
        refined = json.loads(cache[path].read_text())
        cpu = refined.pop("cpu_seconds", math.nan)
        energies = {**{f"energy_k{g}": r[f"energy_k{g}"] for g in s.energy_grids}, **refined}
        values = [energies[f"energy_k{g}"] for g in grids]
        pairs = {f"tl_{a}_{b}": float(klmgraph.richardson(torch.tensor([x, y]), (a, b)))
                 for (a, x), (b, y) in zip(zip(grids, values), zip(grids[1:], values[1:]))}
        table.append({"record": str(path), "hz": r["hz"], "abs_n_sk": round(abs(r["n_sk_per_cell"])), "n_sk_per_cell": r["n_sk_per_cell"],
                      "branch": r["branch"], "state": r["state"], "mz": r["mz"], **energies, **pairs,
                      **extrapolate(values, grids), "cpu_seconds": cpu})
    keys = [f"energy_k{g}" for g in grids] + [f"tl_{a}_{b}" for a, b in zip(grids, grids[1:])]
    with atomic_path(out / "refine.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["hz", "abs_n_sk", "branch", "mz", *keys, "energy_tl",
                                               "energy_tl_prev"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    print("E/N gaps between the lowest states of neighbouring |n_sk| classes (1e-6 per site): tetrahedron "
          "method per grid, then extrapolated from consecutive pairs of grids")
    for hz in s.fields:
        for low, high in ((2, 1), (1, 0)):
            best = {k: min((e for e in table if e["hz"] == hz and e["abs_n_sk"] == k), key=lambda e: e["energy_tl"],
                           default=None) for k in (low, high)}
            if None not in best.values():
                gaps = ", ".join(f"{key[7:] if key.startswith('energy') else key[3:]}: "
                                 f"{(best[low][key] - best[high][key]) * 1e6:+.3f}" for key in keys)
                print(f"Hz = {hz:g} E(|n_sk|={low}) - E(|n_sk|={high}): {gaps}")
    return table


def grid_ladder(rows: list[dict], s: Settings) -> list[dict]:
    """Every grid of the ladder against the extrapolation (energy_tl): the largest change of E/N
    and of E/N minus the lowest state at the same field."""
    def relative(key):
        low = {h: min(r[key] for r in rows if r["hz"] == h) for h in s.fields}
        return [r[key] - low[r["hz"]] for r in rows]

    ladder = []
    for g in s.energy_grids:
        key = f"energy_k{g}"
        ladder.append({"grid": g, "against": "n -> inf",
                       "energy_max": max(abs(r[key] - r["energy_tl"]) for r in rows),
                       "relative_max": max(abs(a - b) for a, b in zip(relative(key), relative("energy_tl")))})
    return ladder


def report(rows: list[dict], s: Settings, out: Path, seconds: float, refined: list[dict] = ()) -> dict:
    """phase_diagram.csv, summary.json, the plots and the printed summary. The boundaries come
    from ``refined`` (:func:`refine`) where given, else from the ladder's extrapolation."""
    grids = [f"energy_k{g}" for g in s.energy_grids]
    best = {e["record"]: e for e in refined}
    rows = [{**r, "refined": str(record_path(out, r)) in best,
             **{k: best[str(record_path(out, r))][k] for k in ("energy_tl", "energy_tl_prev")
                if str(record_path(out, r)) in best}} for r in rows]
    source = list(refined) or rows
    lowest = {h: min(r["energy_tl"] for r in rows if r["hz"] == h) for h in s.fields}
    columns = ["branch", "state", "direction", "hz", "n_sk_per_cell", "mz", "energy_start", "energy_relax",
               *grids, "energy_tl", "energy_tl_prev", "refined", "minus_lowest", "max_torque", "steps", "converged",
               "last_drop_per_step", "dt", "seconds", "cpu_seconds"]
    with atomic_path(out / "phase_diagram.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in sorted(rows, key=lambda r: (r["branch"], r["hz"])):
            writer.writerow({**r, "minus_lowest": r["energy_tl"] - lowest[r["hz"]]})
    ground = [min((r for r in rows if r["hz"] == h), key=lambda r: r["energy_tl"]) for h in s.fields]
    ladder = grid_ladder(rows, s)
    all_grids = (*s.energy_grids, *s.refine_grids) if refined else s.energy_grids
    summary = {
        "settings": asdict(s), "solver": f"ED, k-grid {s.relax_grid}x{s.relax_grid} (relaxation, plain sum); energies "
                                         "by the tetrahedron method on " + ", ".join(f"{g}x{g}" for g in all_grids)
                                         + f", extrapolated from {all_grids[-2]} and {all_grids[-1]}; 48-site cell",
        "hz_2_1": crossing(source, s.fields, 2, 1, "energy_tl", "energy_tl_prev"),
        "hz_1_0": crossing(source, s.fields, 1, 0, "energy_tl", "energy_tl_prev"),
        "transitions": transitions(source, s.fields, ground, "energy_tl", "energy_tl_prev"),
        "paper": PAPER,
        "grid_ladder": ladder,
        "ground_states": [{"hz": g["hz"], "branch": g["branch"], "n_sk_per_cell": g["n_sk_per_cell"],
                           "mz": g["mz"]} for g in ground],
        "max_torque": max(r["max_torque"] for r in rows),
        "seconds": seconds, "cpu_seconds": sum(r.get("cpu_seconds", math.nan) for r in rows),
        "refine_cpu_seconds": sum(e["cpu_seconds"] for e in refined),
    }
    # nan where no field has both classes of a pair (e.g. --states sk2 fm)
    summary["grid_error_gaps_max"] = max((abs(e) for key in ("hz_2_1", "hz_1_0") for e in summary[key]["grid_error"]
                                          if math.isfinite(e)), default=math.nan)
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=float))
    plot(rows, s, ground, summary, out)
    for g in ground:
        print(f"Hz = {g['hz']:<7g} lowest: {g['branch']:9s} n_sk/cell = {g['n_sk_per_cell']:+.2f}  "
              f"Mz = {g['mz']:.3f}")
    for step in ladder:
        print(f"grid {step['grid']}x{step['grid']} against n -> inf: E/N within {step['energy_max']:.1e}, E/N minus "
              f"the lowest within {step['relative_max']:.1e}")
    print(f"class gaps: extrapolations from the two finest grids and from the two before differ by at most "
          f"{summary['grid_error_gaps_max']:.1e} per site")
    for t in summary["transitions"]:
        if t["bracket"]:
            print(f"lowest state: |n_sk| = {t['from']} -> {t['to']} at Hz = {t['hz']:.5f} +- "
                  f"{t['grid_uncertainty']:.5f} (grid) +- {t['interpolation_uncertainty']:.5f} (between the fields), "
                  f"between {t['bracket'][0]:g} and {t['bracket'][1]:g}")
    for key, (low, high) in (("hz_2_1", (2, 1)), ("hz_1_0", (1, 0))):
        c = summary[key]
        gaps = ", ".join(f"{h:g}: {g:+.2e} +- {e:.0e}" for h, g, e in zip(s.fields, c["gaps"], c["grid_error"]))
        print(f"{key}: {boundary_text(c)} +- {c['grid_uncertainty']:.6f} (grid) +- "
              f"{c['interpolation_uncertainty']:.6f} (between the fields), bracket {c['bracket']}; "
              f"paper {PAPER[key]}; E(|n_sk|={low}) - E(|n_sk|={high}) per field: {gaps}")
    cpu = summary["cpu_seconds"] + summary["refine_cpu_seconds"]
    print(f"{summary['cpu_seconds']:.0f} CPU seconds over the records and {summary['refine_cpu_seconds']:.0f} over the "
          f"refinement ({cpu / 120:.1f} min on 2 cores), {seconds:.0f} s of wall time")
    print(f"table {out / 'phase_diagram.csv'}, plots {out / 'energies.png'}, {out / 'phase_diagram.png'}")
    return summary


def plot(rows, s: Settings, ground, summary, out: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fine = "energy_tl"
    lowest = {g["hz"]: g[fine] for g in (min((r for r in rows if r["hz"] == h), key=lambda r: r[fine])
                                         for h in s.fields)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"sk2": "o", "sk1": "s", "sk1r": "P", "tq0": "^", "tq0z": "<", "1q": "v", "fm": "D"}
    for k, branch in enumerate(sorted({r["branch"] for r in rows})):
        mine = sorted((r for r in rows if r["branch"] == branch), key=lambda r: r["hz"])
        x = [r["hz"] for r in mine]
        y = [(r[fine] - lowest[r["hz"]]) * 1e5 for r in mine]
        ax.plot(x, y, "-" if mine[0]["direction"] == "up" else "--", marker=markers[mine[0]["state"]],
                color=f"C{k}", label=branch, ms=5)
        for r, v in zip(mine, y):
            ax.annotate(f"{abs(r['n_sk_per_cell']):.0f}", (r["hz"], v), fontsize=6, xytext=(2, 2),
                        textcoords="offset points")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("$H_z$")
    ax.set_ylabel("E/N minus the lowest at that field (1e-5)")
    ax.set_title("triangular model, ED (tetrahedron method, k-grid extrapolated) on the 48-site cell; "
                 "labels |n_sk| per cell;\nsolid: followed up in field, dashed: down", fontsize=8)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "energies.png", dpi=130)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    hz = [g["hz"] for g in ground]
    a1.plot(hz, [abs(g["n_sk_per_cell"]) for g in ground], "o-", color="C0", drawstyle="steps-mid")
    a1.set_ylabel("|n_sk| per cell")
    a2.plot(hz, [g["mz"] for g in ground], "s-", color="C1")
    a2.set_ylabel("$M^z$ per site")
    a2.set_xlabel("$H_z$")
    for a in (a1, a2):
        for t in summary["transitions"]:  # where the lowest state's class changes
            if math.isfinite(t["hz"]):
                a.axvline(t["hz"], color="k", lw=1)
                a.axvspan(t["hz"] - t["grid_uncertainty"], t["hz"] + t["grid_uncertainty"], color="k", alpha=0.15)
        for key, colour in (("hz_2_1", "C2"), ("hz_1_0", "C3")):
            a.axvline(PAPER[key], color=colour, ls=":", lw=1)
    a1.set_title("lowest state; black: where its |n_sk| changes (k-grid ED; band: grid error);\n"
                 "dotted: the paper's 96x96 ML-LLG, 2->1 green, 1->0 red", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "phase_diagram.png", dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
