"""Split runs (klmgraph.distributed, gloo on CPU): P = 1, 2, 3 (uneven) and 4 processes give the
trajectory of one process; resume with another P; a narrow halo and non-local providers are
refused; a process that fails stops the others with its error and leaves the last snapshot.

Spawning processes costs seconds each (every one imports torch), so one launch of 4 processes
runs every case, on subgroups of 1, 2 and 3 processes where fewer are wanted; the failure is
the last case.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import klmgraph
from klmgraph.distributed import ProcessFailed, launch, simulate_distributed
from klmgraph.nn import IFNN
from klmgraph.providers import Heisenberg, SingleIonAnisotropy
from klmgraph.trajectory import read_trajectory

STEPS = 40
SETTINGS = dict(snapshot_every=10, record_every=2, seed=5)


class FailingECNN(klmgraph.ECNN):
    """An ECNN that raises on one process after a number of evaluations (a failing process)."""

    fail_rank, fail_after, calls = None, None, 0

    def site_energies(self, spins, neighbours):
        self.calls += 1
        if dist.is_initialized() and dist.get_rank() == self.fail_rank and self.calls > self.fail_after:
            raise RuntimeError(f"simulated failure after {self.fail_after} evaluations")
        return super().site_energies(spins, neighbours)


class NaNECNN(klmgraph.ECNN):
    """An ECNN whose site energies turn NaN on one process after a number of evaluations."""

    nan_rank, nan_after, calls = None, None, 0

    def site_energies(self, spins, neighbours):
        self.calls += 1
        e = super().site_energies(spins, neighbours)
        if dist.get_rank() == self.nan_rank and self.calls > self.nan_after:
            return e * float("nan")
        return e


def setup(kind="ecnn", cls=klmgraph.ECNN):
    graph = klmgraph.square(12, 12)
    torch.manual_seed(0)
    if kind.startswith("ecnn"):
        # "ecnn-chunked": each process evaluates its domain in chunks of 30 sites
        chunks = 30 if kind == "ecnn-chunked" else None
        provider = cls.for_graph(graph, channels=2, lmax=1, num_interactions=1).double().bind(graph, chunk_sites=chunks)
    elif kind == "ifnn":
        provider = IFNN.for_graph(graph, cutoff=2.0, hidden=(8,)).double().bind(graph)
    else:  # spin terms only
        provider = Heisenberg(graph, 1.0) + SingleIonAnisotropy(0.3)
    llg = klmgraph.LLG(provider, dt=0.2, alpha=0.3, temperature=0.05, field=(0.0, 0.0, 0.1))
    return graph, llg, klmgraph.random_spins(graph, seed=3)


def _cases(folder):
    rank = dist.get_rank()
    folder = Path(folder)
    notes = {}
    groups = {p: dist.new_group(list(range(p))) for p in (1, 2, 3)}
    groups[4] = None
    runs = [("ecnn", p) for p in (1, 2, 3, 4)] + [("ifnn", 3), ("spins", 3), ("ecnn-chunked", 2)]
    for kind, p in runs:
        if rank < p:
            graph, llg, spins = setup(kind)
            simulate_distributed(llg, graph, spins, STEPS, folder / f"{kind}-p{p}", group=groups[p], **SETTINGS)
        dist.barrier()
    # resume with another number of processes: 2 up to step 20, then 3 up to the end
    graph, llg, spins = setup()
    for p, steps in ((2, 20), (3, STEPS)):
        if rank < p:
            simulate_distributed(llg, graph, spins, steps, folder / "resume", group=groups[p], **SETTINGS)
        dist.barrier()
    for name, make in (("halo", lambda: simulate_distributed(llg, graph, spins, 4, folder / "halo", halo_hops=1)),
                       ("ed", lambda: simulate_distributed(
                           klmgraph.LLG(klmgraph.ExactDiagonalization(graph, J=7.0, filling=0.48), dt=0.1),
                           graph, spins, 4, folder / "ed"))):
        try:
            make()
        except ValueError as err:
            notes[name] = str(err)
    # a NaN on process 2 during step 7: every process stops at that step
    graph, llg, spins = setup(cls=NaNECNN)
    llg.provider.model.nan_rank, llg.provider.model.nan_after = 2, 2 * 7
    try:
        simulate_distributed(llg, graph, spins, STEPS, folder / "nan", **SETTINGS)
    except klmgraph.DivergenceError as err:
        stopped = [None] * dist.get_world_size()
        dist.all_gather_object(stopped, (err.step, str(err)))
        notes["nan"] = stopped
    if rank == 0:
        (folder / "notes.json").write_text(json.dumps(notes))
    dist.barrier()
    # the last case: process 1 fails during step 25 (two evaluations per Heun step)
    graph, llg, spins = setup(cls=FailingECNN)
    llg.provider.model.fail_rank, llg.provider.model.fail_after = 1, 2 * 25
    simulate_distributed(llg, graph, spins, STEPS, folder / "failure", **SETTINGS)


@pytest.fixture(scope="module")
def split_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split")
    with pytest.raises(ProcessFailed) as failure:
        launch(_cases, 4, (str(folder),), threads=1, grace=120)
    return folder, str(failure.value)


def reference(tmp_path, kind="ecnn"):
    graph, llg, spins = setup(kind)
    klmgraph.simulate(llg, graph, spins, STEPS, tmp_path / kind, **SETTINGS)
    return read_trajectory(tmp_path / kind / "trajectory.h5")


def assert_same(a, b, tol=1e-5):
    assert np.array_equal(a.step, b.step) and np.array_equal(a.spins_step, b.spins_step)
    assert np.abs(a.spins - b.spins).max() < tol
    for name in ("energy", "magnetization", "skyrmion_number"):
        assert np.abs(getattr(a, name) - getattr(b, name)).max() < tol, name


@pytest.mark.parametrize("kind, processes", [("ecnn", 1), ("ecnn", 2), ("ecnn", 3), ("ecnn", 4), ("ifnn", 3),
                                             ("spins", 3), ("ecnn-chunked", 2)])
def test_split_run_equals_one_process(split_runs, tmp_path, one_thread, kind, processes):
    folder, _ = split_runs
    ref = reference(tmp_path, kind.split("-")[0])
    run = read_trajectory(folder / f"{kind}-p{processes}" / "trajectory.h5")
    assert_same(ref, run)
    # the noise was on: the spins moved far from the damped path of one step
    assert ref.spins_step[-1] == STEPS and np.abs(ref.spins[-1] - ref.spins[0]).max() > 0.1
    summary = json.loads((folder / f"{kind}-p{processes}" / "summary.json").read_text())
    assert math.isclose(summary["energy_per_site"], ref.energy[-1] / 144, rel_tol=1e-9, abs_tol=1e-12)


def test_resume_with_another_number_of_processes(split_runs, tmp_path, one_thread):
    folder, _ = split_runs
    run = read_trajectory(folder / "resume" / "trajectory.h5")
    assert_same(reference(tmp_path), run)
    assert json.loads((folder / "resume" / "summary.json").read_text())["resumed_from"] == 20


def test_narrow_halo_and_non_local_providers_are_refused(split_runs):
    folder, _ = split_runs
    notes = json.loads((folder / "notes.json").read_text())
    assert "narrower than the receptive field" in notes["halo"] and "2 hops" in notes["halo"]
    assert "exact diagonalization" in notes["ed"] and "not local" in notes["ed"]


def test_nan_on_one_process_stops_every_process_at_that_step(split_runs):
    folder, _ = split_runs
    stopped = json.loads((folder / "notes.json").read_text())["nan"]
    assert [step for step, _ in stopped] == [7] * 4
    assert "keeps the snapshots up to step 0" in stopped[0][1]  # the first process names the file
    assert read_trajectory(folder / "nan" / "trajectory.h5").spins_step[-1] == 0


def test_failing_process_stops_the_others_and_keeps_the_snapshot(split_runs, tmp_path, one_thread):
    folder, message = split_runs
    assert "process 1 of 4 failed" in message and "simulated failure after 50 evaluations" in message
    run = read_trajectory(folder / "failure" / "trajectory.h5")
    assert run.spins_step[-1] == 20  # the last committed snapshot before step 25
    ref = reference(tmp_path)
    assert np.abs(run.spins[-1] - ref.spins[2]).max() < 1e-5
    # and it continues in one process to the trajectory of an uninterrupted run
    graph, llg, spins = setup()
    result = klmgraph.simulate(llg, graph, spins, STEPS, folder / "failure", **SETTINGS)
    assert result.resumed_from == 20
    assert_same(ref, read_trajectory(folder / "failure" / "trajectory.h5"))


def test_simulate_command_with_nprocs_and_chunks(tmp_path, one_thread, capsys):
    from klmgraph.cli import main

    graph = klmgraph.square(12, 12)
    torch.manual_seed(0)
    klmgraph.ECNN.for_graph(graph, channels=2, lmax=1, num_interactions=1).save(tmp_path / "m.pt")
    common = ["simulate", "--size", "12", "12", "--provider", f"model:{tmp_path / 'm.pt'}", "--dt", "0.2",
              "--T", "0.05", "--alpha", "0.3", "--hz", "0.1", "--snapshot-every", "5", "--no-plots", "--quiet"]
    # ED is not local: refused before any process is started
    assert main(common[:5] + ["ed"] + common[6:] + ["--steps", "4", "--nprocs", "2", "--out", str(tmp_path / "ed")]) == 2
    assert "exact diagonalization" in capsys.readouterr().err
    assert main(common + ["--steps", "10", "--nprocs", "2", "--out", str(tmp_path / "split")]) == 0
    # continued in one process, in chunks, to step 20; against one unchunked process throughout
    assert main(common + ["--steps", "20", "--chunk-sites", "40", "--out", str(tmp_path / "split")]) == 0
    assert main(common + ["--steps", "20", "--out", str(tmp_path / "one")]) == 0
    assert_same(read_trajectory(tmp_path / "one" / "trajectory.h5"), read_trajectory(tmp_path / "split" / "trajectory.h5"))
    assert main(common + ["--steps", "4", "--chunk-sites", "x", "--out", str(tmp_path / "x")]) == 2
    assert "--chunk-sites must be a positive integer or auto, got 'x'" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_runs_the_same_command(tmp_path, one_thread):
    """`torchrun --nproc-per-node 2 -m klmgraph simulate ...` writes the run of one process."""
    import shutil
    import subprocess
    import sys

    from klmgraph.cli import main

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    graph = klmgraph.square(12, 12)
    torch.manual_seed(0)
    klmgraph.ECNN.for_graph(graph, channels=2, lmax=1, num_interactions=1).double().save(tmp_path / "m.pt")
    common = ["simulate", "--size", "12", "12", "--provider", f"model:{tmp_path / 'm.pt'}", "--dt", "0.2",
              "--T", "0.05", "--steps", "10", "--snapshot-every", "5", "--no-plots", "--quiet"]
    out = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "klmgraph", *common, "--out", str(tmp_path / "tr")],
                         capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    assert_same(read_trajectory(tmp_path / "one" / "trajectory.h5"), read_trajectory(tmp_path / "tr" / "trajectory.h5"))
