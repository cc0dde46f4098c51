"""A resumable LLG run on a lattice split over the processes of a torch.distributed group.

Every process calls :func:`simulate_distributed` with the same arguments (as with
:func:`klmgraph.simulate`); each integrates the spins of its domain. Per force evaluation one
halo exchange of spins and one reverse exchange of halo gradients; the thermal noise of a site
is the counter-based stream of its global index and the step (:mod:`klmgraph.noise`), so the
trajectory is that of one process, whatever the number of processes (to rounding: sums run in
another order). Observables are partial sums reduced over the processes; the first process
writes the run folder, exactly as :func:`klmgraph.simulate` does (the spins of a snapshot are
gathered to it), so ``read_trajectory`` reads it, and it resumes with any number of processes
(or one).
"""
from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from ..domains import check_halo, domain_of, partition
from ..dynamics import LLG, DivergenceError, prepare_spins
from ..measure import solid_angle_sum, triangles_on
from ..providers import Zeeman, as_provider
from ..simulation import SimulationResult, divergence_error, finish_run, noise_seed, open_run
from .exchange import HaloExchange
from .provider import DomainProvider, provider_terms, required_halo

__all__ = ["simulate_distributed", "split_run"]


class _SplitRun:
    """One process's share of a run: its domain, exchange, provider, integrator and the
    triangles of the skyrmion number whose first corner it owns."""

    def __init__(self, llg: LLG, graph, halo_hops: int | None, group):
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.root = dist.get_global_rank(group, 0) if group is not None else 0
        total = as_provider(llg.provider)
        if any(llg.field):
            total = total + Zeeman(llg.field)
        terms = provider_terms(total)
        need = required_halo(terms, graph)
        halo = need if halo_hops is None else int(halo_hops)
        check_halo(halo, need, "the provider")
        self.owner = partition(graph, self.world, halo)
        self.skyrmions = len(graph.description.get("vectors", [])) == 2
        extra, triangles = None, None
        if self.skyrmions:
            triangles = triangles_on(graph, "cpu")
            triangles = triangles[self.owner[triangles[:, 0]] == self.rank]
            extra = triangles.flatten()
        self.domain = domain_of(graph, self.owner, self.rank, halo, extra)
        self.exchange = HaloExchange(self.domain, self.owner, group)
        if self.skyrmions:
            local = torch.full((graph.num_nodes,), -1, dtype=torch.long)
            local[self.domain.sites] = torch.arange(self.domain.num_local)
            self.triangles = local[triangles]
        self.provider = DomainProvider(terms, graph, self.domain, self.exchange)
        self.llg = LLG(self.provider, dt=llg.dt, alpha=llg.alpha, temperature=llg.temperature,
                       integrator=llg.integrator, iterations=llg.iterations, domain=self.exchange)
        self.num_sites = graph.num_nodes
        self.counts = torch.bincount(self.owner, minlength=self.world)
        self._owned_by = None

    def observables(self, spins: torch.Tensor) -> torch.Tensor:
        """(sum of the spins (3), total n_sk) over every process (one halo exchange for n_sk).

        Shapes:
            spins: (n_owned, 3) -> (3,) or (4,) float64
        """
        parts = [spins.sum(0).double()]
        if self.skyrmions:
            local = self.exchange.halo(spins)
            parts.append((solid_angle_sum(local, self.triangles.to(spins.device)) / (4 * math.pi)).double()[None])
        return self.exchange.all_sum(torch.cat(parts))

    def gather(self, spins: torch.Tensor) -> torch.Tensor | None:
        """The whole configuration on the first process (None on the others).

        Shapes:
            spins: (n_owned, 3) -> (N, 3)
        """
        width = int(self.counts.max())
        padded = spins.new_zeros((width, 3))
        padded[: len(spins)] = spins
        pieces = [torch.empty_like(padded) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(padded, pieces, dst=self.root, group=self.group)
        if self.rank != 0:
            return None
        if self._owned_by is None:
            self._owned_by = [torch.nonzero(self.owner == q)[:, 0].to(spins.device) for q in range(self.world)]
        full = spins.new_empty((self.num_sites, 3))
        for q, sites in enumerate(self._owned_by):
            full[sites] = pieces[q][: len(sites)]
        return full

    def flag(self, value: bool, device) -> bool:
        """The first process's ``value`` on every process (a tensor on ``device``: NCCL
        communicates CUDA tensors only)."""
        x = torch.tensor([int(value)], dtype=torch.int32, device=device)
        dist.broadcast(x, src=self.root, group=self.group)
        return bool(x[0])


def split_run(llg: LLG, graph, halo_hops: int | None = None, group=None) -> _SplitRun:
    """This process's share of a split run (domain, exchange, provider, integrator): what
    :func:`simulate_distributed` and benchmarks/scaling.py use. A collective call."""
    return _SplitRun(llg, graph, halo_hops, group)


def simulate_distributed(llg: LLG, graph, spins: torch.Tensor, steps: int, out, snapshot_every: int = 100,
                         record_every: int = 1, seed: int = 0, cell_sites: int | str | None = "auto",
                         metadata: dict | None = None, overwrite: bool = False, progress: bool = False,
                         halo_hops: int | None = None, group=None) -> SimulationResult | None:
    """:func:`klmgraph.simulate` on a lattice split over the processes of ``group``.

    Call it on every process with the same arguments (a collective call). Arguments as
    :func:`klmgraph.simulate`, and:

    Args:
        halo_hops: halo width (default: the widest receptive field of the provider's terms;
            narrower is refused).
        group: the torch.distributed process group (default: the world; initialised by the caller).

    Returns:
        the :class:`~klmgraph.SimulationResult` on the group's first process, None on the others.

    Raises:
        ValueError: for a provider that is not local (exact diagonalization, KPM), a narrow halo,
            or the errors of :func:`klmgraph.simulate` (on every process).
        DivergenceError: on every process, at the same step.
    """
    started = time.perf_counter()
    share = split_run(llg, graph, halo_hops, group)
    spins = prepare_spins(spins)
    run, status = None, [None]
    if share.rank == 0:
        try:
            run = open_run(llg, graph, spins, steps, out, snapshot_every, record_every, seed, cell_sites,
                           metadata, overwrite)
            status = [("ok", run.start)]
        except Exception as err:  # every process must learn that the run did not open
            status = [("error", f"{type(err).__name__}: {err}")]
            dist.broadcast_object_list(status, src=share.root, group=group)
            raise
    dist.broadcast_object_list(status, src=share.root, group=group)
    if status[0][0] == "error":
        raise RuntimeError(f"the first process could not open the run: {status[0][1]}")
    start, steps = status[0][1], int(steps)  # validated by the first process
    full = run.spins.clone() if run is not None else torch.empty_like(spins)
    dist.broadcast(full, src=share.root, group=group)
    owned = full[share.domain.owned.to(full.device)]
    writer = run.writer if run is not None else None
    bar = None
    if progress and share.rank == 0 and steps > start:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc=f"LLG ({share.world} processes)", unit="step")

    def record(n, s, e):
        totals = share.observables(s)
        everything = share.gather(s) if share.flag(writer is not None and writer.wants_spins(n), s.device) else None
        if writer is not None:
            writer.record(n, e, totals[:3] / share.num_sites, totals[3] if share.skyrmions else None, everything)
            if bar is not None:
                bar.update(n - bar.n)

    try:
        if steps > start:
            result = share.llg.run(owned, steps - start, record_every=int(record_every), seed=noise_seed(seed),
                                   callback=record, start_step=start)
            owned, energy = result.spins, result.energies[-1]
        else:  # a finished run: write its final record again, as simulate does
            energy = share.provider.energy_and_field(owned)[0]
            record(steps, owned, energy)
    except DivergenceError as err:
        if writer is not None:
            writer.close()
            raise divergence_error(err, run.path) from None
        raise
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    everything = share.gather(owned)
    if share.rank != 0:
        return None
    return finish_run(llg, graph, everything, energy, run, cell_sites, started)
