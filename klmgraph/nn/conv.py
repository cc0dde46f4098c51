"""The edge-typed equivariant spin convolution of DESIGN.md section 3 (paper eq. 5).

For every centre site r and output irrep c,

    V'_r = sum_{r' in N(r)} sum_{paths (li, lf -> lo)}
           W[type(r' -> r), c_in, li, lf -> c_out, lo] * CG(V_{r'}^(li), Y^(lf)(S_r)),

where the filter Y^(lf) (lf = 0..filter_lmax) is built from the CENTRE spin and the weight
depends only on the neighbour class. Both implementations below hold the same flat weight
tensor, laid out exactly as the weight of an e3nn ``o3.TensorProduct(irreps_in * K,
filter_irreps, irreps_out)`` with every allowed (a, b, c, 'uvw') instruction in loop order
a (class k, then input irrep), b (filter irrep), c (output irrep), default normalisations;
this is also the layout of the published ecnn4klm checkpoints.

* ``reference``: typed aggregation into (N, K * dim_in) and that e3nn TensorProduct.
* ``fast``: the product is bilinear, so the channel sum is done first (DESIGN.md section 3):
  1. typed aggregation straight into matmul layout: features are reordered per irrep to
     (N, 2l+1, mul) and gathered row by row through the (N, K) neighbour table, giving
     (N, 2l+1, K * mul) without a further copy (a scatter-add where classes repeat);
  2. channel mixing: one matmul per input irrep, (N * (2l+1), K * mul) @ (K * mul, Q), Q the
     output channels of all paths leaving that irrep, e3nn path normalisation folded in;
  3. Clebsch-Gordan product with the centre filter in closed form: for every output irrep,
     out[n, w, k] = sum_j Y_j(S_n) * sum_{path, i} z[n, w, i] C[i, j, k], i.e. one small matmul
     with the fixed (path, i) x (j, k) coefficient table and J = dim(filter) multiply-adds.
  The cost is dominated by the gather and the mixing matmuls, both memory- or BLAS-bound.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from e3nn import o3

__all__ = ["TypedNeighbours", "SpinConvolution", "IMPLEMENTATIONS", "filter_irreps"]

IMPLEMENTATIONS = ("fast", "reference")
_TABLE_TENSORS = ("table", "inverse", "src", "slot")


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether ``tensor`` is on ``device`` ("cuda" matches "cuda:0", as Tensor.to does)."""
    return tensor.device.type == device.type and device.index in (None, tensor.device.index)


def filter_irreps(filter_lmax: int) -> o3.Irreps:
    """Irreps of the filter Y^(0..filter_lmax)(S): spherical harmonics of a pseudovector are even."""
    return o3.Irreps([(1, (lf, 1)) for lf in range(filter_lmax + 1)])


class TypedNeighbours:
    """Neighbours of every site, sorted by class: the "typed aggregation" of DESIGN.md section 3.

    ``aggregate`` stacks, for every centre r and class k, the sum of the features of its
    class-k neighbours (zero where r has none: open boundaries, irregular graphs). When every
    (centre, class) pair has at most one edge, as on any Bravais lattice, this is a gather
    through an (N, K) table (backward: one index_add); otherwise a scatter-add over edges.

    Args:
        edge_index: (2, E) int64, row 0 = source (neighbour r'), row 1 = target (centre r).
        edge_type: (E,) int64 neighbour classes in [0, num_classes).
        num_nodes: N.
        num_classes: K.
        deterministic: every sum in forward and backward without atomic additions (bit-identical
            reruns on a GPU): the gathers' backward is a gather too (on GPUs that is the default
            already), and graphs whose sums would need a scatter-add are refused.

    Raises:
        ValueError: on inconsistent shapes or out-of-range indices; with ``deterministic``, for
            a graph with repeated (centre, class) pairs or a site read twice by one class.
    """

    def __init__(self, edge_index: torch.Tensor, edge_type: torch.Tensor, num_nodes: int,
                 num_classes: int, deterministic: bool = False):
        edge_index = torch.as_tensor(edge_index)
        edge_type = torch.as_tensor(edge_type)
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        if edge_type.shape != edge_index.shape[1:]:
            raise ValueError(f"edge_type must have shape ({edge_index.shape[1]},), got {tuple(edge_type.shape)}")
        n, k = int(num_nodes), int(num_classes)
        if n < 1 or k < 1:
            raise ValueError(f"need num_nodes >= 1 and num_classes >= 1, got {n}, {k}")
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
            raise ValueError(f"edge_index refers to sites outside [0, {n})")
        if edge_type.numel() and (int(edge_type.min()) < 0 or int(edge_type.max()) >= k):
            raise ValueError(f"edge_type holds classes outside [0, {k}); the model has {k} neighbour "
                             "classes (build it for this graph's num_edge_types)")
        self.num_nodes, self.num_classes = n, k
        # backward of the gather: None = gather on GPU, index_add on CPU; True/False to force
        self.gather_backward = None
        src, dst = edge_index.long()
        slot = dst * k + edge_type.long()  # (E,) position in the flattened (N, K) table
        counts = torch.bincount(slot, minlength=n * k)
        self.unique = bool(counts.max() <= 1) if slot.numel() else True
        if self.unique:
            # missing neighbours point at row N, a zero row appended before the gather
            table = torch.full((n * k,), n, dtype=torch.long, device=slot.device)
            table[slot] = src
            self.complete = bool((counts == 1).all())
            self.table = table
            self.src = self.slot = None
            # inverse table: the centre that reads site r as its class-k neighbour (N: none). When
            # it is unique too (any Bravais lattice) the gather's backward is a gather as well.
            inverse_slot = src * k + edge_type.long()
            if slot.numel() and int(torch.bincount(inverse_slot, minlength=n * k).max()) <= 1:
                self.inverse = torch.full((n * k,), n, dtype=torch.long, device=slot.device)
                self.inverse[inverse_slot] = dst
            else:
                self.inverse = None
        else:
            self.complete = False
            self.table = self.inverse = None
            self.src, self.slot = src, slot
        self.deterministic = bool(deterministic)
        if self.deterministic:
            if self.inverse is None:
                raise ValueError("deterministic=True needs a graph where every site has at most one neighbour "
                                 "per class and is read by at most one centre per class (any Bravais lattice); "
                                 "the sums of this graph need a scatter-add, atomic on a GPU")
            self.gather_backward = True

    def to(self, device) -> "TypedNeighbours":
        """This table on ``device``: ``self`` if it is there already, else a copy (as
        ``Tensor.to``; the IFNN's tables behave the same)."""
        device = torch.device(device)
        names = [name for name in _TABLE_TENSORS if getattr(self, name) is not None]
        if all(_on(getattr(self, name), device) for name in names):
            return self
        moved = object.__new__(TypedNeighbours)
        moved.__dict__.update({k: v for k, v in self.__dict__.items() if k != "_plans"})
        for name in names:
            setattr(moved, name, getattr(self, name).to(device))
        return moved

    def _rows(self, table: torch.Tensor, lead: int, m: int) -> torch.Tensor:
        """Rows of x viewed as (lead * N * m [+ 1 zero row], U) read by the gathered (lead, N, m, K)
        entries: rows[(b, n, i, k)] = (b, table[n, k], i), or the zero row where table says N."""
        n, k = self.num_nodes, self.num_classes
        table = table.view(n, k)
        rows = table[:, None, :] * m + torch.arange(m, device=table.device)[None, :, None]  # (N, m, K)
        rows = rows[None] + (torch.arange(lead, device=table.device) * (n * m))[:, None, None, None]
        return torch.where(table[None, :, None, :] == n, lead * n * m, rows).reshape(-1)

    def _gather_plan(self, lead: int, m: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(rows, inverse rows or None) of the per-component gather, cached per shape."""
        key = (lead, m, str(device))
        cache = self.__dict__.setdefault("_plans", {})
        if key not in cache:
            if len(cache) > 8:  # shapes in use: one per (batch, degree)
                cache.clear()
            rows = self._rows(self.table.to(device), lead, m)
            inverse = None
            if self.inverse is not None:
                # gathered entry (b, t, i, k) reads x row (b, r, i) iff inverse[r, k] = t
                n, k = self.num_nodes, self.num_classes
                inv = self.inverse.to(device).view(n, k)
                t_rows = self._rows(self.inverse.to(device), lead, m).view(lead, n, m, k)
                # _rows gives (b, t, i) for x-shaped rows; the gathered row index is that * K + k
                missing = inv[None, :, None, :] == n
                t_rows = t_rows * k + torch.arange(k, device=device)
                # ordered (k, b, r, i): the backward's sum over k runs over the outermost axis
                inverse = torch.where(missing, lead * n * m * k, t_rows).permute(3, 0, 1, 2).reshape(-1)
            cache[key] = (rows, inverse)
        return cache[key]

    def _use_gather(self, x: torch.Tensor) -> bool:
        # on GPUs a gather-based backward avoids atomics; on CPU index_add is as fast
        return x.device.type != "cpu" if self.gather_backward is None else self.gather_backward

    def aggregate_components(self, x: torch.Tensor) -> torch.Tensor:
        """Per-component typed aggregation, laid out as the operand of a channel-mixing matmul.

        Shapes:
            x: (..., N, m, U) -> (..., N, m, K * U)
        """
        n, k = self.num_nodes, self.num_classes
        lead_shape, (_, m, u) = x.shape[:-3], x.shape[-3:]
        lead = math.prod(lead_shape)
        rows = x.reshape(lead * n * m, u)
        if self.table is not None:
            index, inverse = self._gather_plan(lead, m, x.device)
            if inverse is not None and self._use_gather(x):
                # on GPUs a gather-based backward avoids atomics; on CPU index_add is as fast
                out = _Gather.apply(rows, index, 1, inverse, k)
            else:
                if not self.complete:
                    rows = torch.nn.functional.pad(rows, (0, 0, 0, 1))  # the zero row
                out = rows.index_select(0, index)
        else:
            out = self.aggregate(x.reshape(*lead_shape, n, m * u))  # (..., N, K, m * U)
            return out.unflatten(-1, (m, u)).transpose(-3, -2).reshape(*lead_shape, n, m, k * u)
        return out.view(*lead_shape, n, m, k * u)

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """Sum neighbour features per class.

        Shapes:
            x: (..., N, D) -> (..., N, K, D)
        """
        n, k = self.num_nodes, self.num_classes
        if x.shape[-2] != n:
            raise ValueError(f"features hold {x.shape[-2]} sites, the neighbour table {n}")
        lead = x.shape[:-2]
        if self.table is not None and self.inverse is not None and self._use_gather(x):
            # the same gather as one component of width D: its backward is a gather, not index_add
            return self.aggregate_components(x.unsqueeze(-2)).view(*lead, n, k, x.shape[-1])
        if self.table is not None:
            if not self.complete:
                x = torch.nn.functional.pad(x, (0, 0, 0, 1))  # the zero row N
            out = x.index_select(-2, self.table.to(x.device))  # (..., N * K, D)
        else:
            out = x.new_zeros(*lead, n * k, x.shape[-1])
            out = out.index_add(-2, self.slot.to(x.device), x.index_select(-2, self.src.to(x.device)))
        return out.view(*lead, n, k, x.shape[-1])


class _Gather(torch.autograd.Function):
    """out[t] = sum_f x_padded[rows[f, t]] with a zero row appended to x; the transpose of such
    a gather (when every x row is read at most once per slot) is again one, so the backward is
    a gather + sum instead of a scatter-add (faster on CPU, no atomics on GPU), and double
    backward (training on forces) follows by recursion.

    Shapes: x (R, U), rows (fan * T,) in [0, R] -> (T, U); inverse (back_fan * R,) in [0, T].
    """

    @staticmethod
    def forward(ctx, x, rows, fan, inverse, back_fan):
        ctx.save_for_backward(rows, inverse)
        ctx.fan, ctx.back_fan = fan, back_fan
        out = torch.nn.functional.pad(x, (0, 0, 0, 1)).index_select(0, rows)  # row R: zeros
        # rows are ordered (f, t): summing over the outer axis vectorises well
        return out if fan == 1 else out.view(fan, -1, x.shape[-1]).sum(0)

    @staticmethod
    def backward(ctx, grad):
        rows, inverse = ctx.saved_tensors
        grad_x = _Gather.apply(grad.contiguous(), inverse, ctx.back_fan, rows, ctx.fan)
        return grad_x, None, None, None, None


class SpinConvolution(nn.Module):
    """Edge-typed equivariant convolution with the centre spin's spherical harmonics as filter.

    Args:
        irreps_in: irreps of the site features (e.g. ``"8x0e+8x1e+8x2e"``).
        irreps_out: irreps of the output features; every one must be reachable.
        num_classes: K, the number of neighbour classes (``graph.num_edge_types``).
        filter_lmax: the filter is Y^(0..filter_lmax)(S_r) (default 1, as published).
        implementation: ``"fast"`` (default) or ``"reference"`` (e3nn TensorProduct); both use
            the same ``weight`` and give the same result.

    Attributes:
        weight: flat parameter of length ``weight_numel`` (e3nn TensorProduct layout).

    Shapes:
        x: (..., N, irreps_in.dim) site features, e3nn layout (mul-major inside an irrep);
        filt: (..., N, filter_irreps.dim) Y^(0..filter_lmax) of the centre spins;
        output: (..., N, irreps_out.dim). The leading dimensions are configurations that share
        one graph (``neighbours``); a PyG Batch instead concatenates them along N.
    """

    def __init__(self, irreps_in, irreps_out, num_classes: int, filter_lmax: int = 1,
                 implementation: str = "fast"):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.filter_irreps = filter_irreps(int(filter_lmax))
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if int(filter_lmax) < 0:
            raise ValueError(f"filter_lmax must be >= 0, got {filter_lmax}")
        if len(self.irreps_in) == 0 or len(self.irreps_out) == 0:
            raise ValueError("irreps_in and irreps_out must not be empty")
        self.num_classes = int(num_classes)
        self.filter_lmax = int(filter_lmax)

        # instructions of one class block; the full list repeats it for k = 0..K-1
        block = []
        for a, (_, ir_in) in enumerate(self.irreps_in):
            for b, (_, ir_f) in enumerate(self.filter_irreps):
                for c, (_, ir_out) in enumerate(self.irreps_out):
                    if ir_out in ir_in * ir_f:
                        block.append((a, b, c))
        unreachable = [str(ir) for c, (_, ir) in enumerate(self.irreps_out) if all(i[2] != c for i in block)]
        if unreachable:
            raise ValueError(f"output irreps {unreachable} cannot be reached from {self.irreps_in} "
                             f"with a filter of degree <= {filter_lmax}")
        self._block = block
        # e3nn 'element' path normalisation: fan-in of an output = sum of mul_in * mul_filter over
        # all paths into it (all K classes); component normalisation gives 2lo+1 on top.
        fan_in = [self.num_classes * sum(self.irreps_in[a].mul for a, _, cc in block if cc == c)
                  for c in range(len(self.irreps_out))]
        self._path_coef = [math.sqrt(self.irreps_out[c].ir.dim / fan_in[c]) for _, _, c in block]
        self._block_numel = sum(self.irreps_in[a].mul * self.irreps_out[c].mul for a, _, c in block)
        self.weight_numel = self.num_classes * self._block_numel
        self.weight = nn.Parameter(torch.randn(self.weight_numel))
        self._build_fast_indices()
        self._reference = None  # built lazily: e3nn code generation for K*len(irreps) inputs is slow
        self.implementation = implementation

    # ------------------------------------------------------------------ configuration
    @property
    def implementation(self) -> str:
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {value!r}")
        self._implementation = value

    def instructions(self) -> list[tuple[int, int, int, str, bool]]:
        """The e3nn TensorProduct instructions of the reference path (K blocks)."""
        n_in = len(self.irreps_in)
        return [(k * n_in + a, b, c, "uvw", True) for k in range(self.num_classes) for a, b, c in self._block]

    def extra_repr(self) -> str:
        return (f"{self.irreps_in} -> {self.irreps_out}, classes={self.num_classes}, "
                f"filter_lmax={self.filter_lmax}, implementation={self.implementation!r}")

    # ------------------------------------------------------------------ fast path set-up
    def _build_fast_indices(self) -> None:
        """For every input irrep a: an index (K * mul_a, Q_a) into the flat weight and the path
        coefficient of every entry, Q_a = sum of mul_out over the paths leaving a. Kept as
        non-persistent buffers so that the state dict holds the weight only."""
        offsets, pos = [], 0
        for a, _, c in self._block:
            offsets.append(pos)
            pos += self.irreps_in[a].mul * self.irreps_out[c].mul
        self._paths = []  # per input irrep: list of (b, c, column start, path index)
        for a, (mul_a, _) in enumerate(self.irreps_in):
            paths = [(i, b, c) for i, (aa, b, c) in enumerate(self._block) if aa == a]
            q = sum(self.irreps_out[c].mul for _, _, c in paths)
            index = torch.zeros(self.num_classes, mul_a, q, dtype=torch.long)
            coef = torch.zeros(q, dtype=torch.float64)
            col, described = 0, []
            for i, b, c in paths:
                mul_c = self.irreps_out[c].mul
                u = torch.arange(mul_a)[:, None]
                w = torch.arange(mul_c)[None, :]
                k = torch.arange(self.num_classes)[:, None, None]
                index[:, :, col:col + mul_c] = k * self._block_numel + offsets[i] + u * mul_c + w
                coef[col:col + mul_c] = self._path_coef[i]
                described.append((b, c, col))
                col += mul_c
            self.register_buffer(f"_index_{a}", index.reshape(self.num_classes * mul_a, q), persistent=False)
            self.register_buffer(f"_coef_{a}", coef, persistent=False)
            self._paths.append(described)
        # Clebsch-Gordan tensors (2li+1, 2lf+1, 2lo+1) of every path, float64
        self._cg = {}
        # filter components j that reach output irrep c through some path
        self._cg_used = [set() for _ in self.irreps_out]
        f_slices = self.filter_irreps.slices()
        for _, b, c in self._block:
            self._cg_used[c].update(range(f_slices[b].start, f_slices[b].stop))
        for a, b, c in self._block:
            key = (self.irreps_in[a].ir.l, self.filter_irreps[b].ir.l, self.irreps_out[c].ir.l)
            if key not in self._cg:
                self._cg[key] = o3.wigner_3j(*key, dtype=torch.float64)
        # per output irrep the (I_c, J * (2lo+1)) product table of _forward_fast: non-persistent
        # buffers, so they follow .to() / .double() like the weight and stay out of the state dict
        for c in range(len(self.irreps_out)):
            self.register_buffer(f"_cg_matrix_{c}", self._build_cg_matrix(c), persistent=False)

    def mixing_matrices(self) -> list[torch.Tensor]:
        """Per input irrep a, the (K * mul_a, Q_a) channel-mixing matrix (views of ``weight``
        gathered through a fixed index, times the e3nn path normalisation)."""
        return [self.weight[getattr(self, f"_index_{a}")] * getattr(self, f"_coef_{a}").to(self.weight.dtype)
                for a in range(len(self.irreps_in))]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, filt: torch.Tensor, neighbours: TypedNeighbours) -> torch.Tensor:
        if x.shape[-1] != self.irreps_in.dim:
            raise ValueError(f"features have {x.shape[-1]} components, irreps_in {self.irreps_in} needs "
                             f"{self.irreps_in.dim}")
        if filt.shape[-1] != self.filter_irreps.dim:
            raise ValueError(f"filter has {filt.shape[-1]} components, {self.filter_irreps} needs "
                             f"{self.filter_irreps.dim}")
        if neighbours.num_classes != self.num_classes:
            raise ValueError(f"the graph has {neighbours.num_classes} neighbour classes, this layer "
                             f"{self.num_classes}")
        if self.implementation == "reference":
            return self._forward_reference(x, filt, neighbours)
        return self._forward_fast(x, filt, neighbours)

    def _apply(self, fn, *args, **kwargs):
        # the lazily built reference TensorProduct is a plain attribute (the state dict stays the
        # same for both paths), so it is moved here: it follows .to() / .double() like a buffer
        super()._apply(fn, *args, **kwargs)
        if getattr(self, "_reference", None) is not None:
            self._reference[0]._apply(fn, *args, **kwargs)
        return self

    def _reference_tp(self, dtype, device) -> o3.TensorProduct:
        if self._reference is None:
            # build under float64 so that e3nn's Wigner 3j buffers are exact, cast afterwards
            previous = torch.get_default_dtype()
            torch.set_default_dtype(torch.float64)
            try:
                tp = o3.TensorProduct(self.irreps_in * self.num_classes, self.filter_irreps, self.irreps_out,
                                      self.instructions(), internal_weights=False, shared_weights=True)
            finally:
                torch.set_default_dtype(previous)
            # a plain attribute (not a submodule): the state dict stays the same for both paths
            self._reference = [tp]
        tp = self._reference[0]
        if tp.output_mask.dtype != dtype or tp.output_mask.device != torch.device(device):
            tp.to(dtype=dtype, device=device)
        return tp

    def _forward_reference(self, x, filt, neighbours):
        gathered = neighbours.aggregate(x)  # (..., N, K, dim_in)
        tp = self._reference_tp(x.dtype, x.device)
        assert tp.weight_numel == self.weight_numel
        lead = gathered.shape[:-2]
        return tp(gathered.reshape(*lead, -1), filt.expand(*lead, filt.shape[-1]), self.weight)

    def _forward_fast(self, x, filt, neighbours):
        lead, n = x.shape[:-2], x.shape[-2]
        mats = self.mixing_matrices()
        # split (not slicing) keeps the backward to one op
        xs = torch.split(x, [mul * ir.dim for mul, ir in self.irreps_in], dim=-1)
        pieces = [[] for _ in self.irreps_out]  # per output irrep: mixed features (..., N, mul_c, 2li+1)
        # Narrow inputs (the spherical harmonics of the first layer) are gathered whole: rows of a
        # few bytes would make the gather slow. Wide ones per component, straight into matmul layout.
        whole = neighbours.aggregate(x) if self.irreps_in.dim <= 16 else None  # (..., N, K, dim)
        if whole is not None:
            whole = torch.split(whole, [mul * ir.dim for mul, ir in self.irreps_in], dim=-1)
        for a, (mul_a, ir_a) in enumerate(self.irreps_in):
            if whole is not None:  # (..., N, K, mul, m) -> (..., N, m, K * mul)
                ga = whole[a].unflatten(-1, (mul_a, ir_a.dim)).movedim(-1, -3).flatten(-2)
            else:
                # (..., N, mul, m) -> (..., N, m, mul): gather rows are the channels of one component
                xa = xs[a].unflatten(-1, (mul_a, ir_a.dim)).transpose(-1, -2)
                ga = neighbours.aggregate_components(xa)  # (..., N, m, K * mul)
            za = ga @ mats[a]  # (..., N, m, Q_a): channel mixing, one matmul
            widths = [self.irreps_out[c].mul for _, c, _ in self._paths[a]]
            for (_, c, _), z in zip(self._paths[a], torch.split(za, widths, dim=-1)):
                pieces[c].append(z.transpose(-1, -2))
        # Clebsch-Gordan product with the centre filter Y_j(S_r), j over all filter components:
        #   out[n, w, k] = sum_j Y_j[n] * sum_{p, i} z_p[n, w, i] C_p[i, j, k],
        # the inner sum one matmul per output irrep, the outer one J multiply-adds.
        filt_j = [f[..., None, None] for f in filt.unbind(-1)]  # J x (..., N, 1, 1)
        outs = []
        for c, (mul_c, ir_c) in enumerate(self.irreps_out):
            z = torch.cat(pieces[c], dim=-1) if len(pieces[c]) > 1 else pieces[c][0]  # (..., N, mul_c, I_c)
            v = (z @ self._cg_matrix(c, x.dtype, x.device)).unflatten(-1, (len(filt_j), ir_c.dim))
            out = None
            for j, (f, vj) in enumerate(zip(filt_j, v.unbind(-2))):
                if j in self._cg_used[c]:
                    out = f * vj if out is None else out + f * vj  # (..., N, mul_c, 2lo+1)
            outs.append(out.flatten(-2))
        out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        return out.expand(*lead, n, self.irreps_out.dim) if out.shape[:-2] != lead else out

    def _cg_matrix(self, c: int, dtype, device) -> torch.Tensor:
        """The buffer of :meth:`_build_cg_matrix` in the features' dtype (a no-op when the
        module was cast with the features, as it is in every model)."""
        return getattr(self, f"_cg_matrix_{c}").to(dtype=dtype, device=device)

    def _build_cg_matrix(self, c: int) -> torch.Tensor:
        """(I_c, J * (2lo+1)) Clebsch-Gordan coefficients, float64: rows (path into output irrep
        c, i) in the order of ``_forward_fast``, columns (filter component j, k)."""
        lo_dim = self.irreps_out[c].ir.dim
        f_offsets = [s.start for s in self.filter_irreps.slices()]
        blocks = []
        for a, (_, ir_a) in enumerate(self.irreps_in):
            for b, cc, _ in self._paths[a]:
                if cc == c:
                    lf = self.filter_irreps[b].ir.l
                    cg = self._cg[(ir_a.l, lf, self.irreps_out[c].ir.l)]  # (i, j_b, k)
                    block = torch.zeros(ir_a.dim, self.filter_irreps.dim, lo_dim, dtype=torch.float64)
                    block[:, f_offsets[b]:f_offsets[b] + 2 * lf + 1] = cg
                    blocks.append(block)
        return torch.cat(blocks).flatten(1)
