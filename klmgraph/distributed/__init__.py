"""Domain-decomposed LLG on torch.distributed (docs/scaling.md).

* :class:`HaloExchange`: one exchange of halo spins and one reverse exchange of halo gradients
  per force evaluation;
* :class:`DomainProvider`: energy and field of a process's owned sites (models, spin terms);
* :func:`simulate_distributed`: :func:`klmgraph.simulate` on a split lattice, the same run folder;
* :func:`launch`: P spawned processes on one machine; :func:`init_from_environment`: the group
  that torchrun starts.

The domains themselves (blocks of cells, coordinate bisection, BFS halos) are
:mod:`klmgraph.domains`, shared with chunked evaluation on one device.
"""
from .exchange import HaloExchange
from .launch import BACKENDS, ProcessFailed, default_backend, init_from_environment, launch, stop_on_sigterm
from .provider import DomainProvider, provider_terms, required_halo
from .runner import simulate_distributed, split_run

__all__ = ["HaloExchange", "DomainProvider", "provider_terms", "required_halo", "simulate_distributed", "split_run",
           "launch", "ProcessFailed", "init_from_environment", "default_backend", "stop_on_sigterm", "BACKENDS"]
