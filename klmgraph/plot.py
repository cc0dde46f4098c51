"""Figures: spin configurations, structure factors, LLG time series, the locality test, parity plots.

Every function draws on a matplotlib ``Axes`` (a new figure when ``ax`` is None) and returns
it, so figures compose and tests can run headless (Agg backend). matplotlib is imported when a
function is called, not when klmgraph is imported.
"""
from __future__ import annotations

import textwrap

import numpy as np
import torch

from .graph import HoppingGraph

__all__ = ["plot_spins", "plot_structure_factor", "plot_time_series", "plot_locality", "parity_plot",
           "plot_scan", "plot_k_grid_convergence", "save_run_figures"]


def _axes(ax, **kwargs):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt
    return plt.figure(**kwargs).add_subplot(1, 1, 1)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_spins(graph: HoppingGraph, spins, ax=None, arrows: bool = True, cmap: str = "RdBu_r",
               size: float | None = None, title: str | None = None):
    """Arrows of the in-plane components coloured by S^z (red up, blue down) at the lattice sites,
    over sites coloured the same way (the paper's Fig. 4b-d).

    Args:
        graph: graph with positions (the xy plane is drawn).
        spins: one configuration (N, 3).
        arrows: draw the arrows (turn off for very large lattices: only the coloured sites).
        size: marker size of the sites (default scaled with the number of sites).
        title: axes title.
    """
    s, pos = _numpy(spins), _numpy(graph.pos)
    if s.shape != (graph.num_nodes, 3):
        raise ValueError(f"plot_spins takes one configuration of shape ({graph.num_nodes}, 3), got {s.shape}")
    ax = _axes(ax, figsize=(6, 6))
    size = size if size is not None else max(2.0, 4000.0 / graph.num_nodes)
    # with arrows the sites are a faint background, so the arrows' colour carries S^z
    points = ax.scatter(pos[:, 0], pos[:, 1], c=s[:, 2], cmap=cmap, vmin=-1, vmax=1, s=size, linewidths=0,
                        alpha=0.35 if arrows else 1.0)
    mappable = points
    if arrows:
        mappable = ax.quiver(pos[:, 0], pos[:, 1], s[:, 0], s[:, 1], s[:, 2], cmap=cmap, clim=(-1, 1),
                             angles="xy", pivot="middle", scale_units="xy", scale=1.1,
                             width=min(0.006, 0.12 / np.sqrt(graph.num_nodes)), headwidth=3.5,
                             headlength=4, headaxislength=3.5, minlength=0.3)
        ax.margins(0.05)  # room for the arrows of the boundary sites
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(mappable, ax=ax, label=r"$S^z$", shrink=0.8)
    return ax


def plot_structure_factor(sf, ax=None, log: bool = False, cmap: str = "viridis", zones: int = 1):
    """S(q) of one configuration on its reciprocal grid, centred on q = 0.

    Args:
        sf: a :class:`~klmgraph.measure.StructureFactor` of one configuration (2D lattice).
        log: logarithmic colour scale.
        zones: repeat the first Brillouin-zone grid this many times in each direction (the grid
            of a lattice with one site per cell is periodic in the reciprocal lattice).
    """
    if sf.value.dim() != 2:
        raise ValueError("plot_structure_factor takes the structure factor of one 2D configuration")
    size = np.asarray(sf.size)
    index = _numpy(sf.index).reshape(-1, 2)
    value = _numpy(sf.value).reshape(-1)
    q = _numpy(sf.q).reshape(-1, 3)
    recip = np.stack([q[np.flatnonzero((index == e).all(1))[0]] * s for e, s in
                      zip(np.eye(2, dtype=int), size)])  # b1, b2 from the grid points (1,0), (0,1)
    centred = np.where(index > size // 2, index - size, index)
    base = (centred / size) @ recip[:, :2]
    shifts = [(i, j) for i in range(-(zones // 2), zones - zones // 2) for j in range(-(zones // 2), zones - zones // 2)]
    pts = np.concatenate([base + np.asarray(sh) @ recip[:, :2] for sh in shifts])
    vals = np.tile(value, len(shifts))
    ax = _axes(ax, figsize=(6, 5))
    norm = None
    if log:
        from matplotlib.colors import LogNorm
        positive = vals[vals > 0]
        norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-6), vmax=positive.max())
        vals = np.clip(vals, norm.vmin, None)
    points = ax.scatter(pts[:, 0], pts[:, 1], c=vals, cmap=cmap, norm=norm, marker="h", linewidths=0)
    ax.set_aspect("equal")
    ax.set_xlabel(r"$q_x$")
    ax.set_ylabel(r"$q_y$")
    ax.figure.colorbar(points, ax=ax, label=r"$S(\mathbf{q})$", shrink=0.8)
    # markers as large as one grid step on screen, so the map is contiguous at any lattice size
    step = min(np.linalg.norm(recip[k, :2]) / size[k] for k in range(2))
    ax.figure.canvas.draw()  # settle the layout (aspect, colorbar) before measuring the axes
    box = ax.get_window_extent()
    x0, x1 = ax.get_xlim()
    points_per_unit = box.width * 72.0 / ax.figure.dpi / (x1 - x0)
    points.set_sizes([(1.25 * step * points_per_unit) ** 2])
    return ax


def plot_time_series(trajectory, keys=("energy", "mz", "skyrmion_number"), axes=None, num_sites: int | None = None):
    """Observables of a trajectory against time, one panel each.

    Args:
        trajectory: a :class:`~klmgraph.trajectory.Trajectory` (or an object with ``time``,
            ``energy``, ``magnetization`` and optionally ``skyrmion_number``), or an
            :class:`~klmgraph.LLGRun` (energy only).
        keys: any of "energy" (per site), "mz", "abs_m" (|M|), "skyrmion_number",
            "predicted_field_error" (a committee's predicted RMSE of B and largest site error).
        axes: sequence of Axes, one per key (default: a new figure).
        num_sites: N for the energy per site (default: read from the trajectory).
    """
    time = _numpy(trajectory.times if hasattr(trajectory, "times") else trajectory.time)
    n = num_sites or (trajectory.num_sites if hasattr(trajectory, "num_sites") else
                      int(_numpy(trajectory.spins).shape[-2]))
    series = {}
    for key in keys:
        if key == "energy":
            energy = _numpy(trajectory.energies if hasattr(trajectory, "energies") else trajectory.energy)
            series[key] = (energy / n, "E / N")
        elif key in ("mz", "abs_m"):
            m = getattr(trajectory, "magnetization", None)
            if m is None:
                raise ValueError(f"{key}: this trajectory holds no magnetization")
            m = _numpy(m)
            series[key] = (m[..., 2], r"$M^z$") if key == "mz" else (np.linalg.norm(m, axis=-1), "|M|")
        elif key == "skyrmion_number":
            nsk = getattr(trajectory, "skyrmion_number", None)
            if nsk is None:
                raise ValueError("this trajectory holds no skyrmion numbers")
            series[key] = (_numpy(nsk), r"$n_\mathrm{sk}$")
        elif key == "predicted_field_error":
            extra = getattr(trajectory, "extra", None) or {}
            if "predicted_field_error" not in extra:
                raise ValueError("this trajectory holds no predicted field error (not a committee run)")
            series[key] = (np.stack([_numpy(extra["predicted_field_error"]).reshape(len(time)),
                                     _numpy(extra["predicted_field_error_max"]).reshape(len(time))], -1),
                           "predicted\nerror of B")
        else:
            raise ValueError(f"unknown key {key!r}: use energy, mz, abs_m, skyrmion_number or "
                             "predicted_field_error")
    if axes is None:
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(len(keys), 1, sharex=True, figsize=(6, 2.2 * len(keys)), squeeze=False)
        axes = axes[:, 0]
    for ax, key in zip(axes, keys):
        values, label = series[key]
        ax.plot(time, values.reshape(len(time), -1), lw=1)
        ax.set_ylabel(label)
        if key == "predicted_field_error":
            labels = ["RMS over sites", "largest site"]
            metadata = getattr(trajectory, "metadata", None) or {}
            # each curve is judged against its own threshold: draw both, in matching styles
            for name, style, text in (("uncertainty_threshold", dict(color="k", ls="--"), "RMS threshold"),
                                      ("uncertainty_site_threshold", dict(color="C1", ls=":"), "site threshold")):
                if metadata.get(name) is not None:
                    ax.axhline(metadata[name], lw=0.8, **style)
                    labels.append(f"{text} (training range)")
            ax.legend(labels, fontsize=7)
    axes[-1].set_xlabel("t")
    return axes


def plot_locality(result, ax=None, profile: bool = True):
    """|dB / B| against the distance to the rotated spin, log scale (paper Fig. S3).

    Args:
        result: a :class:`~klmgraph.measure.Locality`.
        profile: also draw the largest ratio per distance as a line.
    """
    ax = _axes(ax, figsize=(5, 4))
    d, r = _numpy(result.distance), _numpy(result.ratio)
    keep = d > 0
    ax.semilogy(d[keep], np.clip(r[keep], 1e-17, None), ".", ms=3, alpha=0.6, label="sites")
    if profile:
        shells, top = (_numpy(x) for x in result.profile())
        ax.semilogy(shells[shells > 0], np.clip(top[shells > 0], 1e-17, None), "-", lw=1, label="max per shell")
    ax.set_xlabel("distance to the rotated spin")
    ax.set_ylabel(r"$|\delta B| / |B|$")
    ax.legend(frameon=False)
    return ax


def parity_plot(predicted, reference, path=None, ax=None, title: str | None = None, gridsize: int = 80):
    """Predicted against reference field components, coloured by point density (log scale),
    with the diagonal (the paper's Fig. 3).

    Args:
        predicted, reference: field components of any (equal) shape.
        path: PNG to write (the figure is closed afterwards); None to only draw.
        ax: axes to draw on (default: a new 4.5 x 4 inch figure).
        title: default "RMSE = ...".

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    x, y = _numpy(reference).ravel(), _numpy(predicted).ravel()
    if x.shape != y.shape:
        raise ValueError(f"predicted and reference differ in size: {y.size} vs {x.size}")
    ax = _axes(ax, figsize=(4.5, 4))
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = 0.02 * (hi - lo or 1.0)
    hb = ax.hexbin(x, y, gridsize=gridsize, norm=LogNorm(), cmap="viridis", mincnt=1,
                   extent=(lo - pad, hi + pad, lo - pad, hi + pad))
    ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--")
    ax.set_xlabel("ED field component")
    ax.set_ylabel("predicted field component")
    ax.set_aspect("equal")
    ax.figure.colorbar(hb, ax=ax, label="points per bin")
    rmse = float(np.sqrt(np.mean((x - y) ** 2)))
    # wrapped: the figure is narrow, and a long title would be cut at its edges
    ax.set_title(textwrap.fill(title or f"RMSE = {rmse:.4g}", 42), fontsize=10)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
        plt.close(ax.figure)
    return ax


def plot_scan(rows, parameter: str = "hz", path=None, ax=None, title: str | None = None):
    """|n_sk| per magnetic cell and |M^z| against the swept parameter, on two y axes (the
    paper's Fig. 4a).

    Args:
        rows: dicts with the parameter, ``abs_skyrmion_number_per_cell`` and ``abs_mz`` (the
            rows of :func:`klmgraph.scan`); rows without values (failed runs) are skipped.
        parameter: "hz" or "temperature".
        path: PNG to write (the figure is closed afterwards); None to only draw.

    Returns:
        The axes of |n_sk| (the |M^z| axes is its ``twinx``).
    """
    import matplotlib.pyplot as plt

    good = [r for r in rows if r.get("abs_mz") is not None and r.get("abs_skyrmion_number_per_cell") is not None]
    good.sort(key=lambda r: r[parameter])
    x = [r[parameter] for r in good]
    ax = _axes(ax, figsize=(5.5, 3.8))
    ax.plot(x, [r["abs_skyrmion_number_per_cell"] for r in good], "o-", color="C0")
    ax.set_xlabel({"hz": r"$H_z$", "temperature": r"$T$"}.get(parameter, parameter))
    ax.set_ylabel(r"$|n_\mathrm{sk}|$ per magnetic cell", color="C0")
    ax.tick_params(axis="y", colors="C0")
    right = ax.twinx()
    right.plot(x, [r["abs_mz"] for r in good], "s--", color="C3")
    right.set_ylabel(r"$|M^z|$", color="C3")
    right.tick_params(axis="y", colors="C3")
    right.set_ylim(bottom=0)
    ax.set_ylim(bottom=0)
    if title:
        ax.set_title(title)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
        plt.close(ax.figure)
    return ax


def plot_k_grid_convergence(groups: dict, path=None):
    """|E/N(n) - E/N(reference)| and the field RMSE against the side n L of the tiled lattice
    that an n x n k-grid of an L x L supercell stands for, one line per (model, supercell,
    state) (examples/k_grid_convergence.py).

    Args:
        groups: name -> rows with ``size``, ``grid``, ``delta_energy_per_site``, ``field_rmse``
            (the reference row, whose difference is zero, is left out).
        path: PNG to write (closed afterwards); None to only draw.

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {}
    for name, rows in groups.items():
        rows = sorted((r for r in rows if float(r["field_rmse"]) > 0), key=lambda r: int(r["grid"]))
        n = [int(r["grid"]) * int(r["size"]) for r in rows]
        family = name.rsplit("/", 1)[0]  # model/size: one colour; the state sets the line style
        colour = colours.setdefault(family, f"C{len(colours)}")
        style = dict(marker="s" if "random" in name else "o", linestyle="-" if "random" in name else "--", color=colour)
        left.semilogy(n, [max(abs(float(r["delta_energy_per_site"])), 1e-16) for r in rows], label=name, **style)
        right.semilogy(n, [max(float(r["field_rmse"]), 1e-16) for r in rows], label=name, **style)
    left.axhline(1e-6, color="0.5", lw=0.8, ls=":")
    left.set_ylabel(r"$|E/N - E/N_\mathrm{ref}|$")
    right.set_ylabel(r"RMSE of $B$ against the reference grid")
    for ax in (left, right):
        ax.set_xlabel("n L: side of the tiled lattice (n x n twists, L x L supercell)")
        ax.set_xscale("log", base=2)
        ticks = sorted({int(r["grid"]) * int(r["size"]) for rows in groups.values() for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
        ax.minorticks_off()
    left.legend(fontsize=7)
    left.set_title("energy per site", fontsize=10)
    right.set_title("field", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def plot_scaling(halo_rows: list, memory_rows: list, path=None, note: str = ""):
    """Split and chunked runs (benchmarks/scaling.py): the halo per owned site against the sites
    a process owns, and the memory of one evaluation against lattice size, whole and in chunks.

    Args:
        halo_rows: rows with ``lattice``, ``owned``, ``halo_fraction``, ``processes``.
        memory_rows: rows with ``sites``, ``memory_mb``, ``chunk_sites`` (0: whole lattice).
        path: PNG to write (closed afterwards); None to only draw.
        note: a line under the figure (machine, date).

    Returns:
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for k, kind in enumerate(sorted({r["lattice"] for r in halo_rows})):
        rows = sorted((r for r in halo_rows if r["lattice"] == kind), key=lambda r: float(r["owned"]))
        left.loglog([float(r["owned"]) for r in rows], [float(r["halo_fraction"]) for r in rows], "o",
                    color=f"C{k}", label=f"{kind} (published ECNN, 5 hops)")
    owned = np.logspace(2, 7, 50)
    left.loglog(owned, 4 * 5 / np.sqrt(owned), "k:", lw=0.8, label="4 x 5 / sqrt(owned): square blocks")
    left.set_xlabel("sites owned by a process")
    left.set_ylabel("halo sites / owned sites")
    left.legend(fontsize=7)
    left.set_title("halo of a domain", fontsize=10)
    for chunked, marker in ((False, "o-"), (True, "s--")):
        rows = sorted((r for r in memory_rows if (int(r["chunk_sites"]) > 0) == chunked), key=lambda r: int(r["sites"]))
        if rows:
            label = "whole lattice" if not chunked else f"chunks of {int(rows[0]['chunk_sites'])} sites"
            right.loglog([int(r["sites"]) for r in rows], [max(float(r["memory_mb"]), 1e-1) for r in rows], marker,
                         label=label)
    right.set_xlabel("sites")
    right.set_ylabel("peak memory of one energy + field (MB)")
    right.legend(fontsize=7)
    right.set_title("one evaluation, float32", fontsize=10)
    if note:
        fig.text(0.5, 0.01, note, ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def save_run_figures(graph: HoppingGraph, folder, spins=None, prefix: str = "") -> list:
    """The figures of one run folder: final spins, S(q) and time series, as PNGs in ``folder``.

    Args:
        graph: the run's graph.
        folder: a folder written by :func:`klmgraph.simulate` (its ``trajectory.h5`` is read).
        spins: (N, 3) configuration to draw (default: the last snapshot).
        prefix: prepended to the file names.

    Returns:
        The paths written.
    """
    import matplotlib.pyplot as plt
    from pathlib import Path

    from .measure import structure_factor
    from .trajectory import read_trajectory

    folder = Path(folder)
    traj = read_trajectory(folder / "trajectory.h5")
    if spins is None:
        spins = torch.as_tensor(traj.spins[-1], dtype=torch.float64)
    spins = torch.as_tensor(spins, dtype=torch.float64)
    spins = spins / spins.norm(dim=-1, keepdim=True)  # float32 snapshots: restore unit length
    step = int(traj.spins_step[-1]) if traj.spins_step is not None and len(traj.spins_step) else None
    llg = traj.llg
    label = f"$H_z$ = {llg['field'][2]:g}, T = {llg['temperature']:g}" + (f", step {step}" if step is not None else "")
    paths = []
    ax = plot_spins(graph, spins, arrows=graph.num_nodes <= 10000, title=label)
    paths.append(folder / f"{prefix}spins.png")
    ax.figure.tight_layout()
    ax.figure.savefig(paths[-1], dpi=130)
    plt.close(ax.figure)
    if graph.description.get("vectors") is not None and len(graph.description["vectors"]) == 2 \
            and all(graph.description.get("periodic", [False])):
        ax = plot_structure_factor(structure_factor(graph, spins))
        ax.set_title(f"S(q), {label}")
        paths.append(folder / f"{prefix}structure_factor.png")
        ax.figure.tight_layout()
        ax.figure.savefig(paths[-1], dpi=130)
        plt.close(ax.figure)
    keys = ("energy",) + (("predicted_field_error",) if "predicted_field_error" in (traj.extra or {}) else ()) \
        + ("mz",) + (("skyrmion_number",) if traj.skyrmion_number is not None else ())
    axes = plot_time_series(traj, keys=keys)
    paths.append(folder / f"{prefix}time_series.png")
    axes[0].figure.tight_layout()
    axes[0].figure.savefig(paths[-1], dpi=130)
    plt.close(axes[0].figure)
    return paths
