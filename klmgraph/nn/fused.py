"""Energy and field of an ECNN in one compiled kernel (CPU), for dynamics and for training.

:func:`fused_energy_and_field` (``bind(graph).energy_and_field``) packs the model (mixing
matrices, Clebsch-Gordan tables, read-out matrices) into one flat parameter vector once per
weight version and calls the C++ kernel of :mod:`klmgraph.nn.fused_source`, which runs the
whole network forward and its backward to the input features without materialising gathered
neighbour buffers. The spherical harmonics of the spins and their derivative stay in PyTorch
(autograd), so B = -dE/dS is exactly the eager path's field up to float rounding
(tests/test_fused.py).

:func:`fused_site_energies` (``model.energy``/``site_energies``, the trainer's path) returns
site energies that autograd differentiates twice: the first backward (:class:`_Gradients`,
the field) is the kernel's reverse to the inputs and, where a loss needs it, to the flat
parameters; the second (:class:`_Curvature`, the parameter gradient of a loss on the field)
is a Hessian-vector product, computed forward-over-reverse by the same kernel instantiated
with dual numbers; it takes the values that the first call kept (``_SAVE``, ``_REUSE``) and
mixes only their derivatives. The flat parameter vector is built from the model's parameters with
autograd on, so its gradient reaches them through the packing. A third derivative raises.

Both answer None where the kernel does not apply, and the caller takes the eager PyTorch
path: devices other than the CPU, dtypes other than float32/float64 (or spins in another
dtype than the model's), graphs whose classes repeat at a site (irregular graphs:
scatter-add), inputs or weights wrapped by torch.func transforms (vmap, grad; a committee then
evaluates its members in one vmapped call), or no C++ compiler. They also answer None where the
kernel is built without 64-byte vectors (no AVX-512: AVX2 machines, ARM): its block kernels then
run in pieces, and on an AMD EPYC built with -march=x86-64-v3 or -mno-avx512f it took 114-126
us/site against the eager path's 34-36 (triangular 96x96, 1 thread, 2026-12-03,
docs/benchmarks.md). The environment variable ``KLMGRAPH_KERNEL=always`` takes the kernel
anyway (the tests do, so that it is tested on every machine).
"""
from __future__ import annotations

import ctypes
import math
import os
import warnings
import weakref

import torch

from . import native
from .fused_source import SOURCE
from .threads import one_torch_thread

__all__ = ["fused_energy_and_field", "fused_site_energies", "available", "applies"]

_P = ctypes.c_void_p
_I = ctypes.c_int64


_ENTRIES = ("klm_ecnn_f32", "klm_ecnn_f64", "klm_ecnn_dual_f32", "klm_ecnn_dual_f64")
_GRAD_X, _GRAD_P, _PER_CONFIG = 1, 2, 4  # the kernel's mode bits (fused_source: KLM_GRAD_X, ...)
_SAVE, _REUSE = 8, 16  # a real call keeps its values for the dual call on the same inputs (KLM_SAVE, ...)
_CONST_CG = 32  # no gradient for the Clebsch-Gordan entries of the flat parameters (KLM_CONST_CG)
_RECOMPUTE_Z = 64  # energy + field recomputes every layer's z in the backward, none kept (tests: KLM_RECOMPUTE_Z)


def _library():
    lib = native.load("klmgraph_ecnn", SOURCE)
    if lib is not None and not hasattr(lib, "_klm_typed"):
        for name in _ENTRIES:
            fn = getattr(lib, name)
            fn.argtypes = [_P, _P, _P, _P, _P, _P, _I, _I, ctypes.c_double, ctypes.c_int, _P, ctypes.c_int,
                           _P, _P, _P, _P, _P, _P]
            fn.restype = None
        lib.klm_ecnn_workspace.argtypes = [_P, _I, ctypes.c_int]
        lib.klm_ecnn_workspace.restype = _I
        lib.klm_ecnn_saved.argtypes = [_P, _I]
        lib.klm_ecnn_saved.restype = _I
        lib.klm_ecnn_vector_bytes.argtypes = []
        lib.klm_ecnn_vector_bytes.restype = ctypes.c_int
        lib._klm_typed = True
    return lib


def available() -> bool:
    """Whether the compiled kernel can be built and loaded on this machine."""
    return _library() is not None


def _vector_bytes() -> int | None:
    """The vector width the kernel was built for (None without a kernel)."""
    lib = _library()
    return None if lib is None else int(lib.klm_ecnn_vector_bytes())


def faster_than_eager() -> bool:
    """Whether the kernel is built with the 64-byte vectors it is written for (AVX-512), or
    ``KLMGRAPH_KERNEL=always`` asks for it anyway; warns where it is not (Python shows a warning
    once per place by default; see the module docstring: without AVX-512 the eager path was
    3.3-3.7x faster)."""
    width = _vector_bytes()
    if width is None:
        return False
    if os.environ.get("KLMGRAPH_KERNEL", "") == "always" or width >= 64:
        return True
    warnings.warn(f"klmgraph: this CPU has no AVX-512, so the compiled ECNN kernel (written for 64-byte "
                  f"vectors, {width}-byte here) is slower than the eager PyTorch path, "
                  "which runs instead; KLMGRAPH_KERNEL=always takes the kernel anyway", stacklevel=3)
    return False


def _linear_matrix(linear, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) matrix and bias of an e3nn o3.Linear on scalars (its normalisation folded in;
    differentiable with respect to its weights where autograd is on): one call on zero and the
    unit vectors."""
    n = linear.irreps_in.dim
    probe = torch.cat([torch.zeros(1, n, dtype=dtype, device=linear.weight.device),
                       torch.eye(n, dtype=dtype, device=linear.weight.device)])
    out = linear(probe)
    bias = out[0]
    return (out[1:] - bias).T.contiguous(), bias


def _trainable_chunks(model, dtype) -> list[torch.Tensor]:
    """The parts of the flat parameters that depend on the model's parameters, flattened, in the
    order of :func:`_structure`'s offsets: each convolution's mixing matrices, then each read-out
    linear's matrix and bias (autograd as set)."""
    convs = [b.conv for b in model.blocks] + [model.output.conv]
    chunks = [m.to(dtype).reshape(-1) for conv in convs for m in conv.mixing_matrices()]
    for linear in model.output.linears:
        chunks += [t.reshape(-1) for t in _linear_matrix(linear, dtype)]
    return chunks


def _structure(model, dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(meta int64, the constant tail of the flat parameters, eps^2): the network as the kernel's
    flat description (see fused_source), with the Clebsch-Gordan coefficients (the model's
    buffers) after the trainable parts of :func:`_trainable_chunks`. Fixed for a model, so cached
    on it per dtype: a training step then only rebuilds the trainable parts."""
    cached = model.__dict__.setdefault("_fused_structure", {})
    if dtype in cached:
        return cached[dtype]
    convs = [(b.conv, bool(b.residual), True) for b in model.blocks] + [(model.output.conv, False, False)]
    with torch.no_grad():
        sizes = [t.numel() for t in _trainable_chunks(model, dtype)]
    meta, constants = [], []
    trainable, offset = iter(sizes), 0
    constant_offset = sum(sizes)

    def put(size: int) -> int:  # the next trainable chunk (its size checked against the order)
        nonlocal offset
        if next(trainable) != size:  # not an assert: python -O must not pack the wrong chunks
            raise RuntimeError("the flat parameters' order changed: the kernel's packing no longer matches the model")
        start, offset = offset, offset + size
        return start

    def put_constant(t: torch.Tensor) -> int:
        nonlocal constant_offset
        constants.append(t.to(dtype).reshape(-1))
        start, constant_offset = constant_offset, constant_offset + t.numel()
        return start

    j_dim = model.filter_irreps.dim
    meta += [len(convs), model.num_classes, j_dim, len(model.output.linears), 0]  # [4]: the size of params
    for conv, residual, act in convs:
        mats = conv.mixing_matrices()
        in_slices, out_slices = conv.irreps_in.slices(), conv.irreps_out.slices()
        ins, z_offset = [], 0
        for a, (mul, ir) in enumerate(conv.irreps_in):
            q = mats[a].shape[1]
            ins.append([mul, ir.dim, in_slices[a].start, q, put(mats[a].numel()), z_offset])  # (K * mul, Q), rows k * mul + u
            z_offset += ir.dim * q
        outs, entries = [], []
        for c, (mul, ir) in enumerate(conv.irreps_out):
            pieces = [(a, col, conv.irreps_in[a].ir.dim) for a in range(len(conv.irreps_in))
                      for _, cc, col in conv._paths[a] if cc == c]
            cg = conv._cg_matrix(c, torch.float64, "cpu").view(-1, j_dim, ir.dim)  # (I_c, J, d_c)
            outs.append([mul, ir.dim, out_slices[c].start, cg.shape[0], 0, len(pieces)]
                        + [v for p in pieces for v in p])
            rows = [ins[a][5] + i * ins[a][3] + col for a, col, d in pieces for i in range(d)]  # z offset of row r
            nonzero = cg.nonzero()
            first = put_constant(cg[tuple(nonzero.T)])
            entries += [[c, rows[r], j, kk, first + e] for e, (r, j, kk) in enumerate(nonzero.tolist())]
        meta += [conv.irreps_in.dim, conv.irreps_out.dim, int(residual), int(act), z_offset, len(ins), len(outs)]
        meta += [v for i in ins for v in i] + [v for o in outs for v in o] + [len(entries)]
        meta += [v for e in entries for v in e]
    for linear in model.output.linears:
        n_in, n_out = linear.irreps_in.dim, linear.irreps_out.dim
        meta += [n_in, n_out, put(n_out * n_in), put(n_out)]
    meta[4] = constant_offset
    eps2 = float(model.blocks[0].act._eps_squared)
    empty = torch.zeros(0, dtype=dtype)
    cached[dtype] = (torch.tensor(meta, dtype=torch.int64), torch.cat(constants) if constants else empty, eps2)
    return cached[dtype]


def _pack(model, dtype) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(meta int64, params, eps^2): the network as the kernel's flat description (see
    fused_source). ``params`` is a function of the model's parameters that autograd follows
    where it is on (training); the Clebsch-Gordan coefficients in it (its tail) are constants."""
    meta, constants, eps2 = _structure(model, dtype)
    return meta, torch.cat(_trainable_chunks(model, dtype) + [constants]).contiguous(), eps2


def _packed(model, dtype):
    """:func:`_pack` without autograd, cached on the model until a parameter changes (in place
    or replaced)."""
    key = (dtype, tuple((p.data_ptr(), p._version) for p in model.parameters()))
    cache = model.__dict__.get("_fused_pack")
    if cache is None or cache[0] != key:
        with torch.no_grad():
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


# at most this many real calls' saved values are kept per graph (a committee's members each have
# theirs); a further call takes over the least recently used, whose dual call then computes its own
_SAVED_MAX = 8


class SavedToken:
    """Marks the values one ``_SAVE`` run kept (one forward of :class:`_SiteEnergies`). The pool
    holds it weakly: once autograd frees that forward's graph (no dual call will come, e.g. an
    evaluation or an energy without its field), the buffer is free again."""

    __slots__ = ("__weakref__",)


def _owner(entry):
    return None if entry[1] is None else entry[1]()


def _saved_values(neighbours, token: SavedToken, size: int, dtype) -> torch.Tensor:
    """Room for what a real call keeps for its dual call (``_SAVE``): a pool of buffers kept with
    the graph's neighbour table like the workspace, [values, weak reference to the owner's token]
    pairs, least recently taken first. An entry whose dual call has run, or whose owner is gone,
    is free again (:meth:`_Call.release_saved`); with none free and the pool full, the oldest is
    taken over, and :meth:`_Call.owns_saved` then tells its earlier owner's dual call not to use it."""
    pool = neighbours.__dict__.setdefault("_fused_saved", [])
    entry = next((e for e in pool if _owner(e) is None), None)
    if entry is None and len(pool) >= _SAVED_MAX:
        entry = pool[0]
    if entry is None:
        entry = [torch.empty(size, dtype=dtype), None]
    else:
        del pool[next(i for i, e in enumerate(pool) if e is entry)]  # by identity: == compares the tensors
        if entry[0].dtype != dtype or entry[0].numel() < size:
            entry[0] = torch.empty(size, dtype=dtype)
    entry[1] = weakref.ref(token)
    pool.append(entry)
    return entry[0]


def _fits(model) -> bool:
    """The kernel's fixed limits: at most 16 filter components and 16 irreps per layer."""
    convs = [b.conv for b in model.blocks] + [model.output.conv]
    return model.filter_irreps.dim <= 16 and all(len(c.irreps_out) <= 16 for c in convs)


def _applies(model, spins: torch.Tensor, neighbours) -> bool:
    from torch._C._functorch import is_functorch_wrapped_tensor

    reference = next(model.parameters())
    return (spins.device.type == "cpu" and spins.dtype in (torch.float32, torch.float64)
            and reference.dtype == spins.dtype and reference.device.type == "cpu"
            and getattr(neighbours, "table", None) is not None and getattr(neighbours, "inverse", None) is not None
            and not is_functorch_wrapped_tensor(spins) and not is_functorch_wrapped_tensor(reference)
            and _fits(model))


def applies(model, spins: torch.Tensor, neighbours) -> bool:
    """Whether :func:`fused_site_energies` would take the kernel for ``model`` (an ECNN whose
    ``fused`` switch and convolutions are not checked here) on ``spins`` and ``neighbours``:
    the device, dtype, graph and torch.func conditions of the module docstring, and a compiler."""
    return _applies(model, spins, neighbours) and faster_than_eager()


def _inputs(model, spins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's inputs: x0 = Y^(0..input_lmax)(S) and the filter Y^(0..filter_lmax)(S), with
    -S stacked in front of S when the model is time-reversal symmetrised (autograd as set)."""
    from e3nn import o3

    inp = torch.stack([spins, -spins]) if model.time_reversal else spins
    x0 = o3.spherical_harmonics(model.irreps_in, inp, normalize=False, normalization=model.sh_normalization)
    filt = o3.spherical_harmonics(model.filter_irreps, inp, normalize=False, normalization=model.sh_normalization)
    return x0, filt


class _Call:
    """One kernel call's fixed description: the packed network and the graph's tables.

    :meth:`run` evaluates the site energies and, by ``mode``, the seed-weighted gradients with
    respect to x0, the filter and the flat parameters; with ``tangents`` every input carries a
    direction (dual numbers) and each result comes back as (value, derivative along it)."""

    def __init__(self, lib, meta: torch.Tensor, eps2: float, neighbours, shape: torch.Size,
                 threads: int | None = None):
        self.lib, self.meta, self.eps2, self.neighbours = lib, meta, eps2, neighbours
        self.threads = threads  # None: torch's count at the time of the call
        self.lead, self.n = shape[:-1], shape[-1]
        self.batch = math.prod(self.lead)
        # (token, dE_b/dparams per configuration, dE/dx0, dE/dfilt), left by the force loss's
        # backward (_Curvature) for the energy loss's (_SiteEnergies.backward): see there; the
        # token (SavedToken) names the forward they belong to
        self.first_derivatives = None
        # (token, dE/dx0, dE/dfilt), left by the forward for the field (_Gradients.forward)
        self.field_derivatives = None
        # whether the Clebsch-Gordan entries of the flat parameters are constants to the caller
        # (fused_site_energies: _pack builds them from the model's buffers, so autograd drops their
        # gradient), which the kernel then leaves 0 (_CONST_CG)
        self.constant_cg = False

    def _saved_entry(self, token: SavedToken | None):
        pool = self.neighbours.__dict__.get("_fused_saved", [])
        return None if token is None else next((e for e in pool if _owner(e) is token), None)

    def owns_saved(self, token: SavedToken | None) -> bool:
        """Whether the values that the ``_SAVE`` run marked ``token`` kept are still there (no
        later call on the same graph has taken their buffer over)."""
        return self._saved_entry(token) is not None

    def release_saved(self, token: SavedToken | None):
        """Frees the values of the run marked ``token`` for the next real call (its dual call
        has used them, or none will come)."""
        entry = self._saved_entry(token)
        if entry is not None:
            entry[1] = None

    def run(self, params, x0, filt, seed=None, mode: int = 0, tangents=None, token: SavedToken | None = None):
        """``token``: the mark of the values that ``_SAVE`` keeps and ``_REUSE`` reads."""
        dual = tangents is not None
        if dual:  # interleaved (value, derivative) pairs: the kernel's Dual<T> layout
            pair = (lambda t, d: torch.stack([t.detach(), torch.zeros_like(t) if d is None else d.detach()], -1)
                    .contiguous())
            params, x0, filt = (pair(t, d) for t, d in zip((params, x0, filt), tangents))
            seed = None if seed is None else pair(seed, None)
        else:
            params, x0, filt = (t.detach().contiguous() for t in (params, x0, filt))
            seed = None if seed is None else seed.detach().contiguous()
        if mode & _GRAD_P and self.constant_cg:
            mode |= _CONST_CG
        dtype, tail = params.dtype, (2,) if dual else ()
        energy = torch.empty(self.lead + (self.n,) + tail, dtype=dtype)
        gx0 = torch.empty_like(x0) if mode & _GRAD_X else None
        gfilt = torch.empty_like(filt) if mode & _GRAD_X else None
        gparams = None
        if mode & _GRAD_P:
            gparams = torch.empty(((self.batch,) if mode & _PER_CONFIG else ()) + params.shape, dtype=dtype)
        table, inverse = self.neighbours.table.contiguous(), self.neighbours.inverse.contiguous()
        size = self.lib.klm_ecnn_workspace(self.meta.data_ptr(), self.batch * self.n, mode) * (2 if dual else 1)
        work = _workspace(self.neighbours, size, dtype)
        saved = None
        if mode & (_SAVE | _REUSE):
            count = self.lib.klm_ecnn_saved(self.meta.data_ptr(), self.batch * self.n)
            saved = _saved_values(self.neighbours, token, count, dtype) if mode & _SAVE else self._saved_entry(token)[0]
        name = ("klm_ecnn_dual_" if dual else "klm_ecnn_") + ("f32" if dtype == torch.float32 else "f64")
        ptr = (lambda t: None if t is None else t.data_ptr())
        getattr(self.lib, name)(self.meta.data_ptr(), params.data_ptr(), x0.data_ptr(), filt.data_ptr(),
                                table.data_ptr(), inverse.data_ptr(), self.batch, self.n, self.eps2,
                                self.threads or torch.get_num_threads(), ptr(seed), mode, energy.data_ptr(), ptr(gx0),
                                ptr(gfilt), ptr(gparams), ptr(work), ptr(saved))
        return energy, gx0, gfilt, gparams


def _will_be_used(t: torch.Tensor) -> bool:
    """Whether the running backward pass will use a gradient for ``t`` (autograd.grad with
    ``inputs`` skips the rest of the graph: the field of training needs no dE/dparams)."""
    try:
        return bool(torch._C._will_engine_execute_node(torch.autograd.graph.get_gradient_edge(t).node))
    except (RuntimeError, AttributeError):  # not inside a backward pass, or an older torch
        return True


class _SiteEnergies(torch.autograd.Function):
    """Site energies e(params, x0, filt); backward: :class:`_Gradients` (differentiable again)."""

    @staticmethod
    def forward(ctx, params, x0, filt, call):
        ctx.call, ctx.token = call, None
        ctx.save_for_backward(params, x0, filt)
        if ctx.needs_input_grad[0] and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            # training (parameters and spins require grad): the field will be asked for, and its
            # reverse pass costs less in this call than in one of its own (which repeats the
            # forward). Frozen weights (chunked evaluation: seeds that differ between owned and
            # halo sites) skip it. The call keeps its values for the dual-number call of the force
            # loss's backward (_Curvature), which then computes only their derivatives.
            # What this forward leaves for its own backward passes is marked with a token of its
            # own (a call may run several forwards, e.g. gradcheck): another forward's values
            # must never serve it.
            ctx.token = SavedToken()
            energy, gx0, gfilt, _ = call.run(params, x0, filt, mode=_GRAD_X | _SAVE, token=ctx.token)
            call.field_derivatives = (ctx.token, gx0, gfilt)
            return energy
        return call.run(params, x0, filt)[0]

    @staticmethod
    def backward(ctx, seed):
        params, x0, filt = ctx.saved_tensors
        want = [ctx.needs_input_grad[i] and _will_be_used(t) for i, t in enumerate((params, x0, filt))]
        mode = (_GRAD_P if want[0] else 0) | (_GRAD_X if want[1] or want[2] else 0)
        if not torch.is_grad_enabled():  # a last backward: no dual call of this forward will come
            ctx.call.release_saved(ctx.token)
        if not mode:
            return None, None, None, None
        # The energy loss of training: its backward runs after the force loss's (autograd runs
        # the later-made node first), whose dual-number call has left the first derivatives per
        # configuration; a seed constant over each configuration's sites (a loss on E = sum e)
        # scales them, saving a kernel call. They are a function of the saved inputs only.
        cached = ctx.call.first_derivatives
        if (cached is not None and ctx.token is not None and cached[0] is ctx.token and not torch.is_grad_enabled()
                and (cached[2] is not None or not mode & _GRAD_X)):
            c = seed.reshape(ctx.call.batch, ctx.call.n)
            if bool((c == c[:, :1]).all()):
                per_config = c[:, 0]
                scale = per_config.reshape(ctx.call.lead + (1, 1))
                return ((per_config[:, None] * cached[1]).sum(0) if want[0] else None,
                        scale * cached[2] if want[1] else None, scale * cached[3] if want[2] else None, None)
        gparams, gx0, gfilt = _Gradients.apply(seed, params, x0, filt, ctx.call, mode, ctx.token)
        return gparams, gx0, gfilt, None


class _Gradients(torch.autograd.Function):
    """(dF/dparams, dF/dx0, dF/dfilt) of F = sum_g seed_g e_g; backward: :class:`_Curvature`."""

    @staticmethod
    def forward(ctx, seed, params, x0, filt, call, mode, token):
        ctx.set_materialize_grads(False)
        ctx.call, ctx.mode, ctx.token = call, mode, token
        ctx.save_for_backward(seed, params, x0, filt)
        cached = call.field_derivatives
        if mode == _GRAD_X and cached is not None and token is not None and cached[0] is token:
            c = seed.reshape(call.batch, call.n)
            if bool((c == c[:, :1]).all()):  # a seed constant over each configuration: scale
                scale = c[:, :1].reshape(call.lead + (1, 1))
                return None, scale * cached[1], scale * cached[2]
        _, gx0, gfilt, gparams = call.run(params, x0, filt, seed=seed, mode=mode)
        return gparams, gx0, gfilt

    @staticmethod
    def backward(ctx, v_params, v_x0, v_filt):
        seed, params, x0, filt = ctx.saved_tensors
        # a backward that skips the spins (the trainer's loss.backward(inputs=parameters)) needs no
        # second derivatives to x0 and the filter: the dual call then leaves out its last pass
        need = [n and _will_be_used(t) for n, t in zip(ctx.needs_input_grad, (seed, params, x0, filt))]
        mode = (_GRAD_P if need[1] else 0) | (_GRAD_X if need[2] or need[3] else 0)
        out = _Curvature.apply(seed, params, x0, filt, v_params, v_x0, v_filt, ctx.call, mode, ctx.token)
        return (out[0] if need[0] else None, *out[1:], None, None, None)


class _Curvature(torch.autograd.Function):
    """The backward of :class:`_Gradients` along the direction v = (v_params, v_x0, v_filt):
    the Hessian of F times v by forward-over-reverse (the kernel in dual numbers: the
    derivatives of the gradients along v), and for the seed the derivatives of the e_g along v.
    Not differentiable again: a third derivative raises (rather than dropping this term, as
    ``once_differentiable`` does for ``autograd.grad``)."""

    @staticmethod
    def forward(ctx, seed, params, x0, filt, v_params, v_x0, v_filt, call, mode, token):
        per_config = bool(mode & _GRAD_P)
        # the real call's saved values serve where they are this call's and scale with the seed
        # (constant over each configuration), and the parameters carry no derivative (the kernel
        # mixes the features' derivatives with the weights' values alone)
        c = seed.reshape(call.batch, call.n)
        s = c[:, :1]
        constant = bool((c == s).all())
        reuse = bool(mode & _GRAD_P) and v_params is None and call.owns_saved(token) and constant
        energy, gx0, gfilt, gparams = call.run(params, x0, filt, seed=seed,
                                               mode=mode | (_PER_CONFIG if per_config else 0) | (_REUSE if reuse else 0),
                                               tangents=(v_params, v_x0, v_filt), token=token)
        call.release_saved(token)
        if per_config:
            if constant and bool((s != 0).all()):
                # the field's seed, constant over each configuration: the values are s_b dE_b/d(.)
                shape = call.lead + (1, 1)
                call.first_derivatives = (token, gparams[..., 0] / s,
                                          None if gx0 is None else gx0[..., 0] / s.reshape(shape),
                                          None if gfilt is None else gfilt[..., 0] / s.reshape(shape))
            gparams = gparams.sum(0)
        return tuple(None if t is None else t[..., 1].contiguous() for t in (energy, gparams, gx0, gfilt))

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("third derivatives through the compiled ECNN kernel are not implemented; set "
                           "model.fused = False to take the eager PyTorch path")


def fused_site_energies(model, spins: torch.Tensor, neighbours) -> torch.Tensor | None:
    """Site energies of ``model`` (an ECNN) from the compiled kernel, differentiable twice with
    respect to the spins and the parameters (the field, and a loss on the field during
    training); a third derivative raises. None where the kernel does not apply (see the module
    docstring); the caller then takes the eager path.

    Shapes:
        spins: (..., N, 3) -> (..., N) (time-reversal symmetrised if the model is)
    """
    if not _applies(model, spins, neighbours) or not faster_than_eager():
        return None
    lib = _library()
    grad = torch.is_grad_enabled() and (spins.requires_grad or any(p.requires_grad for p in model.parameters()))
    meta, params, eps2 = _pack(model, spins.dtype) if grad else _packed(model, spins.dtype)
    x0, filt = _inputs(model, spins)
    call = _Call(lib, meta, eps2, neighbours, x0.shape[:-1])
    call.constant_cg = True
    e = _SiteEnergies.apply(params, x0, filt, call) if grad else call.run(params, x0, filt)[0]
    return 0.5 * (e[0] + e[1]) if model.time_reversal else e


def fused_energy_and_field(model, spins: torch.Tensor, neighbours,
                           threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Energy and field B = -dE/dS of ``model`` (an ECNN) with the compiled kernel, weights
    frozen and no autograd graph kept, or None where it does not apply (see the module
    docstring).

    Args:
        model: the ECNN; spins must be in its dtype and on its device.
        spins: (..., N, 3) configurations sharing one graph.
        neighbours: the graph's :class:`~klmgraph.nn.conv.TypedNeighbours` (on the CPU).
        threads: the kernel's threads (default torch's count; a bound model chooses it, see
            :class:`~klmgraph.nn.threads.ThreadChoice`). Results do not depend on it.

    Shapes:
        spins: (..., N, 3) -> energy (...), field (..., N, 3)
    """
    if not _applies(model, spins, neighbours) or not faster_than_eager():
        return None
    lib = _library()
    meta, params, eps2 = _packed(model, spins.dtype)
    threads = threads or torch.get_num_threads()
    with one_torch_thread():  # torch's part (about 1% of the call) beside the kernel's threads
        s = spins.detach().requires_grad_(True)
        with torch.enable_grad():
            x0, filt = _inputs(model, s)
        call = _Call(lib, meta, eps2, neighbours, x0.shape[:-1], threads)
        energy, gx0, gfilt, _ = call.run(params, x0, filt, mode=_GRAD_X)
        if model.time_reversal:  # no scaled copies otherwise: memory per site is what limits the kernel
            gx0, gfilt, energy = 0.5 * gx0, 0.5 * gfilt, 0.5 * (energy[0] + energy[1])
        (grad,) = torch.autograd.grad([x0, filt], s, [gx0, gfilt])
        return energy.sum(-1), grad.neg_()
