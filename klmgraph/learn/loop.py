"""The active-learning loop of ``klmgraph learn``: label what the dynamics visits.

    ED on random configurations -> train a committee
    repeat:  explore (committee-driven ML-LLG on the ED-sized lattice, every condition)
             -> measure (ED on a few random explored states never trained on: true error vs the
                committee's prediction; stop here when the prediction is below the target, the
                iterations are done or the ED budget would be exceeded)
             -> select the explored states of highest committee spread -> label them with ED
             -> merge them into the data set (with provenance) -> fine-tune the committee on
                random + explored data (the random data stay, so it does not forget them)

Fine-tuning the previous committee, not retraining from scratch: in the first probe of issue 13
(demo model, 12x12 square) retraining from scratch on random + explored data within the same
budget made the 48x48 check worse (RMSE(B) 0.84), fine-tuning brought it from 0.27 to 0.11.

Every stage writes its result under its final name only when it is complete (atomic renames;
ED data sets and training runs resume by themselves), so a loop killed anywhere continues
where it stopped when run again, without relabelling or retraining finished work. Layout of
the output folder::

    config.json                  the resolved configuration (a rerun must match it)
    data/train.h5, data/val.h5   random configurations, ED labels
    data/initial_train.h5        with [initial] data: data/train.h5 and those data sets, the
                                 first training's data
    iterNNN/model.pt             the committee that explores in iteration NNN
    iterNNN/training/            its training run (fine-tuning from iter(NNN-1)/model.pt)
    iterNNN/train.h5, val.h5     its data: random + explored labels (with provenance) and the
                                 random validation set + earlier hold-out states
    iterNNN/holdouts.h5          the earlier hold-out states alone: its calibration set
    iterNNN/explore.npz          candidate states (spins, run, step, condition, predicted error)
    iterNNN/selection.json       which candidates are labelled (and why)
    iterNNN/holdout.h5           hold-out explored states, ED labels (never trained on)
    iterNNN/measure.json         true and predicted errors of the committee
    iterNNN/labels.h5            the selected states, ED labels (trained on from NNN + 1)
    report.json, report.md, error_vs_iteration.png, true_vs_predicted.png
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from ..data import generate_dataset, load_dataset, merge_datasets, read_spins
from ..dynamics import LLG
from ..files import atomic_path
from ..io import load_model
from ..nn.committee import cross_fitted_rmse
from ..spins import ferromagnet, random_spins, skyrmion_crystal
from ..train import build, calibrate_file, config_from_dict, evaluate, load_matching_model, train
from .config import SELECT_BY, LearnConfig, check_candidates
from .report import write_report
from .selection import draw_holdout, select_by_spread

__all__ = ["run_learning", "committee_training_set", "committee_training_run", "STAGES"]

STAGES = ("random_data", "train", "explore_condition", "explore", "select", "holdout", "measure", "labels", "merge")


def committee_training_set(out: str | Path, iteration: int, initial_data: bool) -> Path:
    """The data set a learning run in ``out`` trains iteration ``iteration``'s committee on: for
    iteration 0 the random configurations (data/initial_train.h5 when [initial] data sets are
    merged in, ``initial_data``), for the fine-tunings iterNNN/train.h5 (random + explored)."""
    if iteration == 0:
        return Path(out) / "data" / ("initial_train.h5" if initial_data else "train.h5")
    return Path(out) / f"iter{iteration:03d}" / "train.h5"


def committee_training_run(out: str | Path, iteration: int) -> Path:
    """The ``klmgraph train`` run folder (log, checkpoints, augmentation record) in which a
    learning run in ``out`` trains iteration ``iteration``'s committee."""
    return Path(out) / f"iter{iteration:03d}" / "training"


def _write_npz(path: Path, arrays: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{key: value.numpy() for key, value in arrays.items()})


def _write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def _read_json(path: Path):
    return json.loads(path.read_text())


class _Loop:
    def __init__(self, config: LearnConfig, out, device: str, progress: bool, log, on_stage):
        self.c, self.out, self.device = config, Path(out), device
        self.progress, self.log, self.on_stage = progress, log, on_stage
        self.ed = config.system.solver()
        self.graph = self.ed.graph
        self._starts: list | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def threshold_margin(self) -> float:
        """[model] threshold_margin of the committee files (klmgraph train's default where unset)."""
        return config_from_dict({**self.c.train, "data": {"train": "-"}}).model.threshold_margin

    def it(self, k: int) -> Path:
        return self.out / f"iter{k:03d}"

    @property
    def starts(self) -> list:
        """Per condition: the (M, N, 3) states its runs start from (init = "file:PATH"), or None."""
        if self._starts is None:
            self._starts = [None if not c.init.startswith("file:") else
                            _read_start_states(c.init[5:], self.graph, f"[explore] conditions[{k}].init")
                            for k, c in enumerate(self.c.explore.conditions)]
        return self._starts

    @property
    def runs_per_condition(self) -> list:
        return [self.c.explore.runs if s is None else len(s) for s in self.starts]

    def check_initial_model(self) -> None:
        """[initial] model: a committee of at least 2 members that [model] describes."""
        run_config = config_from_dict({**self.c.train, "data": {"train": "-"}})
        if run_config.model.committee < 2:  # the parser already refuses it; the model file must match
            raise ValueError("[model] committee must be >= 2")
        site = SimpleNamespace(graph=self.graph, hamiltonian=json.loads(json.dumps(self.ed.parameters())))
        with torch.random.fork_rng():  # build seeds each member: leave the caller's generator alone
            configured = build(run_config, site)
        load_matching_model(self.c.initial.model, configured, "[initial] model")

    def stage_done(self, name: str, k: int | None = None) -> None:
        if self.on_stage is not None:
            self.on_stage(name, k)

    def labelled(self, k_last: int, with_train_labels_of_last: bool) -> int:
        """ED configurations labelled up to iteration k_last."""
        i, sel = self.c.initial, self.c.select
        count = i.train_samples + i.validation_samples + (k_last + 1) * sel.holdout
        return count + (k_last + int(with_train_labels_of_last)) * sel.labels

    # ------------------------------------------------------------------ stages
    def random_data(self):
        i = self.c.initial
        data = self.out / "data"
        for name, n, seed in (("train", i.train_samples, i.seed), ("val", i.validation_samples, i.seed + 1)):
            generate_dataset(data / f"{name}.h5", self.ed, num_samples=n, seed=seed, batch_size=4,
                             progress=self.progress)
        if i.data and not self.initial_train.exists():
            # merge_datasets refuses a data set of another lattice or Hamiltonian than the loop's
            merge_datasets(self.initial_train, [(data / "train.h5", None)] + [(p, None) for p in i.data])
            self.log(f"[start] training data: {i.train_samples} random configurations + "
                     f"{len(load_dataset(self.initial_train)) - i.train_samples} from {', '.join(i.data)}")
        self.stage_done("random_data")

    @property
    def initial_train(self) -> Path:
        """The first training's data: the random configurations and the [initial] data sets."""
        return self.training_set(0)

    def training_set(self, k: int) -> Path:
        """What iteration k's committee is trained on (:func:`committee_training_set`)."""
        return committee_training_set(self.out, k, bool(self.c.initial.data))

    def train(self, k: int) -> None:
        """iterNNN/model.pt: trained from scratch (k = 0) or fine-tuned from iteration k - 1."""
        target = self.it(k) / "model.pt"
        if target.exists():
            return
        if k == 0 and self.c.initial.model:
            self.log(f"[iteration 0] the committee of {self.c.initial.model} (not trained here)")
            with atomic_path(target) as tmp:
                shutil.copyfile(self.c.initial.model, tmp)
            self.stage_done("train", k)
            return
        raw = {name: dict(v) for name, v in self.c.train.items()}
        raw["training"]["out"] = str(committee_training_run(self.out, k))
        if k == 0:
            raw["data"] = {"train": str(self.training_set(0)), "validation": str(self.out / "data" / "val.h5")}
            what = "training the committee on random configurations"
        else:
            raw["data"] = {"train": str(self.training_set(k)), "validation": str(self.it(k) / "val.h5")}
            raw["training"].update(init=str(self.it(k - 1) / "model.pt"), epochs=self.c.finetune.epochs,
                                   minutes=self.c.finetune.minutes)
            if self.c.finetune.lr:
                raw["optimizer"]["lr"] = self.c.finetune.lr
            if self.c.finetune.energy_weight is not None:
                raw["training"]["energy_weight"] = self.c.finetune.energy_weight
            what = f"fine-tuning iteration {k - 1}'s committee on random + explored data"
        raw["training"].setdefault("device", self.device)
        self.log(f"[iteration {k}] {what}")
        run_config = config_from_dict(raw)
        run = train(run_config, progress=self.progress)
        if k > 0:
            # calibrated on the explored states held out so far (never trained on), the states the
            # committee is used on, instead of the random ones that dominate the validation set
            held = load_dataset(self.it(k) / "holdouts.h5", graph=self.graph)
            train_set = load_dataset(self.training_set(k), graph=self.graph)
            calibrate_file(run["out"] / "best.pt", train_set, torch.arange(len(train_set)), held,
                           torch.arange(len(held)), self.threshold_margin)
        with atomic_path(target) as tmp:
            shutil.copyfile(run["out"] / "best.pt", tmp)
        self.stage_done("train", k)

    def explore(self, k: int) -> None:
        """iterNNN/explore.npz: snapshots of committee-driven LLG runs and their predicted errors."""
        target = self.it(k) / "explore.npz"
        if target.exists():
            shutil.rmtree(self.it(k) / "explore_parts", ignore_errors=True)  # a kill before the clean-up
            return
        from tqdm.auto import tqdm

        e = self.c.explore
        committee = load_model(self.it(k) / "model.pt", graph=self.graph, map_location=self.device)
        provider = committee.bind(self.graph)
        self.log(f"[iteration {k}] exploring: {len(e.conditions)} condition(s), {sum(self.runs_per_condition)} runs "
                 f"x {e.steps} steps "
                 f"on {self.graph.describe()}")
        parts = {"spins": [], "run": [], "step": [], "condition": []}
        for c, cond in enumerate(tqdm(e.conditions, desc="explore", unit="condition", disable=not self.progress)):
            part = self._explore_condition(k, c, cond, provider)
            for key in parts:
                parts[key].append(part[key])
        data = {k_: torch.cat(v) for k_, v in parts.items()}
        data["spins"] = data["spins"].double()
        data["spins"] = data["spins"] / data["spins"].norm(dim=-1, keepdim=True)
        predicted, largest = [], []
        for chunk in torch.split(data["spins"], 16):
            u = provider.uncertainty(chunk.to(self.device))
            predicted.append(u.rmse_field.double().cpu())
            largest.append(u.max_field.double().cpu())
        data["predicted_rmse_field"], data["max_site_error"] = torch.cat(predicted), torch.cat(largest)
        data["calibration"] = torch.tensor(committee.calibration, dtype=torch.float64)
        _write_npz(target, data)
        shutil.rmtree(self.it(k) / "explore_parts", ignore_errors=True)
        self.stage_done("explore", k)

    def _explore_condition(self, k: int, c: int, cond, provider) -> dict:
        """One condition's snapshots, stored in iterNNN/explore_parts/ so that a killed exploration
        resumes at the condition it was in (each costs minutes to an hour at paper size)."""
        path = self.it(k) / "explore_parts" / f"condition{c:03d}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                return {key: torch.from_numpy(z[key]) for key in z.files}
        e, seed = self.c.explore, self.c.loop.seed
        spins = self._initial(c, seed * 1_000_003 + k * 1009 + c).to(self.device)
        llg = LLG(provider, dt=e.dt, alpha=e.alpha if cond.alpha is None else cond.alpha,
                  temperature=cond.T, field=(0.0, 0.0, cond.hz), integrator=e.integrator)
        run = llg.run(spins, e.steps, record_every=e.snapshot_every, record_spins=True,
                      seed=seed * 7919 + k * 131 + c)
        steps = torch.round(run.times.double().cpu() / e.dt).long()  # (R,)
        keep = steps >= e.first_step
        snaps = run.snapshots[keep].cpu()  # (R', B, N, 3)
        r, b = snaps.shape[:2]
        part = {"spins": snaps.reshape(r * b, -1, 3), "step": steps[keep].repeat_interleave(b),
                "run": torch.arange(b).repeat(r) + sum(self.runs_per_condition[:c]), "condition": torch.full((r * b,), c)}
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_npz(path, part)
        self.stage_done("explore_condition", k)
        return part

    def _initial(self, c: int, seed: int) -> torch.Tensor:
        cond, runs = self.c.explore.conditions[c], self.c.explore.runs
        if self.starts[c] is not None:
            return self.starts[c].to(torch.get_default_dtype())
        if cond.init == "random":
            return random_spins(self.graph, batch=runs, seed=seed)
        one = ferromagnet(self.graph) if cond.init == "ferromagnet" else skyrmion_crystal(self.graph)
        return one.expand(runs, *one.shape).clone()

    def candidates(self, k: int) -> dict:
        with np.load(self.it(k) / "explore.npz", allow_pickle=False) as z:
            return {key: torch.from_numpy(z[key]) for key in z.files}

    def select(self, k: int) -> None:
        """iterNNN/selection.json: the states to train on (highest spread) and the hold-out ones."""
        target = self.it(k) / "selection.json"
        if target.exists():
            return
        cand, sel = self.candidates(k), self.c.select
        chosen = select_by_spread(cand[SELECT_BY[sel.by]], cand["run"], cand["step"], cand["condition"],
                                  sel.labels, sel.min_gap, spins=cand["spins"], min_distance=sel.min_distance)
        holdout = draw_holdout(len(cand["run"]), chosen, sel.holdout, seed=self.c.loop.seed * 31 + k)
        _write_json(target, {"labels": chosen.tolist(), "holdout": holdout.tolist(),
                             "rule": f"highest {sel.by.replace('_', ' ')} first, >= {sel.min_gap} steps apart per run, "
                                     + (f">= {sel.min_distance:g} RMS spin difference from every state taken, "
                                        if sel.min_distance else "")
                                     + "every condition its share (the passed-over fill up by spread when too few are left); "
                                     "hold-out drawn at random among the rest"})
        self.stage_done("select", k)

    def label(self, k: int, which: str) -> Path:
        """ED labels of the selected (``labels``) or hold-out (``holdout``) states; resumable."""
        cand = self.candidates(k)
        index = torch.tensor(_read_json(self.it(k) / "selection.json")[which], dtype=torch.long)
        path = self.it(k) / f"{which}.h5"
        done = path.exists() and len(load_dataset(path, allow_partial=True)) == len(index)
        if not done:
            self.log(f"[iteration {k}] ED of {len(index)} explored states ({which}) with {self.ed.solver}")
            generate_dataset(path, self.ed, spins=cand["spins"][index], batch_size=4, progress=self.progress)
            self.stage_done(which, k)
        return path

    def provenance(self, k: int, which: str) -> dict:
        cand = self.candidates(k)
        index = torch.tensor(_read_json(self.it(k) / "selection.json")[which], dtype=torch.long)
        return {"iteration": torch.full((len(index),), k), "condition": cand["condition"][index],
                "step": cand["step"][index]}

    def measure(self, k: int) -> dict:
        """iterNNN/measure.json: the committee's true and predicted error on the hold-out states."""
        target = self.it(k) / "measure.json"
        if target.exists():
            return _read_json(target)
        path = self.it(k) / "model.pt"
        committee = load_model(path, graph=self.graph, map_location=self.device)
        held = load_dataset(self.it(k) / "holdout.h5", graph=self.graph)
        u = committee.bind(self.graph).uncertainty(held.spins.to(self.device))
        err = (u.field.double().cpu() - held.field)  # (H, N, 3)
        energy_err = (u.energy.double().cpu() - held.energy) / self.graph.num_nodes
        predicted = u.rmse_field.double().cpu()  # (H,)
        cand = self.candidates(k)
        explored_scale = 1.0  # the candidates' predicted errors carry the calibration they were explored with
        source = ("random validation configurations" if k == 0 else
                  "explored hold-out states of earlier iterations")
        if len(held) >= 2:
            # a committee is used on the states of its own dynamics; the calibration of its training
            # (random data for the first one: 0.42x the true error in learn_square; earlier
            # committees' explored states for the others: 1.7x and 2.2x in the demo) is refitted on
            # these explored states, and each one's prediction uses the factor fitted on the others
            # (leave one out), so the comparison with ED stays out of sample
            spread = u.field_error.double().cpu() / committee.calibration
            predicted = cross_fitted_rmse(spread, err)
            train_set = load_dataset(self.training_set(k), graph=self.graph)
            old = float(cand["calibration"]) if "calibration" in cand else committee.calibration
            committee = calibrate_file(path, train_set, torch.arange(len(train_set)), held,
                                       torch.arange(len(held)), self.threshold_margin)
            explored_scale = committee.calibration / old
            source = "these hold-out states, leave one out (the committee file is recalibrated on all of them)"
        val = evaluate(committee, load_dataset(self.out / "data" / "val.h5", graph=self.graph))
        result = {
            "iteration": k,
            "labels": self.labelled(k, with_train_labels_of_last=False),
            # a given first committee was trained on data of its own, not on the loop's
            "training_configurations": None if k == 0 and self.c.initial.model else
            len(load_dataset(self.initial_train)) + k * self.c.select.labels,
            "explored_rmse_field": float(err.pow(2).mean().sqrt()),
            "predicted_rmse_field": float(predicted.pow(2).mean().sqrt()),
            "val_rmse_field": val["rmse_field"],
            "explored_rmse_energy_per_site": float(energy_err.pow(2).mean().sqrt()),
            "predicted_rmse_field_all_explored": explored_scale * float(cand["predicted_rmse_field"].pow(2).mean().sqrt()),
            "holdout_true": err.pow(2).mean((-1, -2)).sqrt().tolist(),
            "holdout_predicted": predicted.tolist(),
            "calibration": committee.calibration, "calibration_source": source, "threshold": committee.threshold,
            "per_condition": self._per_condition(cand, explored_scale),
        }
        _write_json(target, result)
        self.stage_done("measure", k)
        return result

    def _per_condition(self, cand: dict, scale: float) -> list:
        rows = []
        for c, cond in enumerate(self.c.explore.conditions):
            mask = cand["condition"] == c
            rows.append({**cond.describe(), "predicted_rmse_field": scale * float(cand["predicted_rmse_field"][mask]
                                                                                   .pow(2).mean().sqrt())})
        return rows

    def merge(self, k: int) -> None:
        """iter(k+1)/train.h5 and val.h5: random data + explored labels with provenance."""
        nxt = self.it(k + 1)
        if all((nxt / name).exists() for name in ("train.h5", "val.h5", "holdouts.h5")):
            return
        conditions = [c.describe() for c in self.c.explore.conditions]
        data = self.out / "data"
        train_parts = [(self.initial_train, None)] + [(self.it(j) / "labels.h5", self.provenance(j, "labels"))
                                                     for j in range(k + 1)]
        val_parts = [(data / "val.h5", None)] + [(self.it(j) / "holdout.h5", self.provenance(j, "holdout"))
                                                 for j in range(k + 1)]
        merge_datasets(nxt / "val.h5", val_parts, conditions)
        merge_datasets(nxt / "holdouts.h5", val_parts[1:], conditions)
        merge_datasets(self.training_set(k + 1), train_parts, conditions)
        self.stage_done("merge", k)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        check_candidates(self.c, self.runs_per_condition)  # reads and checks the start files first
        if self.c.initial.model:
            self.check_initial_model()
        self.out.mkdir(parents=True, exist_ok=True)
        resolved = self.c.to_dict()
        starts = {c.init[5:]: _file_digest(Path(c.init[5:])) for c in self.c.explore.conditions
                  if c.init.startswith("file:")}
        if starts:  # a run resumes only from the same start states, not from a rewritten file of that name
            resolved["start_files_sha256"] = starts
        if self.c.initial.model:  # likewise from the same first committee
            resolved["initial_model_sha256"] = _file_digest(Path(self.c.initial.model))
        saved = self.out / "config.json"
        if saved.exists() and _read_json(saved) != json.loads(json.dumps(resolved)):
            raise ValueError(f"{self.out} holds a learning run with another configuration ({saved}); use another "
                             "--out or delete it")
        for extra in self.c.initial.data:  # before the random data's ED, not after it
            if load_dataset(extra, graph=self.graph).hamiltonian != json.loads(json.dumps(self.ed.parameters())):
                raise ValueError(f"[initial] data {extra} holds another Hamiltonian than [system] "
                                 f"({self.ed.parameters()})")
        _write_json(saved, resolved)
        self.log(f"[start] labels by {self.ed.solver} on {self.graph.describe()}; output {self.out}")
        self.random_data()
        entries, reason = [], None
        lp = self.c.loop
        k = 0
        while True:
            self.it(k).mkdir(exist_ok=True)
            self.train(k)
            self.explore(k)
            self.select(k)
            self.label(k, "holdout")
            entry = self.measure(k)
            entries.append(entry)
            write_report(self.out, entries, self.c, reason=None)
            self.log(f"[iteration {k}] explored states: RMSE(B) {entry['explored_rmse_field']:.4f} by ED, "
                     f"{entry['predicted_rmse_field']:.4f} predicted; random validation {entry['val_rmse_field']:.4f}; "
                     f"{entry['labels']} ED labels so far")
            if lp.target_rmse_field and entry["predicted_rmse_field_all_explored"] < lp.target_rmse_field:
                reason = (f"the predicted RMSE(B) on the explored states, "
                          f"{entry['predicted_rmse_field_all_explored']:.4g}, is below the target {lp.target_rmse_field:g}")
            elif k >= lp.iterations:
                reason = f"{lp.iterations} iteration(s) done"
            elif lp.ed_budget and self.labelled(k + 1, False) > lp.ed_budget:
                reason = (f"the next iteration would exceed the ED budget of {lp.ed_budget} labels "
                          f"({entry['labels']} used)")
            if reason is not None:
                break
            self.label(k, "labels")
            self.merge(k)
            k += 1
        write_report(self.out, entries, self.c, reason=reason)
        self.log(f"[done] {reason}; report {self.out / 'report.md'}, final committee {self.it(k) / 'model.pt'}")
        return {"iterations": entries, "stopped": reason, "model": str(self.it(k) / "model.pt"),
                "out": str(self.out)}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_start_states(path: str, graph, what: str) -> torch.Tensor:
    """(M, N, 3) unit spins of a spin file, checked against the loop's lattice."""
    try:
        return read_spins(path, graph)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def run_learning(config: LearnConfig, out, device: str = "cpu", progress: bool = True,
                 log: Callable[[str], None] = print,
                 on_stage: Callable[[str, int | None], None] | None = None) -> dict:
    """Run (or continue) the active-learning loop into the folder ``out``.

    Args:
        config: the loop's configuration (:func:`~klmgraph.learn.load_learn_config`).
        out: output folder; rerunning with the same configuration continues it.
        device: torch device of training and exploration (ED runs on the CPU).
        progress: progress bars.
        log: called with one line per stage.
        on_stage: called as ``on_stage(name, iteration)`` after each stage is stored (tests use
            it to interrupt the loop).

    Returns:
        dict with ``iterations`` (the report entries), ``stopped`` (why), ``model`` (the newest
        committee file) and ``out``.

    Raises:
        ValueError: if ``out`` holds a loop of another configuration.
    """
    return _Loop(config, out, device, progress, log, on_stage).run()
