"""Halo exchange between the processes of a split lattice (torch.distributed point-to-point).

Per force evaluation there is one exchange each way, whatever the number of layers of the
model: :meth:`HaloExchange.halo` sends every process the spins of the halo sites it reads from
their owners, :meth:`HaloExchange.reverse` sends the gradients that landed on halo sites back to
the owners, which add them to their own (LAMMPS' forward and reverse communication). Both are
one batch of ``isend``/``irecv`` per neighbouring domain (gloo on CPU, NCCL between GPUs, MPI
where torch was built with it).

Shapes: owned spins (n_owned, 3); local spins (n_owned + n_halo, 3), owned first.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..domains import Domain

__all__ = ["HaloExchange"]


class HaloExchange:
    """Who sends which sites to whom, worked out once from the domains (a collective call).

    Args:
        domain: this process's domain.
        owner: (N,) the process owning each site.
        group: the process group (default: the whole world).

    Attributes:
        owned: (n_owned,) global indices of the owned sites (the LLG's ``domain.owned``).
        num_owned, num_local: site counts.
        received_sites: halo sites received per exchange (the bytes per step follow from it).
    """

    def __init__(self, domain: Domain, owner: torch.Tensor, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.domain = domain
        self.owned = domain.owned
        self.num_owned, self.num_local = domain.num_owned, domain.num_local
        halo_owner = owner.cpu()[domain.halo]
        self.recv = {}  # peer -> local positions of the halo sites it owns
        need = {}
        for q in torch.unique(halo_owner).tolist():
            where = torch.nonzero(halo_owner == q)[:, 0]
            self.recv[q] = self.num_owned + where
            need[q] = domain.halo[where].tolist()
        wanted = [None] * self.world
        dist.all_gather_object(wanted, need, group=group)
        self.send = {}  # peer -> positions among my owned sites of what it reads
        for q, asks in enumerate(wanted):
            if self.rank in asks:
                self.send[q] = torch.searchsorted(self.owned, torch.as_tensor(asks[self.rank], dtype=torch.long))
        self.peers = sorted(set(self.recv) | set(self.send))
        self.received_sites = sum(len(v) for v in self.recv.values())
        self._device_copies = {}

    def _index(self, table: dict, device) -> dict:
        key = (id(table), str(device))
        if key not in self._device_copies:
            self._device_copies[key] = {q: t.to(device) for q, t in table.items()}
        return self._device_copies[key]

    def _exchange(self, outgoing: dict, incoming_sizes: dict, like: torch.Tensor) -> dict:
        ops, buffers = [], {}
        for q in self.peers:
            if q in outgoing:
                ops.append(dist.P2POp(dist.isend, outgoing[q].contiguous(), q, self.group))
            if q in incoming_sizes:
                buffers[q] = like.new_empty((incoming_sizes[q], like.shape[-1]))
                ops.append(dist.P2POp(dist.irecv, buffers[q], q, self.group))
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        return buffers

    def halo(self, owned: torch.Tensor) -> torch.Tensor:
        """Owned spins -> local spins (owned, then the halo received from its owners)."""
        send, recv = self._index(self.send, owned.device), self._index(self.recv, owned.device)
        received = self._exchange({q: owned[i] for q, i in send.items()},
                                  {q: len(i) for q, i in recv.items()}, owned)
        local = owned.new_empty((self.num_local, owned.shape[-1]))
        local[: self.num_owned] = owned
        for q in sorted(received):
            local[recv[q]] = received[q]
        return local

    def reverse(self, local: torch.Tensor) -> torch.Tensor:
        """Local gradients -> owned gradients: the halo rows go back to their owners and are
        added there (in a fixed order of peers, so reruns sum alike)."""
        send, recv = self._index(self.send, local.device), self._index(self.recv, local.device)
        received = self._exchange({q: local[i] for q, i in recv.items()},
                                  {q: len(i) for q, i in send.items()}, local)
        owned = local[: self.num_owned].clone()
        for q in sorted(received):
            owned.index_add_(0, send[q], received[q])
        return owned

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the processes (a copy)."""
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.group)
        return x

    def all_true(self, flag: torch.Tensor) -> torch.Tensor:
        """A bool that holds on every process (the integrator's finiteness check)."""
        x = flag.to(torch.int32).reshape(1)
        dist.all_reduce(x, op=dist.ReduceOp.MIN, group=self.group)
        return x[0].bool()
