"""Starting the processes of a split run: spawned on one machine (``--nprocs P``), or started
by torchrun (one machine or several, through its rendezvous; docs/scaling.md).

:func:`launch` spawns P processes, each joining a torch.distributed group (gloo on CPU, NCCL
with one GPU per process) before it calls the given function. When a process fails, the others
stop at their next exchange (their peer is gone) and close their files cleanly (the first
process's trajectory keeps its last committed snapshot); a process that does not stop within
``grace`` seconds is terminated (SIGTERM, which also closes files: see :func:`stop_on_sigterm`).
The error of the process that failed first is raised, naming it.
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..dynamics import DivergenceError

__all__ = ["launch", "ProcessFailed", "init_from_environment", "default_backend", "stop_on_sigterm", "BACKENDS"]

BACKENDS = ("auto", "gloo", "nccl", "mpi")


class ProcessFailed(RuntimeError):
    """A process of a split run failed; the message names it and its error.

    Attributes:
        rank: the process that failed first.
    """

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


def default_backend(device: str = "cpu") -> str:
    """NCCL for CUDA devices (one GPU per process), gloo otherwise."""
    return "nccl" if str(device).startswith("cuda") and dist.is_nccl_available() else "gloo"


def _check_backend(backend: str) -> None:
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available()}
    if backend not in available:
        raise ValueError(f"unknown backend {backend!r}: use one of {BACKENDS}")
    if not available[backend]:
        raise ValueError(f"this torch has no {backend} backend (available: "
                         f"{', '.join(b for b, ok in available.items() if ok) or 'none'})")


def stop_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks run (the trajectory writer
    commits and closes) when a launcher stops this process."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def init_from_environment(backend: str = "auto", device: str = "cpu", timeout: float = 600.0) -> bool:
    """Join the process group that torchrun (or another launcher setting RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) describes, or with ``backend="mpi"`` the MPI job (mpirun); False
    when there is no group of more than one process. With NCCL, process LOCAL_RANK uses GPU
    LOCAL_RANK.

    Raises:
        ValueError: for a backend this torch lacks.
    """
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if backend == "mpi":  # mpirun -n P klmgraph simulate --backend mpi: MPI knows rank and size
        _check_backend("mpi")
        dist.init_process_group("mpi", timeout=timedelta(seconds=timeout))
        stop_on_sigterm()
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    _join(backend, device, timeout)
    return True


def _join(backend: str, device: str = "cpu", timeout: float = 600.0) -> None:
    backend = default_backend(device) if backend == "auto" else backend
    _check_backend(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(seconds=timeout))
    stop_on_sigterm()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, backend, threads, function, args, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    stop_on_sigterm()
    torch.set_num_threads(threads)
    try:
        _join(backend)
        result = function(*args)
        # plain pickle bytes: torch's queue would pass tensors as shared memory of a process about to exit
        queue.put(("ok", rank, time.time(), pickle.dumps(result) if rank == 0 else None))
    except BaseException as err:  # noqa: B902 - reported to the launcher, whatever it is
        divergence = (err.step, err.time) if isinstance(err, DivergenceError) else None
        queue.put(("error", rank, time.time(), divergence, f"{type(err).__name__}: {err}", traceback.format_exc()))
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(function: Callable, nprocs: int, args: tuple = (), backend: str = "gloo", threads: int | None = None,
           grace: float = 60.0) -> Any:
    """Run ``function(*args)`` in ``nprocs`` spawned processes joined in a torch.distributed group.

    Args:
        function: a module-level function (spawned processes import it).
        nprocs: number of processes >= 1.
        backend: "gloo" (CPU), "nccl" (process k on GPU k) or "auto".
        threads: torch threads per process (default: the CPU cores divided among the processes).
        grace: seconds the other processes get to stop after one failed, before SIGTERM.

    Returns:
        what ``function`` returned on the first process.

    Raises:
        ProcessFailed: naming the process that failed first and its error.
        DivergenceError: when the run diverged (every process stops at the same step).
    """
    if not isinstance(nprocs, int) or isinstance(nprocs, bool) or nprocs < 1:
        raise ValueError(f"--nprocs must be a positive integer, got {nprocs!r}")
    if backend == "mpi":
        raise ValueError("MPI processes are started by mpirun, not spawned: run "
                         "mpirun -n P klmgraph simulate ... --backend mpi (without --nprocs)")
    _check_backend(backend if backend != "auto" else "gloo")
    threads = threads or max(1, (os.cpu_count() or 1) // nprocs)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    processes = [ctx.Process(target=_worker, args=(rank, nprocs, port, backend, threads, function, args, queue))
                 for rank in range(nprocs)]
    for p in processes:
        p.start()
    reports, first_failure, stopped = [], None, False
    while any(p.is_alive() for p in processes) or not queue.empty():
        while not queue.empty():
            reports.append(queue.get())
        failed = any(r[0] == "error" for r in reports) or any(p.exitcode not in (None, 0) for p in processes)
        if failed and first_failure is None:
            first_failure = time.monotonic()
        if first_failure is not None and not stopped and time.monotonic() - first_failure > grace:
            for p in processes:
                if p.is_alive():
                    p.terminate()  # SIGTERM: the writer closes (stop_on_sigterm)
            for p in processes:
                p.join(10)
                if p.is_alive():
                    p.kill()
            stopped = True
        time.sleep(0.05)
    for p in processes:
        p.join()
    while not queue.empty():
        reports.append(queue.get())
    errors = sorted((r for r in reports if r[0] == "error"), key=lambda r: r[2])
    if errors or any(p.exitcode != 0 for p in processes):
        if errors and all(r[3] for r in errors):  # a divergence: every process stopped at one step
            report = next((r for r in errors if r[1] == 0), errors[0])
            raise DivergenceError(report[4].split(": ", 1)[1], step=report[3][0], time=report[3][1])
        if not errors:
            codes = {rank: p.exitcode for rank, p in enumerate(processes)}
            raise ProcessFailed(f"processes of the split run ended without a report (exit codes {codes}; "
                                "killed, or out of memory?)", rank=min(r for r, c in codes.items() if c))
        rank, message = errors[0][1], errors[0][4]
        others = sorted({r[1] for r in errors[1:]} | {k for k, p in enumerate(processes) if p.exitcode and
                                                      k not in {r[1] for r in errors}} - {rank})
        detail = f"; processes {others} stopped after it" if others else ""
        raise ProcessFailed(f"process {rank} of {nprocs} failed: {message}{detail}", rank=rank)
    result = next((r[3] for r in reports if r[0] == "ok" and r[1] == 0), None)
    return None if result is None else pickle.loads(result)

