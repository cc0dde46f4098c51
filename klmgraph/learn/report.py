"""What the learning loop writes for a person: report.json, report.md and two figures."""
from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_path

__all__ = ["write_report"]


def write_report(out, entries: list, config, reason: str | None) -> None:
    """Rewrite ``out``/report.json, report.md, error_vs_iteration.png and true_vs_predicted.png.

    Args:
        out: the loop's folder.
        entries: one dict per iteration (iterNNN/measure.json).
        config: the :class:`~klmgraph.learn.LearnConfig`.
        reason: why the loop stopped (None while it runs).
    """
    out = Path(out)
    report = {"solver": config.system.solver().solver, "lattice": config.system.lattice,
              "size": list(config.system.size), "conditions": [c.describe() for c in config.explore.conditions],
              "stopped": reason, "iterations": entries}
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown(report))
    if entries:
        _figures(out, entries)


def _markdown(report: dict) -> str:
    lines = [
        "# klmgraph learn: report", "",
        f"Labels: {report['solver']} on {report['lattice']} {'x'.join(map(str, report['size']))}. "
        f"Conditions explored: {', '.join(_condition(c) for c in report['conditions'])}.", "",
        "Explored RMSE(B): the committee's mean field against ED on hold-out explored states (never trained on); "
        "predicted: the committee's own estimate on the same states (calibrated spread); validation: random "
        "configurations.", "",
        "| iteration | ED labels so far | training configs | explored RMSE(B), ED | predicted | ratio | "
        "random validation RMSE(B) | explored RMSE(E/N) | predicted on all explored |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in report["iterations"]:
        ratio = e["predicted_rmse_field"] / e["explored_rmse_field"] if e["explored_rmse_field"] else float("nan")
        trained_on = "given" if e["training_configurations"] is None else e["training_configurations"]
        lines.append(f"| {e['iteration']} | {e['labels']} | {trained_on} | "
                     f"{e['explored_rmse_field']:.4f} | {e['predicted_rmse_field']:.4f} | {ratio:.2f} | "
                     f"{e['val_rmse_field']:.4f} | {e['explored_rmse_energy_per_site']:.2e} | "
                     f"{e['predicted_rmse_field_all_explored']:.4f} |")
    entries = report["iterations"]
    if len(entries) > 1:
        first, last = entries[0]["explored_rmse_field"], entries[-1]["explored_rmse_field"]
        lines += ["", f"Explored-state error: {first:.4f} -> {last:.4f} ({last / first:.2f}x the first iteration's)."]
    lines += ["", f"Stopped: {report['stopped'] or 'still running'}.", "",
              "Figures: error_vs_iteration.png, true_vs_predicted.png.", ""]
    return "\n".join(lines)


def _condition(c: dict) -> str:
    return f"Hz = {c['hz']:g}, T = {c['T']:g}" + (f", {c['init']} start" if c.get("init", "random") != "random" else "")


def _figures(out: Path, entries: list) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    it = [e["iteration"] for e in entries]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(it, [e["explored_rmse_field"] for e in entries], "o-", label="explored states, ED (hold-out)")
    ax.plot(it, [e["predicted_rmse_field"] for e in entries], "s--", label="explored states, committee's prediction")
    ax.plot(it, [e["val_rmse_field"] for e in entries], "^:", label="random validation set, ED")
    ax.set_xlabel("iteration")
    ax.set_ylabel("RMSE of B")
    ax.set_yscale("log")
    ax.set_xticks(it)
    ax.legend(fontsize=8)
    ax.set_title("error against iteration")
    fig.tight_layout()
    fig.savefig(out / "error_vs_iteration.png", dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    cmap = plt.get_cmap("viridis")
    values = []
    for e in entries:
        colour = cmap(e["iteration"] / max(1, it[-1]))
        ax.scatter(e["holdout_true"], e["holdout_predicted"], s=14, color=colour, alpha=0.8,
                   label=f"iteration {e['iteration']}")
        ax.scatter([e["explored_rmse_field"]], [e["predicted_rmse_field"]], s=90, marker="*", color=colour,
                   edgecolor="k")
        values += e["holdout_true"] + e["holdout_predicted"]
    lo, hi = min(values) * 0.7, max(values) * 1.4
    line = np.array([lo, hi])
    ax.plot(line, line, "k-", lw=0.8)
    ax.plot(line, 2 * line, "k:", lw=0.8)
    ax.plot(line, line / 2, "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import NullFormatter
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("true RMSE of B (ED), per hold-out state")
    ax.set_ylabel("predicted RMSE of B (committee)")
    ax.set_title("true vs predicted (stars: iteration RMSE;\ndotted: factor 2)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "true_vs_predicted.png", dpi=130)
    plt.close(fig)
