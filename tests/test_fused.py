"""The compiled energy + field kernel (nn/fused.py): equal to the eager path and to the e3nn
reference on every kind of graph, the same with several threads, and the fallbacks."""
import os
import platform
import shutil
import subprocess
import warnings

import pytest
import torch
from test_ecnn import irregular_graph

import klmgraph
from klmgraph.nn import ECNN, ThreadChoice, compute_field, fused, fused_source, native

pytestmark = pytest.mark.skipif(not fused.available(), reason="no C++ compiler: the kernel falls back to eager")


GRAPHS = {
    "square": lambda: klmgraph.square(6, 5, t2=0.5),
    "square-open": lambda: klmgraph.square(5, 4, periodic=False),
    "triangular": lambda: klmgraph.triangular(6, 6, 1.0, 0.0, -0.85),
    "kagome": lambda: klmgraph.kagome(3, 3),
    "cubic": lambda: klmgraph.cubic(3, 3, 3),
}


def random_model(graph, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = ECNN.for_graph(graph, **{"channels": 3, "num_interactions": 3, **kwargs}).to(dtype)
    with torch.no_grad():  # not-small weights everywhere, biases included, so that every path matters
        for p in model.parameters():
            p.normal_()
    return model


def eager_energy_and_field(model, graph, spins):
    s = spins.detach().clone().requires_grad_(True)
    energy = model.energy(s, model.prepare(graph))
    return energy.detach(), compute_field(energy, s).detach()


@pytest.mark.parametrize("graph_name", list(GRAPHS))
def test_kernel_equals_eager_and_reference_float64(graph_name):
    graph = GRAPHS[graph_name]()
    model = random_model(graph)
    spins = klmgraph.random_spins(graph, batch=2, seed=1, dtype=torch.float64)
    kernel = model.fused_energy_and_field(spins, model.prepare(graph))
    assert kernel is not None  # the kernel applies to every Bravais lattice, open or periodic
    e_eager, b_eager = eager_energy_and_field(model, graph, spins)
    model.implementation = "reference"
    assert model.fused_energy_and_field(spins, model.prepare(graph)) is None
    e_ref, b_ref = model.bind(graph).energy_and_field(spins)
    assert b_ref.abs().max() > 1e-3
    for e, b in (kernel, (e_eager, b_eager)):
        torch.testing.assert_close(e, e_ref, rtol=1e-10, atol=0)
        torch.testing.assert_close(b, b_ref, rtol=0, atol=1e-10 * b_ref.abs().max().item())


@pytest.mark.parametrize("graph_name", ["triangular", "square"])
def test_published_size_float32(graph_name):
    """Published hyper-parameters (8 channels, 4 blocks: the specialised micro-kernels) in float32."""
    graph = GRAPHS[graph_name]()
    model = ECNN.for_graph(graph)
    spins = klmgraph.random_spins(graph, batch=3, seed=2, dtype=torch.float32)
    e, b = model.bind(graph).energy_and_field(spins)
    e_eager, b_eager = eager_energy_and_field(model, graph, spins)
    model.implementation = "reference"
    e_ref, b_ref = model.bind(graph).energy_and_field(spins)
    for got in ((e, b), (e_eager, b_eager)):
        assert ((got[0] - e_ref).abs() <= 1e-5 * e_ref.abs()).all()
        assert (got[1] - b_ref).abs().max() <= 1e-5 * b_ref.abs().max()


BLOCK_GRAPHS = {  # site counts that leave short blocks at tile ends; missing neighbours (open)
    "square-open": lambda: klmgraph.square(5, 7, periodic=False),
    "triangular": lambda: klmgraph.triangular(5, 7, 1.0, 0.0, -0.85),
    # 9 sites: a configuration alone is one block with fewer sites than the vector lanes (16 floats, 8 doubles)
    "triangular-open-3x3": lambda: klmgraph.triangular(3, 3, 1.0, 0.0, -0.85, periodic=False),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("graph_name", list(BLOCK_GRAPHS))
def test_published_size_blocks_equal_eager(graph_name, dtype):
    """Published sizes (8 channels: the multi-site block kernels, whose last vector of a row
    overlaps the one before in float32) agree with the eager path: 1e-10 in float64, float32
    rounding in float32, with 105 sites (3 configurations of 35: short blocks) and, on the open
    lattice, missing neighbours."""
    graph = BLOCK_GRAPHS[graph_name]()
    model = random_model(graph, dtype, seed=5, channels=8)
    spins = klmgraph.random_spins(graph, batch=3, seed=6, dtype=dtype)
    e, b = model.bind(graph, threads=1).energy_and_field(spins)
    model.fused = False
    e_eager, b_eager = eager_energy_and_field(model, graph, spins)
    model.fused = True
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert b_eager.abs().max() > 1e-3
    assert ((e - e_eager).abs() <= tol * e_eager.abs()).all()
    assert (b - b_eager).abs().max() <= tol * b_eager.abs().max()
    e2, b2 = model.bind(graph, threads=2).energy_and_field(spins)
    assert torch.equal(e, e2) and torch.equal(b, b2)
    # a configuration alone starts its blocks at other sites than inside the batch (35 sites per
    # configuration): a site's sums must not depend on its place in a block
    for i in range(len(spins)):
        e_alone, b_alone = model.bind(graph, threads=1).energy_and_field(spins[i])
        assert torch.equal(e_alone, e[i]) and torch.equal(b_alone, b[i])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("num_interactions", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("graph_name", ["triangular", "square-open"])
def test_kept_z_equals_recomputed_z(graph_name, dtype, num_interactions, threads):
    """Energy + field keeps the mixed features z_l of layers L-3 and L-2 for the backward (in the
    dE/dz buffers, which dE/dz_l then overwrites in place: fused_source's Layout); with
    KLM_RECOMPUTE_Z every z_l is recomputed from the neighbours' inputs, as before. Same numbers
    bit for bit: 8 channels (the block kernels), short blocks at tile ends (105 sites), missing
    neighbours (open square), L = 2 (z_0 kept), 3 (z_0 and z_1) and 5 layers (the published
    depth: z_2 and z_3). On the published model the kept z take no more workspace than none."""
    graph = BLOCK_GRAPHS[graph_name]() if graph_name in BLOCK_GRAPHS else GRAPHS[graph_name]()
    model = random_model(graph, dtype, seed=7, channels=8, num_interactions=num_interactions)
    neighbours = model.prepare(graph)
    meta, params, eps2 = fused._pack(model, dtype)
    spins = klmgraph.random_spins(graph, batch=3, seed=8, dtype=dtype)
    x0, filt = fused._inputs(model, spins)
    call = fused._Call(fused._library(), meta, eps2, neighbours, x0.shape[:-1], threads=threads)
    kept = call.run(params, x0, filt, mode=fused._GRAD_X)
    recomputed = call.run(params, x0, filt, mode=fused._GRAD_X | fused._RECOMPUTE_Z)
    assert recomputed[1].abs().max() > 1e-3
    for got, want in zip(kept[:3], recomputed[:3]):
        assert torch.equal(got, want)
    lib, published = fused._library(), ECNN.for_graph(graph)
    meta = fused._pack(published, torch.float32)[0]
    workspace = [lib.klm_ecnn_workspace(meta.data_ptr(), 1000, mode)
                 for mode in (fused._GRAD_X, fused._GRAD_X | fused._RECOMPUTE_Z)]
    assert workspace[0] <= workspace[1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("graph_name", ["triangular", "square-open"])
def test_kept_z_in_the_dual_call_equals_recomputed_z(graph_name, dtype, monkeypatch):
    """The derivative of the field along a direction with frozen weights runs the dual-number
    kernel with the energy + field layout (z kept in dual numbers); recomputing every z instead
    gives the same energies, fields and second derivatives bit for bit."""
    graph = BLOCK_GRAPHS[graph_name]()
    model = random_model(graph, dtype, seed=9, channels=8)
    for p in model.parameters():
        p.requires_grad_(False)
    spins = klmgraph.random_spins(graph, batch=3, seed=10, dtype=dtype)
    direction = torch.randn(spins.shape, dtype=dtype, generator=torch.Generator().manual_seed(11))
    run, results = fused._Call.run, []
    for extra in (0, fused._RECOMPUTE_Z):
        calls = []

        def patched(self, *args, extra=extra, calls=calls, **kwargs):
            calls.append((kwargs.get("mode", 0), kwargs.get("tangents") is not None))
            return run(self, *args, **{**kwargs, "mode": kwargs.get("mode", 0) | extra})

        monkeypatch.setattr(fused._Call, "run", patched)
        s = spins.clone().requires_grad_(True)
        energy = model.energy(s, model.prepare(graph))
        field = compute_field(energy, s, training=True)
        (curvature,) = torch.autograd.grad((field * direction).sum(), s)
        assert (fused._GRAD_X, True) in calls  # the dual call without a parameter gradient
        results.append((energy.detach(), field.detach(), curvature))
    assert results[0][2].abs().max() > 1e-3
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("g++") is None,
                    reason="needs g++ on x86-64")
@pytest.mark.parametrize("march", ["x86-64", "x86-64-v3", "x86-64-v4"])
def test_kernel_source_compiles_for_every_x86_level(march, tmp_path):
    """The kernel is built with -march=native on the user's machine: it must compile without
    AVX-512 (AVX2 alone, or SSE2) too, where a failed build would silently fall back to eager."""
    source = tmp_path / "kernel.cpp"
    source.write_text(fused_source.SOURCE)
    build = subprocess.run(["g++", "-O0", f"-march={march}", "-std=c++17", "-Wno-psabi", "-S", "-o", os.devnull,
                            str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]


VECTOR_EXP_CHECK = r"""
#include <cstdio>
int main() {
  // float: against exp in double, over the normal range in steps of about 1e-4; 0 below it, inf above
  double worst = 0;
  for (double x0 = -87.33; x0 < 88.72; x0 += 16e-4) {
    Lanes<float>::V x;
    for (int l = 0; l < 16; ++l) x[l] = (float)(x0 + l * 1e-4);
    const Lanes<float>::V y = vexp<float>(x);
    for (int l = 0; l < 16; ++l) {
      const double exact = std::exp((double)x[l]);
      const double ulp = std::nextafter((float)exact, INFINITY) - (float)exact;
      worst = std::max(worst, std::fabs(y[l] - exact) / ulp);
    }
  }
  const Lanes<float>::V below = vexp<float>(lsplat<float>(-1e4f)), tiny = vexp<float>(lsplat<float>(-88.f));
  const Lanes<float>::V big = vexp<float>(lsplat<float>(89.f));
  const Lanes<double>::V d = vexp<double>(lsplat<double>(-1.25));
  std::printf("%.6f %g %g %g %d\n", worst, (double)below[3], (double)big[5], (double)tiny[7], d[2] == std::exp(-1.25));
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_vector_exp_within_float_rounding(tmp_path):
    """The per-site passes' vector exp (float lanes): within 1.5 ulp of exp (1.003 measured on
    2026-12-03, AMD EPYC with AVX-512) over the normal float range,
    0 below it (x < -87.34) and inf above (x > 88.72); the float64 lanes take std::exp."""
    source = tmp_path / "vexp.cpp"
    # the kernel's definitions up to its scheduling (templates only: the entry points' instantiations
    # would take most of a minute to compile)
    head = fused_source.SOURCE.split("// ---------------------------------------------------------------- scheduling")[0]
    source.write_text(head + "}  // namespace\n" + VECTOR_EXP_CHECK)
    build = subprocess.run(["g++", "-O2", "-march=native", "-std=c++17", "-fno-math-errno", "-Wno-psabi",
                            "-o", str(tmp_path / "vexp"), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    worst, below, above, tiny, double_exact = subprocess.run([str(tmp_path / "vexp")], capture_output=True,
                                                             text=True, check=True).stdout.split()
    assert float(worst) <= 1.5
    assert float(below) == 0.0 and float(tiny) == 0.0 and float(above) == float("inf")
    assert double_exact == "1"


def test_time_reversal_and_finite_difference():
    graph = GRAPHS["triangular"]()
    model = random_model(graph, time_reversal=True)
    spins = klmgraph.random_spins(graph, seed=3, dtype=torch.float64)
    nb = model.prepare(graph)
    e, b = model.fused_energy_and_field(spins, nb)
    e_eager, b_eager = eager_energy_and_field(model, graph, spins)
    torch.testing.assert_close(e, e_eager, rtol=1e-12, atol=0)
    torch.testing.assert_close(b, b_eager, rtol=0, atol=1e-12 * b_eager.abs().max().item())
    direction = torch.randn_like(spins)
    eps = 1e-5
    with torch.no_grad():
        slope = (model.energy(spins + eps * direction, nb) - model.energy(spins - eps * direction, nb)) / (2 * eps)
    torch.testing.assert_close(slope, -(b * direction).sum(), rtol=1e-6, atol=1e-8)


def test_threads_give_identical_numbers():
    """Every site is computed by one thread in a fixed order: bit-identical for any thread count."""
    graph = klmgraph.triangular(12, 12, 1.0, 0.0, -0.85)
    model = ECNN.for_graph(graph)
    spins = klmgraph.random_spins(graph, batch=2, seed=4, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        e1, b1 = model.bind(graph).energy_and_field(spins)
        torch.set_num_threads(3)
        e3, b3 = model.bind(graph).energy_and_field(spins)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(e1, e3) and torch.equal(b1, b3)


def test_bound_thread_choice_reaches_the_kernel_and_keeps_the_numbers(monkeypatch):
    """bind(threads=k) runs the kernel with k threads whatever torch's count; "auto" (the
    default) falls back to 1 thread when a fake clock makes 2 threads slower, returns to 2 when
    they become faster, and every call gives the same numbers; torch's thread count is left as
    it was."""
    graph = klmgraph.triangular(8, 8, 1.0, 0.0, -0.85)
    model = ECNN.for_graph(graph)
    spins = klmgraph.random_spins(graph, seed=5, dtype=torch.float32)
    now, slow_two, counts, torch_counts = [0.0], [True], [], []
    run = fused._Call.run

    def timed_run(self, *args, **kwargs):
        counts.append(self.threads)
        torch_counts.append(torch.get_num_threads())
        now[0] += {1: 1.0, 2: 3.0 if slow_two[0] else 0.2}.get(self.threads, 0.0)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(fused._Call, "run", timed_run)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        e3, b3 = model.bind(graph, threads=3).energy_and_field(spins)
        assert counts == [3]
        torch.set_num_threads(2)
        bound = model.bind(graph)
        bound.threads = ThreadChoice("auto", probe_every=4, clock=lambda: now[0])
        results = [bound.energy_and_field(spins) for _ in range(12)]
        assert counts[1:10] == [2, 2, 1, 1, 2, 1, 1, 1, 2]  # warm-up, one each, probes every 4
        slow_two[0] = False
        results += [bound.energy_and_field(spins) for _ in range(12)]
        assert counts[-3:] == [2, 2, 2] and bound.threads.chosen() == 2
        assert set(torch_counts) == {1}  # torch's part beside the kernel on one thread...
        assert torch.get_num_threads() == 2  # ...and its count restored
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(e, e3) and torch.equal(b, b3) for e, b in results)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        model.bind(graph, threads=0)


def test_training_gradients_identical_for_any_thread_count():
    """Parameter gradients are summed over fixed groups of sites: bit-identical for any thread count."""
    graph = klmgraph.triangular(12, 12, 1.0, 0.0, -0.85)
    model = ECNN.for_graph(graph)
    spins = klmgraph.random_spins(graph, batch=2, seed=4, dtype=torch.float32)
    field_ref, energy_ref = torch.randn_like(spins), torch.randn(2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = loss_gradients(model, graph, spins, field_ref, energy_ref)
        torch.set_num_threads(3)
        three = loss_gradients(model, graph, spins, field_ref, energy_ref)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, three))


def test_weights_changed_in_place_are_seen():
    graph = GRAPHS["square"]()
    model = random_model(graph)
    spins = klmgraph.random_spins(graph, seed=5, dtype=torch.float64)
    bound = model.bind(graph)
    e1, _ = bound.energy_and_field(spins)
    with torch.no_grad():
        model.blocks[1].conv.weight.mul_(0.5)  # an optimiser step does the same
    e2, b2 = bound.energy_and_field(spins)
    e_eager, b_eager = eager_energy_and_field(model, graph, spins)
    assert not torch.equal(e1, e2)
    torch.testing.assert_close(e2, e_eager, rtol=1e-12, atol=0)


def test_fallbacks():
    irregular = irregular_graph()
    model = random_model(irregular)
    spins = klmgraph.random_spins(irregular, seed=6, dtype=torch.float64)
    assert model.fused_energy_and_field(spins, model.prepare(irregular)) is None  # repeated classes: scatter
    graph = GRAPHS["square"]()
    model = random_model(graph)
    spins = klmgraph.random_spins(graph, seed=6, dtype=torch.float64)
    model.fused = False
    assert model.fused_energy_and_field(spins, model.prepare(graph)) is None
    model.fused = True
    # torch.func transforms (a committee's vmap, per-sample gradients) see the eager path
    stacked = torch.stack([spins, -spins])
    seen = []
    torch.func.vmap(lambda s: seen.append(model.fused_energy_and_field(s, model.prepare(graph))) or s.sum())(stacked)
    assert seen == [None]


def test_no_compiler_warns_once_and_uses_eager(monkeypatch):
    graph = GRAPHS["square"]()
    model = random_model(graph)
    spins = klmgraph.random_spins(graph, seed=7, dtype=torch.float64)
    expected = model.bind(graph).energy_and_field(spins)
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="eager"):
        got = model.bind(graph).energy_and_field(spins)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.bind(graph).energy_and_field(spins)  # no second warning
    torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-12)


def test_without_wide_vectors_the_eager_path_runs_unless_asked(monkeypatch):
    """A build without 64-byte vectors (no AVX-512) takes the eager path, with a warning that says
    why; KLMGRAPH_KERNEL=always takes the kernel anyway. This machine's build reports its width."""
    assert fused._vector_bytes() in (16, 32, 64)
    graph = GRAPHS["square"]()
    model = random_model(graph)
    spins = klmgraph.random_spins(graph, seed=8, dtype=torch.float64)
    neighbours = model.prepare(graph)
    monkeypatch.setattr(fused, "_vector_bytes", lambda: 32)
    assert model.fused_energy_and_field(spins, neighbours) is not None  # KLMGRAPH_KERNEL=always (conftest)
    monkeypatch.delenv("KLMGRAPH_KERNEL")
    with pytest.warns(UserWarning, match="no AVX-512.*32-byte here.*KLMGRAPH_KERNEL=always"):
        assert model.fused_energy_and_field(spins, neighbours) is None
    with pytest.warns(UserWarning, match="no AVX-512"):
        assert not model.kernel_applies(spins, neighbours)
    monkeypatch.setattr(fused, "_vector_bytes", lambda: 64)
    assert model.fused_energy_and_field(spins, neighbours) is not None


# ---------------------------------------------------------------- training through the kernel
def loss_gradients(model, graph, spins, field_ref, energy_ref, spins_grad=True):
    """The trainer's path (model.energy + compute_field(training=True)), energy + force loss:
    energy, field, the parameters' gradients and the spins' gradient (or, with ``spins_grad``
    False, the parameters' alone, as the trainer asks: loss.backward(inputs=parameters))."""
    model.zero_grad()
    s = spins.detach().clone().requires_grad_(True)
    energy = model.energy(s, model.prepare(graph))
    field = compute_field(energy, s, training=True)
    loss = ((field - field_ref) ** 2).mean() + ((energy - energy_ref) ** 2).mean()
    if not spins_grad:
        loss.backward(inputs=list(model.parameters()))
        return [energy.detach(), field.detach()] + [p.grad.clone() for p in model.parameters()]
    loss.backward()
    return [energy.detach(), field.detach(), s.grad] + [p.grad.clone() for p in model.parameters()]


def assert_same_gradients(got_all, want_all):
    """Every tensor of ``got_all`` equals its ``want_all`` one to 1e-10 of its largest entry (nonzero)."""
    for got, want in zip(got_all, want_all, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10 * want.abs().max().item())


def count_kernel_calls(monkeypatch):
    calls = []
    run = fused._Call.run
    monkeypatch.setattr(fused._Call, "run", lambda self, *a, **k: calls.append(k.get("mode", 0)) or run(self, *a, **k))
    return calls


@pytest.mark.parametrize("graph_name", list(GRAPHS))
@pytest.mark.parametrize("time_reversal", [False, True])
def test_training_gradients_equal_eager_float64(graph_name, time_reversal, monkeypatch):
    graph = GRAPHS[graph_name]()
    model = random_model(graph, time_reversal=time_reversal)
    spins = klmgraph.random_spins(graph, batch=2, seed=1, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    field_ref = torch.randn(spins.shape, dtype=torch.float64, generator=gen)
    energy_ref = torch.randn(2, dtype=torch.float64, generator=gen)
    calls = count_kernel_calls(monkeypatch)
    kernel = loss_gradients(model, graph, spins, field_ref, energy_ref)
    # forward with dE/dx (the field scales it) keeping its values, force loss (dual numbers on them:
    # Hessian products, and the first derivatives per configuration that the energy loss then uses
    # without a call of its own)
    assert calls == [fused._GRAD_X | fused._SAVE,
                     fused._GRAD_P | fused._GRAD_X | fused._PER_CONFIG | fused._REUSE]
    model.fused = False
    eager = loss_gradients(model, graph, spins, field_ref, energy_ref)
    assert len(calls) == 2  # the eager path does not touch the kernel
    assert_same_gradients(kernel, eager)


@pytest.mark.parametrize("graph_name", ["triangular", "square-open"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("spins_grad", [True, False])
def test_training_gradients_of_the_block_paths_equal_eager_float64(graph_name, batch, spins_grad, monkeypatch):
    """channels = 8 gives the mixing widths (Q = 16, 32, 24) that the blocked mixing-weights
    gradient, the dual first-layer transposed mixing and the real block kernels on the
    derivatives (_REUSE: the dual call takes the real call's values) take (channels = 3 falls
    back to the per-site paths); float64, so a wrong sum shows far above rounding. Without the
    spins' gradient (the trainer's loss.backward(inputs=parameters)) the dual call leaves out the
    second derivatives to the inputs and still leaves the per-configuration first derivatives
    that the energy loss uses: two kernel calls in all, either way."""
    graph = GRAPHS[graph_name]()
    model = random_model(graph, channels=8)
    spins = klmgraph.random_spins(graph, batch=batch, seed=3, dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    field_ref = torch.randn(spins.shape, dtype=torch.float64, generator=gen)
    energy_ref = torch.randn(batch, dtype=torch.float64, generator=gen)
    calls = count_kernel_calls(monkeypatch)
    kernel = loss_gradients(model, graph, spins, field_ref, energy_ref, spins_grad)
    dual = fused._GRAD_P | fused._PER_CONFIG | fused._REUSE | (fused._GRAD_X if spins_grad else 0)
    assert calls == [fused._GRAD_X | fused._SAVE, dual]
    model.fused = False
    assert_same_gradients(kernel, loss_gradients(model, graph, spins, field_ref, energy_ref, spins_grad))


@pytest.mark.parametrize("pool", [1, 2])
def test_overwritten_saved_values_are_not_reused(pool, monkeypatch):
    """Two forwards on one graph before the backward: with room for one real call's values (the
    pool of a graph holds fused._SAVED_MAX), the second takes over the buffer of the first, whose
    dual-number call then computes its own values (no _REUSE); with room for two, both reuse. The
    gradients equal the eager path's either way."""
    monkeypatch.setattr(fused, "_SAVED_MAX", pool)
    graph = GRAPHS["triangular"]()
    model = random_model(graph, channels=8)
    prepared = model.prepare(graph)
    spins = [klmgraph.random_spins(graph, batch=2, seed=seed, dtype=torch.float64) for seed in (7, 8)]
    field_ref = torch.randn(spins[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    calls = count_kernel_calls(monkeypatch)
    grads = []
    for fused_path in (True, False):
        model.fused = fused_path
        model.zero_grad()
        loss = 0
        for s in spins:
            s = s.clone().requires_grad_(True)
            energy = model.energy(s, prepared)
            loss = loss + ((compute_field(energy, s, training=True) - field_ref) ** 2).mean() + energy.pow(2).mean()
        loss.backward(inputs=list(model.parameters()))
        grads.append([p.grad.clone() for p in model.parameters()])
    dual = [mode for mode in calls if mode & fused._GRAD_P]
    assert len(calls) == 4 and sorted(mode & fused._REUSE for mode in dual) == [0 if pool == 1 else fused._REUSE,
                                                                              fused._REUSE]
    assert_same_gradients(*grads)


@pytest.mark.parametrize("spins_grad", [True, False])
def test_training_gradients_are_identical_for_1_and_3_threads(spins_grad):
    """The trainer's step through the kernel (saved values reused, parameter-gradient groups)
    gives bit-identical energies, fields and gradients with 1 and 3 threads."""
    graph = GRAPHS["triangular"]()
    model = random_model(graph, channels=8)
    spins = klmgraph.random_spins(graph, batch=3, seed=11, dtype=torch.float64)
    field_ref, energy_ref = torch.randn_like(spins), torch.randn(3, dtype=torch.float64)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            results.append(loss_gradients(model, graph, spins, field_ref, energy_ref, spins_grad))
    finally:
        torch.set_num_threads(threads)
    for one, three in zip(*results, strict=True):
        assert torch.equal(one, three)


@pytest.mark.parametrize("pool", [0, 8])
def test_the_dual_call_reads_the_saved_values(pool, monkeypatch):
    """The values a real call keeps are what its dual call uses: spoiled (NaN) between the
    forward and the backward, they spoil the parameters' gradients; with no room to keep them
    (pool 0: the dual call computes its own) the gradients stay finite."""
    monkeypatch.setattr(fused, "_SAVED_MAX", max(pool, 1))
    graph = GRAPHS["triangular"]()
    model = random_model(graph, channels=8)
    prepared = model.prepare(graph)
    s = klmgraph.random_spins(graph, batch=2, seed=4, dtype=torch.float64).requires_grad_(True)
    energy = model.energy(s, prepared)
    field = compute_field(energy, s, training=True)
    for entry in prepared.__dict__["_fused_saved"]:
        entry[0].fill_(float("nan"))
        if pool == 0:
            entry[1] = None  # taken over: as if a later call had needed the room
    model.zero_grad()
    field.pow(2).mean().backward(inputs=list(model.parameters()))
    finite = all(bool(p.grad.isfinite().all()) for p in model.parameters() if p.grad is not None)
    assert finite == (pool == 0)


def test_one_call_two_forwards_each_backward_takes_its_own_values():
    """One kernel call description running two forwards (as gradcheck does) before the backward
    of the first: that backward must use the first forward's values, never the second's (a
    SavedToken per forward), and its gradients equal those of a call that ran it alone."""
    graph = GRAPHS["triangular"]()
    model = random_model(graph, channels=8)
    neighbours = model.prepare(graph)
    meta, params, eps2 = fused._pack(model, torch.float64)
    spins = [klmgraph.random_spins(graph, batch=2, seed=seed, dtype=torch.float64) for seed in (1, 2)]
    field_ref = torch.randn(spins[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def first_loss_gradient(two_forwards: bool):
        p = params.detach().clone().requires_grad_(True)
        call = fused._Call(fused._library(), meta, eps2, neighbours, spins[0].shape[:-1])
        energies = []
        for s in spins[:2 if two_forwards else 1]:
            s = s.clone().requires_grad_(True)
            x0, filt = fused._inputs(model, s)
            energies.append((s, fused._SiteEnergies.apply(p, x0, filt, call).sum(-1)))
        s, energy = energies[0]
        field = compute_field(energy, s, training=True)
        (grad,) = torch.autograd.grad(((field - field_ref) ** 2).mean(), p)
        return grad

    alone, second_between = first_loss_gradient(False), first_loss_gradient(True)
    torch.testing.assert_close(second_between, alone, rtol=0, atol=1e-12 * alone.abs().max().item())


def test_saved_values_are_freed_when_no_dual_call_follows():
    """An evaluation (the field without create_graph) and a forward whose graph is dropped leave
    no buffer of the graph's pool owned: the next real calls find them free."""
    graph = GRAPHS["triangular"]()
    model = random_model(graph, channels=8)
    prepared = model.prepare(graph)
    for seed in range(3):
        s = klmgraph.random_spins(graph, batch=2, seed=seed, dtype=torch.float64).requires_grad_(True)
        compute_field(model.energy(s, prepared), s, training=False)
    s = klmgraph.random_spins(graph, batch=2, seed=9, dtype=torch.float64).requires_grad_(True)
    energy = model.energy(s, prepared)
    pool = prepared.__dict__["_fused_saved"]
    assert sum(fused._owner(e) is not None for e in pool) == 1  # the live forward's
    del energy
    assert len(pool) >= 1 and all(fused._owner(e) is None for e in pool)


@pytest.mark.parametrize("graph_name", list(GRAPHS))
def test_training_gradients_published_size_float32(graph_name):
    """Published hyper-parameters in float32: the dual-number call's block kernels (mixing and
    transposed mixing of (value, derivative) pairs), with missing neighbours on the open lattice."""
    graph = GRAPHS[graph_name]()
    model = ECNN.for_graph(graph)
    spins = klmgraph.random_spins(graph, batch=2, seed=3, dtype=torch.float32)
    field_ref, energy_ref = torch.randn_like(spins), torch.randn(2)
    kernel = loss_gradients(model, graph, spins, field_ref, energy_ref)
    model.fused = False
    eager = loss_gradients(model, graph, spins, field_ref, energy_ref)
    for got, want in zip(kernel, eager):
        assert (got - want).abs().max() <= 2e-5 * want.abs().max()


def test_site_energy_loss_takes_its_own_call():
    """A loss on the site energies (a seed that differs between sites) cannot use the force
    loss's first derivatives: its own kernel call, same gradients as eager."""
    graph = GRAPHS["kagome"]()
    model = random_model(graph)
    spins = klmgraph.random_spins(graph, batch=2, seed=6, dtype=torch.float64)
    weights = torch.rand(spins.shape[:-1], dtype=torch.float64)
    grads = []
    for fused_path in (True, False):
        model.fused = fused_path
        model.zero_grad()
        s = spins.clone().requires_grad_(True)
        e = model.site_energies(s, model.prepare(graph))
        field = compute_field(e.sum(-1), s, training=True)
        ((e * weights).sum() + field.pow(2).sum()).backward()
        grads.append([s.grad] + [p.grad.clone() for p in model.parameters()])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10 * want.abs().max().item())


def test_gradcheck_and_gradgradcheck_of_the_kernel():
    """The site energies as a function of (flat parameters, x0, filter): first and second
    derivatives against finite differences, every input at once."""
    graph = klmgraph.square(3, 3)
    model = random_model(graph, channels=2, num_interactions=2, readout_channels=2)
    spins = klmgraph.random_spins(graph, seed=4, dtype=torch.float64)
    neighbours = model.prepare(graph)
    meta, params, eps2 = fused._pack(model, torch.float64)
    x0, filt = fused._inputs(model, spins)
    call = fused._Call(fused._library(), meta, eps2, neighbours, x0.shape[:-1])
    inputs = tuple(t.detach().clone().requires_grad_(True) for t in (params, x0, filt))

    def site_energies(p, x, f):
        return fused._SiteEnergies.apply(p, x, f, call)

    assert torch.autograd.gradcheck(site_energies, inputs)
    assert torch.autograd.gradgradcheck(site_energies, inputs)


def test_third_derivative_raises():
    graph = GRAPHS["square"]()
    model = random_model(graph)
    s = klmgraph.random_spins(graph, seed=5, dtype=torch.float64).requires_grad_(True)
    field = compute_field(model.energy(s, model.prepare(graph)), s, training=True)
    (g,) = torch.autograd.grad(field.pow(2).sum(), s, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives.*model.fused = False"):
        torch.autograd.grad(g.sum(), s)
