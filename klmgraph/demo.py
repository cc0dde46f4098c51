"""The whole klmgraph path on a built-in default, in minutes on a laptop CPU: ``klmgraph demo``.

1. exact-diagonalization (ED) data on a small square Kondo lattice (the paper's square model:
   t1 = 1, J = 7, filling 0.48), random spin configurations;
2. a committee of ECNNs trained on it, then the active-learning loop of ``klmgraph learn``
   (:mod:`klmgraph.learn`): damped LLG driven by the committee on the training lattice, the
   visited states of highest committee spread labelled by ED, the committee fine-tuned on random
   + visited states (a model trained on random spins alone is about 4 times worse on the relaxed
   states the dynamics reaches than on random ones);
3. damped LLG dynamics with the committee on a lattice 16 times larger (4x per side), from
   random spins at T = 0, recording the committee's predicted field error;
4. the committee checked against ED on the final large-lattice state (field RMSE, energy per
   site, and how its own predicted error compared), which is the test that matters: the
   model was trained on the small lattice only;
5. figures (parity plot, spin snapshot, energy and predicted error, the learning report) and
   ``summary.json`` / ``summary.md``.

Every stage writes into the output folder and is resumable: running the same command again
reuses the data, continues an interrupted training or learning iteration (finished ones stay as
they are) and the LLG run to its length.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .data import generate_dataset, load_dataset
from .dynamics import LLG
from .electrons import ExactDiagonalization
from .lattice import square
from .spins import random_spins

__all__ = ["DemoSettings", "DEFAULT", "TINY", "fit_ecnn", "run_demo"]

SQUARE_PAPER = {"J": 7.0, "filling": 0.48}


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs.

    Attributes:
        size: side of the periodic square training lattice (size x size sites).
        train_samples, val_samples: random configurations labelled by ED.
        epochs: budget of the committee's first training in epochs; minutes: its wall-clock cap.
        committee: members of the committee.
        iterations: learning iterations (explore, label, fine-tune) on the training lattice.
        explore_runs, explore_steps: damped committee-LLG runs per iteration and their length.
        labels, holdout: explored states labelled per iteration to train on, and to measure.
        finetune_epochs, finetune_minutes: budget of each fine-tuning.
        finetune_energy_weight: lambda of the fine-tunings' loss (the first training's is 1).
        select_by: the committee spread that ranks the explored states, "rmse_field" or
            "max_site_error" (:class:`klmgraph.learn.SelectConfig`).
        scale: the LLG lattice is (scale * size) per side: scale**2 times more sites.
        steps, dt: LLG length and time step (damped, alpha = 1, T = 0, Hz = 0), in the learning
            iterations and on the large lattice.
        record_every: LLG steps between records (energy, predicted error) on the large lattice.
        seed: seed of the data, the initial weights and the initial spins.
    """

    size: int = 12
    train_samples: int = 40
    val_samples: int = 20
    epochs: int = 60
    minutes: float = 15.0
    committee: int = 4
    iterations: int = 1
    explore_runs: int = 8
    explore_steps: int = 200
    labels: int = 40
    holdout: int = 8
    finetune_epochs: int = 35
    finetune_minutes: float = 10.0
    finetune_energy_weight: float = 30.0
    select_by: str = "rmse_field"
    scale: int = 4
    steps: int = 200
    dt: float = 1.0
    record_every: int = 5
    seed: int = 0

    def __post_init__(self):
        for name in ("size", "train_samples", "val_samples", "epochs", "scale", "steps", "explore_runs",
                     "explore_steps", "labels", "holdout", "finetune_epochs", "record_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo setting {name} must be at least 1, got {getattr(self, name)}")
        if self.committee < 2:
            raise ValueError(f"demo setting committee must be at least 2, got {self.committee}")
        if self.iterations < 0:
            raise ValueError(f"demo setting iterations must be >= 0, got {self.iterations}")
        if self.select_by not in ("rmse_field", "max_site_error"):
            raise ValueError(f"demo setting select_by must be 'rmse_field' or 'max_site_error', got {self.select_by!r}")
        if not self.finetune_energy_weight >= 0:
            raise ValueError(f"demo setting finetune_energy_weight must be >= 0, got {self.finetune_energy_weight}")
        if self.dt <= 0 or self.minutes <= 0 or self.finetune_minutes <= 0:
            raise ValueError(f"demo settings dt and minutes must be positive, got {self.dt} and {self.minutes}")


DEFAULT = DemoSettings()
# the same path, about a minute on a 2-core CPU (CI runs it). The training stops on its epochs;
# the 10-minute caps only guard against a stuck run, so the trained model (and the accuracy
# tests/test_demo.py asserts) does not depend on the machine's load
TINY = DemoSettings(size=8, train_samples=16, val_samples=8, epochs=60, minutes=10.0, committee=2, iterations=1,
                    explore_runs=2, explore_steps=30, labels=6, holdout=3, finetune_epochs=10,
                    finetune_minutes=10.0, steps=60, record_every=2)

# The energy term (lambda = 1) fixes the energy's constant, so that E/N is comparable with ED.
# Adam lr 0.01 with a plateau schedule is the setting of the 30 x 30 reproduction
# (docs/results.md); patience is short because the demo's budget is short.
_OPTIMIZER = {"name": "adam", "lr": 0.01, "schedule": "plateau", "plateau_patience": 5, "early_stopping": 0}


def _timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def fit_ecnn(ed: ExactDiagonalization, out, train_samples: int, val_samples: int, epochs: int, minutes: float,
             seed: int = 0, device: str = "cpu", progress: bool = True):
    """Random configurations labelled by ``ed`` and an ECNN trained on them: the demo's first
    two stages, for any lattice (examples/custom_lattice.py uses it too).

    Writes ``out/data/{train,val}.h5`` and the run folder ``out/training``; both resume.

    Returns:
        (run, model, metrics, data_seconds): the result of :func:`klmgraph.train.train`, the best
        model on ``device``, :func:`klmgraph.train.evaluate` on the validation set, and the
        seconds spent on the ED data.
    """
    from .train import config_from_dict, evaluate, train

    out = Path(out)
    start = time.perf_counter()
    train_path = generate_dataset(out / "data" / "train.h5", ed, num_samples=train_samples, seed=seed,
                                  batch_size=4, progress=progress)
    val_path = generate_dataset(out / "data" / "val.h5", ed, num_samples=val_samples, seed=seed + 1,
                                batch_size=4, progress=progress)
    data_seconds = time.perf_counter() - start
    config = config_from_dict({
        "data": {"train": str(train_path), "validation": str(val_path), "augment": True},
        "model": {"type": "ecnn"},
        "optimizer": _OPTIMIZER,
        "training": {"out": str(out / "training"), "epochs": epochs, "minutes": minutes, "batch_size": 4,
                     "energy_weight": 1.0, "dtype": "float32", "device": device, "seed": seed},
    })
    run = train(config, progress=progress)
    model = run["model"].to(device)
    metrics = evaluate(model, load_dataset(val_path), batch_size=4)
    return run, model, metrics, data_seconds


def learning_config(s: DemoSettings, device: str = "cpu") -> dict:
    """The :mod:`klmgraph.learn` configuration of the demo's first two stages (as a TOML dict)."""
    return {
        "system": {"lattice": "square", "size": [s.size, s.size], "t1": 1.0, **SQUARE_PAPER},
        "initial": {"train_samples": s.train_samples, "validation_samples": s.val_samples, "seed": s.seed},
        "model": {"type": "ecnn", "committee": s.committee},
        "optimizer": dict(_OPTIMIZER),
        "training": {"epochs": s.epochs, "minutes": s.minutes, "batch_size": 4, "energy_weight": 1.0,
                     "dtype": "float32", "device": device, "seed": s.seed},
        # a smaller rate than the first training's: continue from the committee, do not restart it
        "finetune": {"epochs": s.finetune_epochs, "minutes": s.finetune_minutes, "lr": 0.003,
                     "energy_weight": s.finetune_energy_weight},
        "explore": {"conditions": [{"hz": 0.0, "T": 0.0}], "runs": s.explore_runs, "steps": s.explore_steps,
                    "dt": s.dt, "alpha": 1.0, "snapshot_every": max(1, s.explore_steps // 15),
                    "first_step": max(1, s.explore_steps // 15)},
        "select": {"labels": s.labels, "holdout": s.holdout, "min_gap": max(1, s.explore_steps // 5),
                   "by": s.select_by},
        "loop": {"iterations": s.iterations, "seed": s.seed},
    }


def run_demo(out="klmgraph-demo", settings: DemoSettings = DEFAULT, device: str = "cpu",
             progress: bool = True, log=print) -> dict:
    """Run the demo into the folder ``out``; returns the summary (also in ``out/summary.json``).

    Args:
        out: output folder (created; an existing demo folder is continued).
        settings: :data:`DEFAULT` (about 6 minutes on an idle 2-core CPU), :data:`TINY` (a few)
            or your own :class:`DemoSettings`.
        device: torch device of the training and the LLG runs.
        progress: show progress bars.
        log: called with one line of text per stage.
    """
    import matplotlib
    matplotlib.use("Agg")
    from .io import load_model
    from .learn import learn_config_from_dict, run_learning
    from .learn.loop import committee_training_run
    from .plot import parity_plot, save_run_figures
    from .simulation import simulate
    from .train import evaluate

    s = settings
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != asdict(s):
        raise ValueError(f"{out} holds a demo with other settings ({settings_path}); use another output "
                         "folder or delete it")
    settings_path.write_text(json.dumps(asdict(s), indent=2))
    summary = {"settings": asdict(s), "model": {"lattice": "square", "t1": 1.0, **SQUARE_PAPER}}

    # 1. ED data, 2. committee training and learning iterations
    config = learn_config_from_dict(learning_config(s, device))
    small = config.system.solver()
    log(f"[1/4] ED data: {s.train_samples} + {s.val_samples} random configurations on {small.graph.describe()}")
    log(f"[2/4] a committee of {s.committee} ECNNs ({s.epochs} epochs or {s.minutes:g} minutes), then {s.iterations} "
        f"learning iteration(s): damped committee-LLG on {small.graph.describe().split(':')[0]}, ED labels of the "
        f"{s.labels} states of highest committee spread, fine-tuning")
    start = time.perf_counter()
    learned = run_learning(config, out / "learn", device=device, progress=progress,
                           log=lambda line: log("      " + line))
    learn_seconds = time.perf_counter() - start
    model = load_model(learned["model"], map_location=device)
    val_set = load_dataset(out / "learn" / "data" / "val.h5")
    metrics = evaluate(model, val_set, batch_size=4)
    rmse = metrics["rmse_field"]
    parity_plot(metrics["field_pred"], metrics["field_true"], out / "parity.png",
                title=f"committee, {s.val_samples} random validation configurations: RMSE(B) = {rmse:.4f}")
    first = _training_log(committee_training_run(out / "learn", 0))
    tuned = [_training_log(p) for p in sorted((out / "learn").glob("iter*/training"))[1:]]
    field_scale = float(metrics["field_true"].std())
    entries = learned["iterations"]
    summary["training"] = {"epochs": first["epochs"], "best_epoch": first["best_epoch"],
                           "seconds": first["seconds"], "ended_by": first["ended_by"], "committee": s.committee,
                           "finetune_epochs": [t["epochs"] for t in tuned],
                           "finetune_seconds": [t["seconds"] for t in tuned],
                           "finetune_ended_by": [t["ended_by"] for t in tuned],
                           "val_rmse_field": rmse, "val_rmse_energy_per_site": metrics["rmse_energy_per_site"],
                           "field_component_std": field_scale, "model": learned["model"]}
    summary["learning"] = {"seconds": learn_seconds, "stopped": learned["stopped"], "iterations": [
        {k: v for k, v in e.items() if not isinstance(v, list)} for e in entries]}
    log(f"      random validation RMSE of B = {rmse:.4f} (components spread {field_scale:.3f}); explored states: "
        f"{entries[0]['explored_rmse_field']:.4f} -> {entries[-1]['explored_rmse_field']:.4f} (ED), "
        f"model in {learned['model']}")

    # 3. ML-LLG on the large lattice, with the committee's predicted error at every record
    large_size = s.scale * s.size
    large = square(large_size, large_size)
    log(f"[3/4] ML-LLG on {large.describe()} ({s.scale ** 2}x the training lattice): {s.steps} steps, dt = {s.dt:g}")
    provider = model.bind(large)
    spins = random_spins(large, seed=s.seed, dtype=torch.float32, device=device)
    llg = LLG(provider, dt=s.dt, alpha=1.0)
    snapshot_every = max(s.record_every, (s.steps // 4) // s.record_every * s.record_every)
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = simulate(llg, large, spins, s.steps, out / "llg", snapshot_every=snapshot_every,
                          record_every=s.record_every, metadata={"demo": asdict(s)}, progress=progress)
    figures = save_run_figures(large, out / "llg", spins=result.spins)
    summary["llg"] = {"lattice": large.describe(), "steps": result.step, "time": result.time,
                      "energy_per_site": result.energy_per_site, "abs_mz": result.abs_mz,
                      "seconds": result.wall_time if result.steps_run else None,
                      "uncertainty": result.uncertainty,
                      "uncertainty_warnings": [str(w.message) for w in caught],
                      "figures": [str(p) for p in figures]}

    # 4. the committee against ED on the large lattice's final state
    log(f"[4/4] ED of the final {large.num_nodes}-site state, to check the model far from its training lattice")
    final = result.spins.to(device="cpu", dtype=torch.float64)
    reference = ExactDiagonalization(large, **SQUARE_PAPER)
    (e_ed, b_ed), ed_seconds = _timed(reference.energy_and_field, final)
    model64 = model.to(dtype=torch.float64, device="cpu").bind(large)
    model64.energy_and_field(final)  # warm-up: the first call builds the neighbour tables
    (e_ml, b_ml), ml_seconds = _timed(model64.energy_and_field, final)
    predicted = float(model64.uncertainty(final).rmse_field)
    true_rmse = float((b_ml - b_ed).pow(2).mean().sqrt())
    parity_plot(b_ml, b_ed, out / "parity_llg_state.png",
                title=f"committee on the final ML-LLG state, {large.num_nodes} sites: "
                      f"RMSE(B) = {true_rmse:.4f} (predicted {predicted:.4f})")
    check = {"rmse_field": true_rmse, "predicted_rmse_field": predicted,
             "predicted_over_true": predicted / true_rmse if true_rmse else None,
             "energy_per_site_ml": float(e_ml) / large.num_nodes, "energy_per_site_ed": float(e_ed) / large.num_nodes,
             "ed_seconds": ed_seconds, "model_seconds": ml_seconds, "speedup": ed_seconds / ml_seconds,
             # the model learnt Gamma-point labels of the 12x12 lattice, as the paper's square model
             "reference": f"{reference.solver} on {large.describe()}"}
    summary["check_on_large_lattice"] = check
    summary["output"] = str(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary))
    log(f"      RMSE of B against {check['reference']}: {true_rmse:.4f} (the committee predicted {predicted:.4f}); "
        f"E/N model {check['energy_per_site_ml']:.5f}, ED {check['energy_per_site_ed']:.5f}; one evaluation: "
        f"model {ml_seconds:.3f} s, ED {ed_seconds:.2f} s")
    return summary


def _training_log(folder: Path) -> dict:
    """Epochs, best epoch, seconds and what ended a finished training run (its log.csv and config.json):
    ``ended_by`` is "epochs" (the epoch budget), "minutes" (the wall-clock cap) or "early stopping"."""
    import csv

    with open(folder / "log.csv") as f:
        rows = list(csv.DictReader(f))
    monitored = [float(r["val_rmse_field"]) for r in rows]
    best = min(range(len(rows)), key=monitored.__getitem__) if rows else -1
    config = json.loads((folder / "config.json").read_text())
    seconds = float(rows[-1]["elapsed_s"]) if rows else 0.0
    budget, minutes = config["training"]["epochs"], config["training"]["minutes"]
    ended_by = ("epochs" if len(rows) >= budget else "minutes" if minutes and seconds > 60 * minutes
                else "early stopping")
    return {"epochs": len(rows), "best_epoch": int(rows[best]["epoch"]) if rows else 0,
            "seconds": seconds if rows else None, "ended_by": ended_by}


_ENDED = {"epochs": "its epoch budget", "minutes": "the wall-clock cap (a busy machine: fewer epochs than planned)",
          "early stopping": "early stopping"}


def _markdown(summary: dict) -> str:
    t, llg, c, learn = summary["training"], summary["llg"], summary["check_on_large_lattice"], summary["learning"]
    s = summary["settings"]
    rows = [f"| iteration {e['iteration']}: explored-state RMSE of B by ED / predicted | "
            f"{e['explored_rmse_field']:.4f} / {e['predicted_rmse_field']:.4f} |" for e in learn["iterations"]]
    ratio = c["predicted_over_true"]
    verdict = ("within a factor 2 of" if ratio is not None and 0.5 <= ratio <= 2 else "not within a factor 2 of")
    return "\n".join([
        "# klmgraph demo",
        "",
        f"Square Kondo lattice, t1 = 1, J = 7, filling 0.48. Training lattice {s['size']}x{s['size']}, "
        f"{s['train_samples']} training and {s['val_samples']} validation random configurations, a committee of "
        f"{t['committee']} ECNNs, {len(learn['iterations']) - 1} learning iteration(s) adding {s['labels']} states "
        "of its own dynamics each.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| first training: epochs (best), ended by | {t['epochs']} ({t['best_epoch']}), {_ENDED[t['ended_by']]} |",
        f"| fine-tuning epochs per iteration, ended by | "
        f"{', '.join(f'{n} ({_ENDED[e]})' for n, e in zip(t['finetune_epochs'], t['finetune_ended_by'])) or 'none'} |",
        *rows,
        f"| random validation RMSE of B (components), final committee | {t['val_rmse_field']:.4f} |",
        f"| spread (std) of the ED field components | {t['field_component_std']:.4f} |",
        f"| ML-LLG lattice | {llg['lattice']} |",
        f"| LLG steps, final E/N (model) | {llg['steps']}, {llg['energy_per_site']:.5f} |",
        f"| reference solver of the check | {c['reference']} |",
        f"| RMSE of B, model vs ED on the final state | {c['rmse_field']:.4f} |",
        f"| the committee's predicted RMSE of B there (before ED) | {c['predicted_rmse_field']:.4f} |",
        f"| E/N on the final state: model / ED | {c['energy_per_site_ml']:.5f} / {c['energy_per_site_ed']:.5f} |",
        f"| one evaluation (E and B): model / ED | {c['model_seconds']:.3f} s / {c['ed_seconds']:.2f} s |",
        "",
        f"What the committee said: its predicted RMSE of B on the final {llg['lattice'].split(':')[0]} state was "
        f"{c['predicted_rmse_field']:.4f}, "
        f"{verdict} the {c['rmse_field']:.4f} that ED measured"
        + (f" ({ratio:.2f}x)." if ratio is not None else "."),
        ("During the run it warned: " + llg["uncertainty_warnings"][0]) if llg["uncertainty_warnings"]
        else "During the run its predicted error stayed within the range seen in training (no warning).",
        "",
        "The validation configurations are random; the LLG states are not. The learning iterations label states of "
        "the committee's own dynamics on the training lattice (learn/report.md), which is where a model trained on "
        "random spins alone fails.",
        "",
        "Figures: parity.png (validation), parity_llg_state.png (final LLG state), llg/spins.png, "
        "llg/structure_factor.png, llg/time_series.png (energy and predicted error), learn/error_vs_iteration.png, "
        "learn/true_vs_predicted.png.",
        "",
    ])
