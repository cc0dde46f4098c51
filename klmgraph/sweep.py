"""Parameter scans: one independent :func:`~klmgraph.simulate` run per value of Hz or T, a CSV
table and the Fig. 4a-style plot of |n_sk| and |M^z| against the parameter.

The runs are independent, so they can run in parallel processes (``jobs``); each gets its own
subfolder and resumes on its own when the scan is repeated.
"""
from __future__ import annotations

import csv
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from .dynamics import DivergenceError
from .files import atomic_path

__all__ = ["scan", "parse_values", "COLUMNS", "PARAMETERS"]

PARAMETERS = ("hz", "temperature")
COLUMNS = ("hz", "temperature", "skyrmion_number_per_cell", "abs_skyrmion_number_per_cell", "abs_mz",
           "energy_per_site", "skyrmion_number", "cell_sites", "step", "wall_time", "folder", "status",
           "predicted_rmse_field_max", "first_uncertain_step")  # the last two: committee providers


def parse_values(tokens: Sequence[str] | str, name: str = "Hz") -> list[float]:
    """Numbers from command-line tokens; each token may hold several separated by commas.

    Raises:
        ValueError: for an empty list, a token that is not a finite number, or a repeated value.
    """
    if isinstance(tokens, str):
        tokens = [tokens]
    values = []
    for token in tokens:
        for part in str(token).split(","):
            if not part.strip():
                continue
            try:
                value = float(part)
            except ValueError:
                raise ValueError(f"bad {name} list: {part.strip()!r} is not a number") from None
            if not math.isfinite(value):
                raise ValueError(f"bad {name} list: {part.strip()} is not finite")
            values.append(value)
    if not values:
        raise ValueError(f"the {name} list is empty")
    if len(set(values)) != len(values):
        raise ValueError(f"bad {name} list: {values} repeats a value")
    return values


def scan(run: Callable[[float, Path], object], values: Sequence[float], out, parameter: str = "hz",
         jobs: int = 1, plot: bool = True, title: str | None = None) -> list[dict]:
    """Run ``run(value, folder)`` for every value, then write ``scan.csv`` and ``scan.png``.

    Args:
        run: a picklable callable (a module-level function or a ``functools.partial`` of one)
            returning a :class:`~klmgraph.SimulationResult` for one value; it builds its own
            provider, so it works in a fresh process.
        values: the values of the parameter.
        out: scan folder; the run for value v goes to ``out/<parameter>=<v>``.
        parameter: "hz" or "temperature" (the CSV column the plot uses as x).
        jobs: parallel processes (spawned, one torch thread each); 1 runs in this process.
        plot: write ``scan.png`` (|n_sk| per cell and |M^z| against the parameter).
        title: of the plot.

    Returns:
        One row per value (see :data:`COLUMNS`), in the order of ``values``. A run that stops
        with a :class:`~klmgraph.DivergenceError` gives a row with ``status`` set to its message
        and empty values; the other runs go on.
    """
    if parameter not in PARAMETERS:
        raise ValueError(f"parameter must be one of {PARAMETERS}, got {parameter!r}")
    values = [float(v) for v in values]
    if not values:
        raise ValueError("give at least one value to scan")
    if parameter == "temperature" and min(values) < 0:
        raise ValueError(f"temperatures must be >= 0, got {values}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # repr is the shortest string that reads back as the same float: distinct values, distinct folders
    tasks = [(run, parameter, v, folder / f"{parameter}={v!r}") for v in values]
    if jobs == 1 or len(values) == 1:
        rows = [_point(*task) for task in tasks]
    else:
        context = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
        with ProcessPoolExecutor(max_workers=min(jobs, len(values)), mp_context=context,
                                 initializer=_one_thread) as pool:
            rows = list(pool.map(_point, *zip(*tasks)))
    write_csv(folder / "scan.csv", rows)
    if plot:
        from .plot import plot_scan
        plot_scan(rows, parameter, path=folder / "scan.png", title=title)
    return rows


def _one_thread() -> None:
    # parallel runs share the cores: one intra-op thread each avoids oversubscription
    import torch
    torch.set_num_threads(1)


def _point(run, parameter: str, value: float, folder: Path) -> dict:
    try:
        result = run(value, folder)
    except DivergenceError as err:
        row = dict.fromkeys(COLUMNS)
        row.update({parameter: value, "folder": str(folder), "status": str(err)})
        return row
    nsk = result.skyrmion_number_per_cell
    u = getattr(result, "uncertainty", None) or {}
    status = (f"stopped: uncertain at step {u['first_uncertain_step']}" if u.get("stopped_uncertain") else "ok")
    return {"predicted_rmse_field_max": u.get("max_rmse_field"), "first_uncertain_step": u.get("first_uncertain_step"),
            "hz": result.hz, "temperature": result.temperature, "skyrmion_number_per_cell": nsk,
            "abs_skyrmion_number_per_cell": None if nsk is None else abs(nsk), "abs_mz": result.abs_mz,
            "energy_per_site": result.energy_per_site, "skyrmion_number": result.skyrmion_number,
            "cell_sites": result.cell_sites, "step": result.step, "wall_time": result.wall_time,
            "folder": str(folder), "status": status}


def write_csv(path, rows: list[dict]) -> None:
    """The scan table, one row per run (empty cells for missing values); written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
