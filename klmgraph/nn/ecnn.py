"""ECNN: the equivariant convolutional network of Miyazaki (2023) on any hopping graph.

    x0 = Y^(0..input_lmax)(S_r)                              (normalize=False)
    x1 = act(conv1(x0)),  x_{k+1} = act(conv_{k+1}(x_k) + x_k)
    e_r = Linear(act(Linear(act(Linear(convout(x_n))))))    (site energy)
    E = sum_r e_r,   B_r = -dE/dS_r

Every convolution uses the filter Y^(0..filter_lmax)(S_r) of the centre spin and one weight
block per neighbour class (DESIGN.md section 3). Defaults are the published hyper-parameters.

A model is graph-independent except for the number of neighbour classes K; it is applied
(a) to a PyG ``Data``/``Batch`` with ``spins``, ``edge_index``, ``edge_type`` (``model(batch)``,
for training), or (b) through :meth:`ECNN.bind`, which returns a force provider
``energy_and_field(spins)`` for one graph, the protocol of :class:`klmgraph.ExactDiagonalization`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from e3nn import o3

from .binding import BoundModel
from .blocks import InteractionBlock, OutputBlock
from .conv import IMPLEMENTATIONS, SpinConvolution, TypedNeighbours, filter_irreps
from .fused import applies as fused_applies, fused_energy_and_field, fused_site_energies
from .modelfile import save_model

__all__ = ["ECNN", "BoundModel"]

_SH_NORMALIZATIONS = ("integral", "component", "norm")


class ECNN(nn.Module):
    """Equivariant convolutional network for the electronic energy of a spin configuration.

    Args:
        num_classes: K, neighbour classes of the graphs it runs on (``graph.num_edge_types``).
        channels: multiplicity of every hidden irrep (published: 8).
        lmax: hidden irreps are ``channels`` x 0e + 1e + ... + lmax e (published: 2).
        input_lmax: input features Y^(0..input_lmax)(S) (published: 2).
        filter_lmax: filter Y^(0..filter_lmax)(S_centre) (published: 1).
        num_interactions: interaction blocks, the first without residual (published: 4).
        readout_channels: scalars of the output convolution (published: 8).
        readout_hidden: hidden widths of the scalar read-out (published: (4, 2)).
        sh_normalization: e3nn normalisation of the spherical harmonics (the published models
            use e3nn's default, ``"integral"``; verified against ED by the import tests).
        implementation: ``"fast"`` (default) or ``"reference"`` convolutions (same weights). With
            ``"fast"``, ``bind(graph).energy_and_field`` and ``energy``/``site_energies`` (the
            trainer's path, twice differentiable: field and force loss) run the whole network
            in one compiled CPU kernel where it applies (attribute ``fused``, default True; see
            :mod:`klmgraph.nn.fused`); other devices and vmapped committees use PyTorch ops.
        time_reversal: symmetrise the site energies, e(S) -> (e(S) + e(-S)) / 2, so that
            E(-S) = E(S) exactly (true for real hoppings without a Zeeman term).
        edge_classes: names of the K classes (checked against graphs in :meth:`bind`).
        lattice: description of the lattice it was built for (``graph.description``).
        hamiltonian: Hamiltonian parameters (e.g. ``ExactDiagonalization.parameters()``).

    Shapes:
        site_energies: spins (..., N, 3) -> (..., N); energy: -> (...);
        forward(data): data.spins (N_total, 3) -> (num_graphs,)
    """

    def __init__(self, num_classes: int, channels: int = 8, lmax: int = 2, input_lmax: int = 2,
                 filter_lmax: int = 1, num_interactions: int = 4, readout_channels: int = 8,
                 readout_hidden: Sequence[int] = (4, 2), sh_normalization: str = "integral",
                 implementation: str = "fast", time_reversal: bool = False,
                 edge_classes: Sequence[str] | None = None, lattice: dict | None = None,
                 hamiltonian: dict | None = None):
        super().__init__()
        for name, value, low in (("num_classes", num_classes, 1), ("channels", channels, 1),
                                 ("lmax", lmax, 0), ("input_lmax", input_lmax, 0),
                                 ("filter_lmax", filter_lmax, 0), ("num_interactions", num_interactions, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value}")
        if sh_normalization not in _SH_NORMALIZATIONS:
            raise ValueError(f"sh_normalization must be one of {_SH_NORMALIZATIONS}, got {sh_normalization!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        if edge_classes is not None and len(edge_classes) != num_classes:
            raise ValueError(f"{len(edge_classes)} edge class names for num_classes={num_classes}")
        self.hparams = {
            "num_classes": int(num_classes), "channels": int(channels), "lmax": int(lmax),
            "input_lmax": int(input_lmax), "filter_lmax": int(filter_lmax),
            "num_interactions": int(num_interactions), "readout_channels": int(readout_channels),
            "readout_hidden": [int(h) for h in readout_hidden], "sh_normalization": sh_normalization,
            "time_reversal": bool(time_reversal),
        }
        self.edge_classes = None if edge_classes is None else [str(c) for c in edge_classes]
        self.lattice = None if lattice is None else dict(lattice)
        self.hamiltonian = None if hamiltonian is None else dict(hamiltonian)
        self.num_classes = int(num_classes)
        self.time_reversal = bool(time_reversal)
        self.sh_normalization = sh_normalization
        self.irreps_in = o3.Irreps.spherical_harmonics(int(input_lmax), p=1)  # Y^l of a pseudovector: le
        self.irreps_hidden = o3.Irreps([(int(channels), (l, 1)) for l in range(int(lmax) + 1)])
        self.irreps_out = o3.Irreps("1x0e")
        self.filter_irreps = filter_irreps(int(filter_lmax))
        blocks, irreps = [], self.irreps_in
        for i in range(int(num_interactions)):
            blocks.append(InteractionBlock(irreps, self.irreps_hidden, self.num_classes, int(filter_lmax),
                                           residual=i > 0, implementation=implementation))
            irreps = self.irreps_hidden
        self.blocks = nn.ModuleList(blocks)
        self.output = OutputBlock(irreps, self.num_classes, int(filter_lmax), int(readout_channels),
                                  readout_hidden, implementation)
        # energy, site_energies and bind(graph).energy_and_field use the compiled CPU kernel where it
        # applies (nn/fused.py); a runtime switch, not a hyper-parameter: False forces the eager path
        self.fused = True

    @classmethod
    def for_graph(cls, graph, hamiltonian: dict | None = None, **hparams) -> "ECNN":
        """A model whose classes, lattice description (and Hamiltonian) are those of ``graph``."""
        return cls(graph.num_edge_types, edge_classes=graph.edge_classes,
                   lattice=getattr(graph, "description", None), hamiltonian=hamiltonian, **hparams)

    @property
    def config(self) -> dict:
        """Everything :func:`klmgraph.io.build_network` needs (JSON-able), weights excluded."""
        return {**self.hparams, "edge_classes": self.edge_classes, "lattice": self.lattice,
                "hamiltonian": self.hamiltonian}

    # ------------------------------------------------------------------ implementation switch
    @property
    def implementation(self) -> str:
        return next(m.implementation for m in self.modules() if isinstance(m, SpinConvolution))

    @implementation.setter
    def implementation(self, value: str) -> None:
        for m in self.modules():
            if isinstance(m, SpinConvolution):
                m.implementation = value

    # ------------------------------------------------------------------ evaluation
    def neighbours(self, edge_index: torch.Tensor, edge_type: torch.Tensor, num_nodes: int,
                   deterministic: bool = False) -> TypedNeighbours:
        """Typed neighbour table of a graph (or a batch of graphs) for this model."""
        return TypedNeighbours(edge_index, edge_type, num_nodes, self.num_classes, deterministic)

    def prepare(self, graph, deterministic: bool = False) -> TypedNeighbours:
        """What :meth:`energy` needs of ``graph``: its typed neighbour table (built on the host
        once per graph: it inspects the edges). ``deterministic``: sums without atomic
        additions, for bit-identical reruns on a GPU (see :class:`TypedNeighbours`)."""
        return self.neighbours(graph.edge_index, graph.edge_type, graph.num_nodes, deterministic)

    def site_energies(self, spins: torch.Tensor, neighbours: TypedNeighbours) -> torch.Tensor:
        """Site energies e_r of configurations on one graph (or one PyG batch).

        Shapes:
            spins: (..., N, 3) -> (..., N)
        """
        if self._kernel_wanted:
            e = fused_site_energies(self, spins, neighbours)  # time reversal included
            if e is not None:
                return e
        if self.time_reversal:
            both = torch.stack([spins, -spins])  # (2, ..., N, 3)
            e = self._site_energies(both, neighbours)
            return 0.5 * (e[0] + e[1])
        return self._site_energies(spins, neighbours)

    def _site_energies(self, spins: torch.Tensor, neighbours: TypedNeighbours) -> torch.Tensor:
        norm = self.sh_normalization
        x = o3.spherical_harmonics(self.irreps_in, spins, normalize=False, normalization=norm)
        filt = o3.spherical_harmonics(self.filter_irreps, spins, normalize=False, normalization=norm)
        for block in self.blocks:
            x = block(x, filt, neighbours)
        return self.output(x, filt, neighbours)

    def fused_energy_and_field(self, spins: torch.Tensor, neighbours: TypedNeighbours, threads: int | None = None):
        """Energy and field B = -dE/dS from the compiled CPU kernel (:mod:`klmgraph.nn.fused`), or
        None where it does not apply (``fused`` off, ``reference`` convolutions, another device or
        dtype, graphs with repeated classes at a site, torch.func transforms, no compiler); the
        caller (:class:`BoundModel`) then takes the eager path. No autograd graph is kept.
        ``threads``: the kernel's threads (default torch's count); results do not depend on it.

        Shapes:
            spins: (..., N, 3) -> energy (...), field (..., N, 3)
        """
        if not self._kernel_wanted:
            return None
        return fused_energy_and_field(self, spins, neighbours, threads)

    def kernel_applies(self, spins: torch.Tensor, neighbours: TypedNeighbours) -> bool:
        """Whether :meth:`site_energies` of ``spins`` on ``neighbours`` takes the compiled kernel
        (``fused`` on, ``fast`` convolutions, and :func:`klmgraph.nn.fused.applies`). A
        committee asks it to choose between M kernel calls and one vmapped eager call."""
        return self._kernel_wanted and fused_applies(self, spins, neighbours)

    @property
    def _kernel_wanted(self) -> bool:
        """The model's own side of the kernel's conditions: ``fused`` on, ``fast`` convolutions."""
        return self.fused and self.implementation == "fast"

    def energy(self, spins: torch.Tensor, neighbours: TypedNeighbours) -> torch.Tensor:
        """Total energy of configurations sharing one graph. Shapes: (..., N, 3) -> (...)."""
        return self.site_energies(spins, neighbours).sum(-1)

    def forward(self, data) -> torch.Tensor:
        """Total energy per configuration of a PyG ``Data`` or ``Batch``.

        ``data`` needs ``spins`` (N_total, 3), ``edge_index``, ``edge_type``; a ``Batch`` also
        ``batch`` (its edges are already offset, so the graphs stay independent).

        Shapes:
            data.spins: (N_total, 3) -> (num_graphs,)
        """
        spins = data.spins
        n = spins.shape[0]
        neighbours = self.neighbours(data.edge_index, data.edge_type, n)
        e = self.site_energies(spins, neighbours)  # (N_total,)
        batch = getattr(data, "batch", None)
        if batch is None:
            return e.sum()[None]
        num_graphs = int(data.num_graphs)
        return e.new_zeros(num_graphs).index_add(0, batch.to(e.device), e)

    def save(self, path):
        """Write configuration (JSON) and weights (state dict); read back with :func:`klmgraph.load_model`."""
        return save_model(self, path)

    def bind(self, graph, deterministic: bool = False, chunk_sites: int | str | None = None,
             halo_hops: int | None = None, threads: int | str = "auto") -> "BoundModel":
        """A force provider ``energy_and_field(spins)`` of this model on ``graph``
        (``deterministic``: no atomic additions, bit-identical reruns on a GPU; ``chunk_sites``:
        evaluate the lattice in chunks of that many sites with halos, or "auto"; ``threads``:
        the compiled kernel's threads, a count or "auto", the faster of 1 and torch's count by
        timing; see :class:`~klmgraph.nn.BoundModel`)."""
        return BoundModel(self, graph, deterministic, chunk_sites, halo_hops, threads)

    def receptive_hops(self, graph=None) -> int:
        """Hops over the graph's edges that a site energy reads: one per convolution (the
        interaction blocks and the output block)."""
        return len(self.blocks) + 1
