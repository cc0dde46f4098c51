"""A resumable LLG simulation: integrator + trajectory file + summary, in one call.

:func:`simulate` runs :meth:`LLG.run <klmgraph.LLG.run>` with a
:class:`~klmgraph.TrajectoryWriter` as its callback, so there is one integrator loop and one
writer. A run folder holds

* ``trajectory.h5``: observables at every record and spins at every snapshot
  (docs/file-formats.md);
* ``summary.json``: the final observables (written last, under a temporary name first).

Calling :func:`simulate` again with the same folder and settings continues from the last
snapshot in ``trajectory.h5``; because the noise is a function of (seed, step, site,
component) (:mod:`klmgraph.noise`) and spins are stored in the run's precision, an interrupted
and continued run ends in the same state as an uninterrupted one, also when it is continued on
another device (to float64 rounding of the noise, bit for bit on the same device). Asking for
more steps than a finished run holds extends it. Runs written by klmgraph before the
counter-based noise (their files store a generator state) are refused with a message.

Host synchronisation: the records are kept on the run's device and written to the file at
every snapshot; with the default settings a step costs one synchronisation (the NaN check).
A step whose energy, field or spins are NaN or infinite stops the run with
:class:`~klmgraph.DivergenceError` naming the step; the file keeps everything before it.

Committee providers (anything with ``uncertainty(spins)``, e.g. a bound
:class:`~klmgraph.nn.committee.Committee`): at every record (not every step: the integrator's
hot path stays one mean evaluation) the predicted field error is stored in the trajectory as
``predicted_field_error`` (RMS over sites, the predicted RMSE of B) and
``predicted_field_error_max`` (largest site), summarised in ``summary.json`` under
``uncertainty``; the first record outside the range seen in training (predicted RMSE of B above the
committee's ``threshold``, or a site above its ``site_threshold``) raises one
:class:`UncertaintyWarning` naming the step and the sites of largest predicted error, and with ``stop_when_uncertain`` the run stops there, storing that configuration as its
last snapshot (to feed the learning loop).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .dynamics import LLG, DivergenceError, prepare_spins
from .files import atomic_path
from .graph import HoppingGraph
from .measure import magnetic_cell_sites, skyrmion_number
from .trajectory import TrajectoryWriter, read_trajectory

__all__ = ["simulate", "SimulationResult", "UncertaintyWarning", "TRAJECTORY", "SUMMARY", "open_run", "RunStart",
           "finish_run", "divergence_error", "noise_seed"]

TRAJECTORY = "trajectory.h5"
NOISE = "philox4x32-10"  # klmgraph.noise; stored with a run so a resume uses the same stream
SUMMARY = "summary.json"


@dataclass
class SimulationResult:
    """Final state and observables of :func:`simulate` (also written to ``summary.json``).

    Attributes:
        folder: the run folder.
        spins: (N, 3) final configuration (not in the JSON summary).
        step, time: of the final configuration.
        hz, temperature, alpha, dt: the LLG settings (Hz is the z component of the field).
        energy_per_site: total energy (provider + Zeeman term) / N.
        magnetization: (3,) per site; abs_mz: |M^z|.
        skyrmion_number: total n_sk (None for graphs that are not 2D lattices).
        cell_sites: sites per magnetic unit cell used for the per-cell value, or None.
        skyrmion_number_per_cell: n_sk * cell_sites / N, or the total n_sk when no cell is known.
        note: how the magnetic cell was chosen (or why the total is reported).
        resumed_from: the snapshot step this call continued from (None for a fresh run).
        steps_run: steps integrated by this call.
        wall_time: seconds spent by this call.
        uncertainty: with a committee provider: the predicted field error over the run
            (``last_rmse_field``, ``max_rmse_field``, ``max_site_error``, ``threshold``,
            ``first_uncertain_step``, ``stopped_uncertain``), else None.
    """

    folder: str
    spins: torch.Tensor
    step: int
    time: float
    hz: float
    temperature: float
    alpha: float
    dt: float
    energy_per_site: float
    magnetization: list
    abs_mz: float
    skyrmion_number: float | None
    cell_sites: int | None
    skyrmion_number_per_cell: float | None
    note: str
    resumed_from: int | None
    steps_run: int
    wall_time: float
    uncertainty: dict | None = None

    def summary(self) -> dict:
        """The JSON-able fields (everything but the spins)."""
        out = asdict(self)
        out.pop("spins")
        return out


def simulate(llg: LLG, graph: HoppingGraph, spins: torch.Tensor, steps: int, out, snapshot_every: int = 100,
             record_every: int = 1, seed: int = 0, cell_sites: int | str | None = "auto",
             metadata: dict | None = None, overwrite: bool = False, progress: bool = False,
             stop_when_uncertain: bool = False, uncertainty_threshold: float | None = None) -> SimulationResult:
    """Run (or continue) LLG dynamics, writing a trajectory and a summary into the folder ``out``.

    Args:
        llg: the integrator with its provider, dt, alpha, T and field (B = B_provider + Hz z:
            give Hz as ``LLG(..., field=(0, 0, Hz))``).
        graph: the lattice graph (observables and the stored description).
        spins: (N, 3) initial configuration; ignored when the folder holds a run to continue.
        steps: total number of steps of the run (counted from step 0, also when continuing).
        out: run folder (created if needed).
        snapshot_every: store the spins every this many steps; the
            final configuration is always stored. A continued run restarts at the last one.
        record_every: record the observables every this many steps (divides snapshot_every).
        seed: seed of the thermal noise (a stream different from ``random_spins(seed=seed)``;
            the same numbers on every device).
        cell_sites: sites per magnetic unit cell for ``skyrmion_number_per_cell`` (48 for the
            triangular model of DESIGN.md); "auto" derives it from the final structure factor
            with :func:`~klmgraph.magnetic_cell_sites` and falls back to the total n_sk (saying
            so in ``note``) when the peaks do not span the plane; None reports the total.
        metadata: JSON-able dict stored in the trajectory (part of the settings that a
            continued run must repeat, e.g. how the provider and the initial state were made).
        overwrite: start afresh even if the folder holds a run.
        progress: show a progress bar.
        stop_when_uncertain: with a committee provider, stop at the first record outside the
            range seen in training (that configuration is the last snapshot).
        uncertainty_threshold: threshold of the predicted RMSE of B of a configuration (default:
            the committee file's ``threshold``; its ``site_threshold`` applies as well).

    Returns:
        :class:`SimulationResult`.

    Raises:
        ValueError: for inconsistent arguments, or a folder holding a run with other settings.
        DivergenceError: when a step produces NaN or inf (the message names the step and the
            last stored snapshot).

    Shapes:
        spins: (N, 3), float32 or float64, on the device the run should use.
    """
    started = time.perf_counter()
    monitor = _UncertaintyMonitor.of(llg.provider, uncertainty_threshold, stop_when_uncertain)
    if monitor is None and (stop_when_uncertain or uncertainty_threshold is not None):
        raise ValueError("stop_when_uncertain and uncertainty_threshold need a committee provider "
                         f"(one with an uncertainty method), not {type(llg.provider).__name__}")
    if monitor is not None:  # the thresholds are drawn in the time series
        drawn = {"uncertainty_threshold": monitor.threshold, "uncertainty_site_threshold": monitor.site_threshold}
        metadata = {**(metadata or {}), **{k: v for k, v in drawn.items() if v is not None}}
    run = open_run(llg, graph, spins, steps, out, snapshot_every, record_every, seed, cell_sites, metadata, overwrite)
    writer, start, spins, steps = run.writer, run.start, run.spins, run.steps
    callback = writer if monitor is None else monitor.wrap(writer)
    bar = None
    if progress and steps > start:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc="LLG", unit="step")
        inner = callback

        def callback(n, s, e):
            inner(n, s, e)
            bar.update(n - bar.n)
    try:
        if steps > start:
            try:
                result = llg.run(spins, steps - start, record_every=run.record_every, seed=noise_seed(seed),
                                 callback=callback, start_step=start)
                spins, energy, end = result.spins, result.energies[-1], steps
            except _Uncertain as stop:
                spins, energy, end = stop.spins, stop.energy, stop.step
        else:  # a finished run: its final record was cut with the resume; write it again
            energy, end = llg.energy_and_field(spins)[0], steps
            (writer if monitor is None else monitor.wrap(writer, stop=False))(steps, spins, energy)
    except DivergenceError as err:
        writer.close()
        raise divergence_error(err, run.path) from None
    finally:
        # any other interruption (KeyboardInterrupt, a provider's error) leaves a file that a
        # rerun continues from its last snapshot
        writer.close()
        if bar is not None:
            bar.close()
    uncertainty = None if monitor is None else monitor.summary(read_trajectory(run.path), stopped=end < steps)
    return finish_run(llg, graph, spins, energy, run, cell_sites, started, end=end, uncertainty=uncertainty)


@dataclass
class RunStart:
    """A run folder opened by :func:`open_run`: the writer and where the run starts.

    Attributes:
        writer: the :class:`~klmgraph.TrajectoryWriter` (resumed, or a new file).
        folder, path: the run folder and its trajectory file.
        steps, record_every: the run's settings (validated).
        start: the step to start from (the last snapshot of a continued run, else 0).
        resumed_from: that step for a continued run, else None.
        spins: (N, 3) the configuration at ``start``, on the given spins' device and dtype.
    """

    writer: TrajectoryWriter
    folder: Path
    path: Path
    steps: int
    record_every: int
    start: int
    resumed_from: int | None
    spins: torch.Tensor


def open_run(llg: LLG, graph: HoppingGraph, spins: torch.Tensor, steps: int, out, snapshot_every: int = 100,
             record_every: int = 1, seed: int = 0, cell_sites: int | str | None = "auto",
             metadata: dict | None = None, overwrite: bool = False) -> RunStart:
    """Validate the settings of :func:`simulate` and open (or resume) its run folder: the part of
    a run that a distributed run's first process does too (arguments as :func:`simulate`).

    Raises:
        ValueError: for inconsistent arguments, or a folder holding a run with other settings.
    """
    for name, value, low in (("steps", steps, 0), ("snapshot_every", snapshot_every, 1),
                             ("record_every", record_every, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    steps, snapshot_every, record_every = int(steps), int(snapshot_every), int(record_every)
    if snapshot_every % record_every:
        raise ValueError(f"snapshot_every ({snapshot_every}) must be a multiple of record_every ({record_every}): "
                         "snapshots are taken at records")
    if isinstance(cell_sites, str) and cell_sites != "auto":
        raise ValueError(f"cell_sites must be a positive integer, 'auto' or None, got {cell_sites!r}")
    if isinstance(cell_sites, (int, np.integer)) and cell_sites <= 0:
        raise ValueError(f"cell_sites must be positive, got {cell_sites}")
    spins = prepare_spins(spins)
    if spins.dim() != 2 or spins.shape[0] != graph.num_nodes:
        raise ValueError(f"simulate takes one configuration of shape ({graph.num_nodes}, 3), "
                         f"got {tuple(spins.shape)}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TRAJECTORY
    settings = {"seed": int(seed), "snapshot_every": snapshot_every, "record_every": record_every,
                "noise": NOISE, **(metadata or {})}
    if not overwrite and path.exists():
        _refuse_generator_runs(path)
    writer = TrajectoryWriter(path, graph, llg, spins_every=snapshot_every // record_every,
                              metadata=settings, overwrite=overwrite, resume=not overwrite,
                              dtype=_numpy_dtype(spins.dtype), final_step=steps)
    start, resumed_from = 0, None
    last = writer.last_snapshot
    if last is not None:
        if last.step > steps:
            writer.close()
            raise ValueError(f"{path} already holds {last.step} steps, more than the {steps} asked for: "
                             "ask for at least as many steps, or overwrite")
        start = resumed_from = last.step
        spins = last.spins.to(device=spins.device, dtype=spins.dtype)
    return RunStart(writer, folder, path, steps, record_every, start, resumed_from, spins)


def divergence_error(err: DivergenceError, path: Path) -> DivergenceError:
    """``err`` with what the trajectory at ``path`` keeps and what to do (the writer closed)."""
    kept = read_trajectory(path).spins_step
    kept = int(kept[-1]) if kept is not None and len(kept) else None
    return DivergenceError(f"{err}. {path} keeps the snapshots up to step {kept}; rerunning the same "
                           "settings would fail again: change dt (or the provider) and overwrite, or "
                           "choose another folder", step=err.step, time=err.time)


def finish_run(llg: LLG, graph: HoppingGraph, spins: torch.Tensor, energy, run: RunStart, cell_sites,
               started: float, end: int | None = None, uncertainty: dict | None = None) -> SimulationResult:
    """The final observables of a run, written to ``summary.json``.

    Args:
        end: the step the run stopped at (default: its last step; earlier when a committee's
            uncertainty stopped it).
        uncertainty: the committee's summary over the run, if any.

    Shapes:
        spins: (N, 3) the final configuration; energy: ()
    """
    end = run.steps if end is None else end
    result = _summarise(llg, graph, spins, energy, end, cell_sites, run.folder, run.resumed_from,
                        max(end - run.start, 0), time.perf_counter() - started)
    result.uncertainty = uncertainty
    _write_json(run.folder / SUMMARY, result.summary())
    return result


class UncertaintyWarning(UserWarning):
    """A committee's predicted field error left the range seen in its training."""


class _Uncertain(Exception):
    """Raised through LLG.run by the monitor to stop a run at an uncertain record."""

    def __init__(self, step, spins, energy):
        super().__init__(f"uncertain at step {step}")
        self.step, self.spins, self.energy = step, spins, energy


class _UncertaintyMonitor:
    """Records a committee's predicted field error at every record, warns once, may stop."""

    def __init__(self, provider, threshold, site_threshold, stop):
        self.provider, self.threshold, self.site_threshold, self.stop = provider, threshold, site_threshold, stop
        self.warned = False

    @classmethod
    def of(cls, provider, threshold, stop):
        if not callable(getattr(provider, "uncertainty", None)):
            return None
        model = getattr(provider, "model", None)
        if threshold is None:
            threshold = getattr(model, "threshold", None)
        site_threshold = getattr(model, "site_threshold", None)
        if stop and threshold is None and site_threshold is None:
            raise ValueError("stop_when_uncertain needs a threshold: the committee file holds none "
                             "(train it with [model] committee >= 2) and none was given")
        return cls(provider, threshold, site_threshold, stop)

    def wrap(self, writer, stop: bool = True):
        def callback(step, spins, energy):
            u = self.provider.uncertainty(spins)
            u.threshold, u.site_threshold = self.threshold, self.site_threshold
            extra = {"predicted_field_error": u.rmse_field, "predicted_field_error_max": u.max_field}
            uncertain = bool(u.uncertain().any())
            halt = uncertain and stop and self.stop
            writer(step, spins, energy, extra=extra, snapshot=halt)
            if uncertain and not self.warned:
                self.warned = True
                error = u.field_error.reshape(-1, u.field_error.shape[-1]).amax(0)  # (N,) over a batch
                sites = torch.argsort(error, descending=True)[:10].tolist()
                shown = ", ".join(f"{i} ({float(error[i]):.3g})" for i in sites)
                limits = " and ".join(f"{name} {value:.4g}" for name, value in
                                      (("RMSE threshold", self.threshold), ("site threshold", self.site_threshold))
                                      if value is not None)
                warnings.warn(UncertaintyWarning(
                    f"step {step}: the committee's predicted RMSE of B is {float(u.rmse_field.max()):.4g}, its "
                    f"largest site error {float(u.max_field.max()):.4g} ({limits}: the range seen in training); "
                    f"sites of largest predicted error: {shown}; the model is extrapolating"
                    + ("; stopping here (the configuration is the last snapshot)" if halt else "")), stacklevel=2)
            if halt:
                raise _Uncertain(step, spins, energy)
        return callback

    def summary(self, trajectory, stopped: bool) -> dict:
        rms = trajectory.extra.get("predicted_field_error")
        top = trajectory.extra.get("predicted_field_error_max")
        if rms is None or not len(rms):
            return {"threshold": self.threshold, "site_threshold": self.site_threshold}
        over = np.zeros(len(rms), dtype=bool)
        if self.threshold is not None:
            over |= rms.reshape(len(rms), -1).max(-1) > self.threshold
        if self.site_threshold is not None:
            over |= top.reshape(len(top), -1).max(-1) > self.site_threshold
        over = np.nonzero(over)[0]
        return {"last_rmse_field": float(np.max(rms[-1])), "max_rmse_field": float(np.max(rms)),
                "max_site_error": float(np.max(top)), "threshold": self.threshold,
                "site_threshold": self.site_threshold,
                "first_uncertain_step": int(trajectory.step[over[0]]) if len(over) else None,
                "stopped_uncertain": bool(stopped)}


def _refuse_generator_runs(path: Path) -> None:
    """Older runs drew their noise from a stored torch generator, whose state is specific to a
    device and cannot continue the counter-based stream: say so instead of diverging silently."""
    from .trajectory import stored_metadata
    stored = stored_metadata(path)
    if stored is not None and "noise" not in stored:
        raise ValueError(f"{path} was written by an older klmgraph whose noise came from a stored torch "
                         "generator state; it cannot be continued with the counter-based noise of this "
                         "version (same seed, any device): read it with read_trajectory, and overwrite "
                         "or choose another folder to run again")


def noise_seed(seed: int) -> int:
    """The seed of the counter-based noise stream of a run with ``seed``."""
    # random_spins(seed=s) draws from manual_seed(s); the noise must not reuse those numbers
    return (int(seed) * 0x9E3779B97F4A7C15 + 0x5851F42D4C957F2D) % (2 ** 63)


def _numpy_dtype(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def _summarise(llg, graph, spins, energy, step, cell_sites, folder, resumed_from, steps_run, wall) -> SimulationResult:
    n = graph.num_nodes
    m = spins.mean(0).double().cpu()
    try:
        nsk = float(skyrmion_number(graph, spins))
    except ValueError:  # not a 2D lattice
        nsk = None
    cells, note = None, ""
    if nsk is not None:
        if cell_sites == "auto":
            try:
                cells = magnetic_cell_sites(graph, spins)
                note = f"magnetic cell of {cells} sites from the structure-factor peaks"
            except ValueError as err:
                note = f"total n_sk reported: no magnetic unit cell found ({err})"
        elif cell_sites is None:
            note = "total n_sk reported (no magnetic cell given)"
        else:
            cells = int(cell_sites)
            note = f"magnetic cell of {cells} sites (given)"
    per_cell = None if nsk is None else (nsk * cells / n if cells else nsk)
    return SimulationResult(
        folder=str(folder), spins=spins, step=int(step), time=step * llg.dt, hz=float(llg.field[2]),
        temperature=llg.temperature, alpha=llg.alpha, dt=llg.dt,
        energy_per_site=float(torch.as_tensor(energy).double()) / n, magnetization=m.tolist(),
        abs_mz=abs(float(m[2])), skyrmion_number=nsk, cell_sites=cells, skyrmion_number_per_cell=per_cell,
        note=note, resumed_from=resumed_from, steps_run=int(steps_run), wall_time=wall)


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    raise TypeError(f"not JSON-able: {type(x).__name__}")
