"""Energy and field of an ECNN in one compiled kernel (CPU): the fast path of ``bind(graph)``.

:func:`fused_energy_and_field` packs the model (mixing matrices, Clebsch-Gordan tables, read-out
matrices) into flat arrays once per weight version and calls the C++ kernel of
:mod:`klmgraph.nn.fused_source`, which runs the whole network forward and its backward to the
input features (weights frozen) without materialising gathered neighbour buffers. The spherical
harmonics of the spins and their derivative stay in PyTorch (autograd), so B = -dE/dS is exactly
the eager path's field up to float rounding (tests/test_fused.py).

It answers None where it does not apply, and the caller takes the eager PyTorch path: devices
other than the CPU, dtypes other than float32/float64, graphs whose classes repeat at a site
(irregular graphs: scatter-add), inputs wrapped by torch.func transforms (vmap, grad), or no C++
compiler. Training (double backward) always uses the eager path.
"""
from __future__ import annotations

import ctypes
import math

import torch

from . import native
from .fused_source import SOURCE

__all__ = ["fused_energy_and_field", "available"]

_P = ctypes.c_void_p
_I = ctypes.c_int64


def _library():
    lib = native.load("klmgraph_ecnn", SOURCE)
    if lib is not None and not hasattr(lib, "_klm_typed"):
        for name in ("klm_ecnn_energy_and_grads_f32", "klm_ecnn_energy_and_grads_f64"):
            fn = getattr(lib, name)
            fn.argtypes = [_P, _P, _P, _P, _P, _P, _I, _I, ctypes.c_double, ctypes.c_int, _P, _P, _P, _P]
            fn.restype = None
        lib.klm_ecnn_workspace.argtypes = [_P, _I]
        lib.klm_ecnn_workspace.restype = _I
        lib._klm_typed = True
    return lib


def available() -> bool:
    """Whether the compiled kernel can be built and loaded on this machine."""
    return _library() is not None


def _linear_matrix(linear, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) matrix and bias of an e3nn o3.Linear on scalars (its normalisation folded in)."""
    n = linear.irreps_in.dim
    with torch.no_grad():
        zero = torch.zeros(1, n, dtype=dtype, device=linear.weight.device)
        bias = linear(zero)[0]
        matrix = (linear(torch.eye(n, dtype=dtype, device=linear.weight.device)) - bias).T
    return matrix.contiguous(), bias


def _pack(model, dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(meta int64, params, eps^2): the network as the kernel's flat description (see fused_source)."""
    convs = [(b.conv, bool(b.residual), True) for b in model.blocks] + [(model.output.conv, False, False)]
    meta, chunks = [], []
    offset = 0

    def put(t: torch.Tensor) -> int:
        nonlocal offset
        t = t.detach().to(dtype).reshape(-1)
        chunks.append(t)
        start, offset = offset, offset + t.numel()
        return start

    j_dim = model.filter_irreps.dim
    meta += [len(convs), model.num_classes, j_dim, len(model.output.linears)]
    for conv, residual, act in convs:
        k = conv.num_classes
        mats = conv.mixing_matrices()
        in_slices, out_slices = conv.irreps_in.slices(), conv.irreps_out.slices()
        ins, z_offset = [], 0
        for a, (mul, ir) in enumerate(conv.irreps_in):
            q = mats[a].shape[1]
            w = mats[a]  # (K * mul, Q), rows k * mul + u
            wt = w.reshape(k, mul, q).transpose(1, 2).contiguous()  # (K, Q, mul)
            ins.append([mul, ir.dim, in_slices[a].start, q, put(w), put(wt), z_offset])
            z_offset += ir.dim * q
        outs, entries = [], []
        for c, (mul, ir) in enumerate(conv.irreps_out):
            pieces = [(a, col, conv.irreps_in[a].ir.dim) for a in range(len(conv.irreps_in))
                      for _, cc, col in conv._paths[a] if cc == c]
            cg = conv._cg_matrix(c, torch.float64, "cpu").view(-1, j_dim, ir.dim)  # (I_c, J, d_c)
            outs.append([mul, ir.dim, out_slices[c].start, cg.shape[0], 0, len(pieces)]
                        + [v for p in pieces for v in p])
            rows = [ins[a][6] + i * ins[a][3] + col for a, col, d in pieces for i in range(d)]  # z offset of row r
            for r, j, kk in cg.nonzero().tolist():
                entries.append([c, rows[r], j, kk, put(cg[r, j, kk].reshape(1))])
        meta += [conv.irreps_in.dim, conv.irreps_out.dim, int(residual), int(act), z_offset, len(ins), len(outs)]
        meta += [v for i in ins for v in i] + [v for o in outs for v in o] + [len(entries)]
        meta += [v for e in entries for v in e]
    for linear in model.output.linears:
        matrix, bias = _linear_matrix(linear, dtype)
        meta += [matrix.shape[1], matrix.shape[0], put(matrix), put(bias)]
    eps2 = float(model.blocks[0].act._eps_squared)
    return torch.tensor(meta, dtype=torch.int64), torch.cat(chunks).contiguous(), eps2


def _packed(model, dtype):
    """:func:`_pack`, cached on the model until a parameter changes (in place or replaced)."""
    key = (dtype, tuple((p.data_ptr(), p._version) for p in model.parameters()))
    cache = model.__dict__.get("_fused_pack")
    if cache is None or cache[0] != key:
        cache = (key, _pack(model, dtype))
        model.__dict__["_fused_pack"] = cache
    return cache[1]


def _workspace(neighbours, size: int, dtype) -> torch.Tensor:
    """The kernel's scratch memory, kept with the graph's neighbour table between calls (fresh
    pages every call would cost a page fault per 4 KiB, about as much as the arithmetic); hence
    one bound model must not be evaluated from two Python threads at once."""
    work = neighbours.__dict__.get("_fused_workspace")
    if work is None or work.dtype != dtype or work.numel() < size:
        work = torch.empty(size, dtype=dtype)
        neighbours.__dict__["_fused_workspace"] = work
    return work


def _fits(model) -> bool:
    """The kernel's fixed limits: at most 16 filter components and 16 irreps per layer."""
    convs = [b.conv for b in model.blocks] + [model.output.conv]
    return model.filter_irreps.dim <= 16 and all(len(c.irreps_out) <= 16 for c in convs)


def _applies(spins: torch.Tensor, neighbours) -> bool:
    from torch._C._functorch import is_functorch_wrapped_tensor

    return (spins.device.type == "cpu" and spins.dtype in (torch.float32, torch.float64)
            and getattr(neighbours, "table", None) is not None and getattr(neighbours, "inverse", None) is not None
            and not is_functorch_wrapped_tensor(spins))


def fused_energy_and_field(model, spins: torch.Tensor, neighbours) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Energy and field B = -dE/dS of ``model`` (an ECNN) with the compiled kernel, or None
    where it does not apply (see the module docstring).

    Args:
        model: the ECNN; spins must be in its dtype and on its device.
        spins: (..., N, 3) configurations sharing one graph.
        neighbours: the graph's :class:`~klmgraph.nn.conv.TypedNeighbours` (on the CPU).

    Shapes:
        spins: (..., N, 3) -> energy (...), field (..., N, 3)
    """
    if not _applies(spins, neighbours) or not _fits(model):
        return None
    lib = _library()
    if lib is None:
        return None
    from e3nn import o3

    dtype, n = spins.dtype, spins.shape[-2]
    meta, params, eps2 = _packed(model, dtype)
    s = spins.detach().requires_grad_(True)
    with torch.enable_grad():
        inp = torch.stack([s, -s]) if model.time_reversal else s
        x0 = o3.spherical_harmonics(model.irreps_in, inp, normalize=False, normalization=model.sh_normalization)
        filt = o3.spherical_harmonics(model.filter_irreps, inp, normalize=False,
                                      normalization=model.sh_normalization)
    lead = x0.shape[:-2]
    batch = math.prod(lead)
    x0c, filtc = x0.detach().contiguous(), filt.detach().contiguous()
    energy = torch.empty(lead + (n,), dtype=dtype)
    gx0, gfilt = torch.empty_like(x0c), torch.empty_like(filtc)
    table, inverse = neighbours.table.contiguous(), neighbours.inverse.contiguous()
    work = _workspace(neighbours, lib.klm_ecnn_workspace(meta.data_ptr(), batch * n), dtype)
    fn = lib.klm_ecnn_energy_and_grads_f32 if dtype == torch.float32 else lib.klm_ecnn_energy_and_grads_f64
    fn(meta.data_ptr(), params.data_ptr(), x0c.data_ptr(), filtc.data_ptr(), table.data_ptr(), inverse.data_ptr(),
       batch, n, eps2, torch.get_num_threads(), energy.data_ptr(), gx0.data_ptr(), gfilt.data_ptr(), work.data_ptr())
    scale = 0.5 if model.time_reversal else 1.0
    (grad,) = torch.autograd.grad([x0, filt], s, [gx0 * scale, gfilt * scale])
    if model.time_reversal:
        energy = 0.5 * (energy[0] + energy[1])
    return energy.sum(-1), -grad
