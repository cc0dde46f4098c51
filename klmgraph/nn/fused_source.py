"""C++ source of the fused ECNN energy + field kernel (compiled at first use by
:mod:`klmgraph.nn.native`; the Python side is :mod:`klmgraph.nn.fused`).

One template, four instantiations: float and double, and Dual<float>, Dual<double> (every
input, parameters included, carries a direction; the results come back with their derivative
along it: forward-over-reverse for the second derivatives of training). A call computes the
site energies and, by its mode, the seed-weighted gradients with respect to the input features
(x0 and the filter Y) and to the flat parameters.

Why one kernel for the whole network: the eager fast path costs a few hundred small torch ops
per call and writes a gathered (N, 2l+1, K x mul) buffer per layer (DESIGN.md section 3). Here
every pass reads each site's K neighbours straight from the previous pass's per-site output
(in cache), mixes channels with register-blocked multiply-adds over blocks of 1-8 sites (each
row of mixing weights loaded once for the block, 64-byte vectors; the backward's transposed
mixing runs the same micro-kernel on transposed weights), applies the Clebsch-Gordan
product with the centre filter, the residual and the norm activation to blocks of 16 (float) or
8 (double) sites at once, one site per vector lane (the block's rows transposed), and writes one
row per site. A site's sums run in the same order wherever its block starts, so results do not
depend on the number of threads. The backward (dE/dx0 and dE/dY for B = -dE/dS) is hand-written: the convolution is
bilinear, so its input gradient is the same gather-mix with the transposed weights read through
the inverse neighbour table, and its weight gradient the outer product of the gathered inputs
with dE/dz (a last pass over sites, summed per fixed group of tiles in its own buffer, as a
matrix product over blocks of 32 sites).

Passes (L convolutions, the last one the output convolution followed by the scalar read-out):
  F_0 .. F_{L-2}: z_l = mix(gather(x_l)), h_l = CG(z_l, Y) [+ x_l], x_{l+1} = act(h_l)
  F_{L-1}:        the output convolution, the read-out MLP forward and backward (site energy
                  and dE/dh), and the convolution's per-site backward (dE/dz, dE/dY)
  P_l (l = L-2 .. -1): dE/dx_{l+1} = mix^T(gather^-1(dE/dz_{l+1})) [+ residual], then z_l (kept
                  by the forward, or recomputed from the stored x_l) and h_l, and the activation's
                  and convolution's per-site backward of layer l (P_-1 writes dE/dx_0 only).
An energy + field call keeps the layers' inputs x_l and the z_l of the last two hidden layers (in
the dE/dz buffers before the backward needs them; calls that need the parameter gradient keep every
layer's z, dE/dz and dE/dh: see Layout); dE/dz alternates between two buffers (Layout), so passes
are separated by a barrier; inside a pass, threads take tiles of sites from
their own range, then from the others' (a thread the OS deschedules holds up one tile, not a
fixed half).

Layouts: features per site in e3nn order (irrep blocks, mul-major: x[off + u * d + i]);
z_l per site and input irrep a: [i][q] (d_a x Q_a), Q_a the output channels of all paths
leaving a; mixing weights W_a: (K * mul_a, Q_a) rows k * mul_a + u; transposed copies
WT_a: (K * Q_a, mul_a), made by the kernel at each call after the caller's parameters (so
that every entry of the flat parameter vector is an independent variable), and for the real
block kernels 64-byte-aligned copies of W_a and transposed copies interleaved by groups of
8 bytes of inputs (mixt_tile), and for the dual-number block mixing the weights' values repeated
twice (mix_tile_dual: a dual feature's value and derivative share a multiply-add); one coefficient
per nonzero Clebsch-Gordan entry; the read-out matrices (out, in) and biases.
"""

SOURCE = r"""
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

typedef int64_t i64;
template <typename T> using Buf = std::unique_ptr<T[]>;
template <typename T> Buf<T> alloc(i64 n) { return Buf<T>(new T[n]); }  // uninitialised: every entry is written

namespace {

// ---------------------------------------------------------------- dual numbers
// a + eps b with eps^2 = 0: the kernel instantiated with Dual<R> carries a directional derivative
// through every operation (forward mode). Running the reverse (the gradients) in dual numbers is
// forward-over-reverse: the eps parts of the gradients are Hessian-vector products (training).
template <typename R> struct Dual {
  R a, b;
  constexpr Dual(R x = 0, R y = 0) : a(x), b(y) {}
  Dual& operator+=(const Dual& o) { a += o.a; b += o.b; return *this; }
  Dual& operator-=(const Dual& o) { a -= o.a; b -= o.b; return *this; }
  Dual& operator*=(const Dual& o) { b = b * o.a + a * o.b; a *= o.a; return *this; }
};
template <typename R> inline Dual<R> operator+(Dual<R> x, const Dual<R>& y) { return x += y; }
template <typename R> inline Dual<R> operator-(Dual<R> x, const Dual<R>& y) { return x -= y; }
template <typename R> inline Dual<R> operator-(const Dual<R>& x) { return Dual<R>(-x.a, -x.b); }
template <typename R> inline Dual<R> operator*(const Dual<R>& x, const Dual<R>& y) {
  return Dual<R>(x.a * y.a, x.b * y.a + x.a * y.b);
}
template <typename R> inline Dual<R> operator/(const Dual<R>& x, const Dual<R>& y) {
  const R q = x.a / y.a;
  return Dual<R>(q, (x.b - q * y.b) / y.a);
}
template <typename R> inline bool operator<(const Dual<R>& x, const Dual<R>& y) { return x.a < y.a; }
template <typename R> inline Dual<R> ksqrt(const Dual<R>& x) {
  const R r = std::sqrt(x.a);
  return Dual<R>(r, x.b / (R(2) * r));
}
template <typename R> inline Dual<R> kexp(const Dual<R>& x) {
  const R e = std::exp(x.a);
  return Dual<R>(e, e * x.b);
}
inline float ksqrt(float x) { return std::sqrt(x); }
inline double ksqrt(double x) { return std::sqrt(x); }
inline float kexp(float x) { return std::exp(x); }
inline double kexp(double x) { return std::exp(x); }

struct InIrrep { i64 mul, d, off, Q, w, wt, z; };
struct Piece { i64 a, col, d; };
struct OutIrrep { i64 mul, d, off, I, cg; std::vector<Piece> pieces; };
// one nonzero Clebsch-Gordan coefficient: out_c[w][k] += coef * Y[j] * z[zb + w]
struct CGEntry { i64 c, zb, j, k, p; };
// the entries stably sorted by a key, and where each key's run starts (starts.back() = size):
// a run sums into one register, stored once (a read-modify-write of memory per entry would chain
// each entry behind the store of the one before)
struct CGRuns {
  std::vector<CGEntry> e;
  std::vector<i64> starts;
  template <typename Key> CGRuns(const std::vector<CGEntry>& cg, Key key) : e(cg) {
    std::stable_sort(e.begin(), e.end(), [&](const CGEntry& a, const CGEntry& b) { return key(a) < key(b); });
    for (size_t x = 0; x < e.size(); ++x)
      if (x == 0 || key(e[x]) != key(e[x - 1])) starts.push_back((i64)x);
    starts.push_back((i64)e.size());
  }
  CGRuns() = default;
};
struct Layer {
  i64 din, dout, residual, act, zsize;
  std::vector<InIrrep> in;
  std::vector<OutIrrep> out;
  std::vector<CGEntry> cg;
  CGRuns by_out, by_z, by_j;  // runs by output row (c, k), by z row zb, by filter component j
};
struct Linear { i64 nin, nout, w, b; };
struct Net {
  i64 L, K, J;
  i64 nparams;  // the caller's parameters; the transposed mixing copies WT follow them (built per call)
  i64 nwt = 0;
  std::vector<Layer> layers;
  std::vector<Linear> mlp;
};

Net parse(const i64* m) {
  Net net;
  i64 p = 0;
  net.L = m[p++]; net.K = m[p++]; net.J = m[p++];
  i64 nmlp = m[p++];
  net.nparams = m[p++];
  for (i64 l = 0; l < net.L; ++l) {
    Layer ly;
    ly.din = m[p++]; ly.dout = m[p++]; ly.residual = m[p++]; ly.act = m[p++];
    ly.zsize = (m[p++] + 15) / 16 * 16;  // z rows padded to 64 bytes (float): aligned vector loads
    i64 nin = m[p++], nout = m[p++];
    for (i64 a = 0; a < nin; ++a) {
      InIrrep ir;
      ir.mul = m[p++]; ir.d = m[p++]; ir.off = m[p++]; ir.Q = m[p++]; ir.w = m[p++]; ir.z = m[p++];
      ir.wt = net.nparams + net.nwt;
      net.nwt += net.K * ir.mul * ir.Q;
      ly.in.push_back(ir);
    }
    for (i64 c = 0; c < nout; ++c) {
      OutIrrep o;
      o.mul = m[p++]; o.d = m[p++]; o.off = m[p++]; o.I = m[p++]; o.cg = m[p++];
      i64 np = m[p++];
      for (i64 k = 0; k < np; ++k) { Piece pc; pc.a = m[p++]; pc.col = m[p++]; pc.d = m[p++]; o.pieces.push_back(pc); }
      ly.out.push_back(o);
    }
    i64 nnz = m[p++];
    for (i64 e = 0; e < nnz; ++e) {
      CGEntry ce; ce.c = m[p++]; ce.zb = m[p++]; ce.j = m[p++]; ce.k = m[p++]; ce.p = m[p++];
      ly.cg.push_back(ce);
    }
    ly.by_out = CGRuns(ly.cg, [](const CGEntry& e) { return e.c * 1024 + e.k; });
    ly.by_z = CGRuns(ly.cg, [](const CGEntry& e) { return e.zb; });
    ly.by_j = CGRuns(ly.cg, [](const CGEntry& e) { return e.j; });
    net.layers.push_back(ly);
  }
  for (i64 k = 0; k < nmlp; ++k) {
    Linear li; li.nin = m[p++]; li.nout = m[p++]; li.w = m[p++]; li.b = m[p++];
    net.mlp.push_back(li);
  }
  return net;
}

// ---------------------------------------------------------------- gather-mix micro-kernels
// out[i][q] = sum_k sum_u src[nb_k][off + u * ustride + i * istride] * W[(k * U + u) * Q + q]
// (forward: U = mul, ustride = d, istride = 1; transposed: U = Q_fwd, ustride = 1, istride = Q_fwd)
template <typename T> struct Vec8 { typedef T type __attribute__((vector_size(8 * sizeof(T)))); };

template <typename T> inline typename Vec8<T>::type splat(T x) {
  typename Vec8<T>::type v = {x, x, x, x, x, x, x, x};
  return v;
}

// sum_u a[u] b[u] with 8-lane partial sums (a float reduction is not vectorised without -ffast-math)
template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, i64 n) {
  if constexpr (!std::is_floating_point<T>::value) {
    T s = T(0);
    for (i64 u = 0; u < n; ++u) s += a[u] * b[u];
    return s;
  } else {
  typedef typename Vec8<T>::type V;
  V acc = V{};
  i64 u = 0;
  for (; u + 8 <= n; u += 8) {
    V x, y;
    __builtin_memcpy(&x, a + u, sizeof(V));
    __builtin_memcpy(&y, b + u, sizeof(V));
    acc += x * y;
  }
  T s = 0;
  for (int e = 0; e < 8; ++e) s += acc[e];
  for (; u < n; ++u) s += a[u] * b[u];
  return s;
  }
}

template <typename T>
inline void mix_generic(const T* src, i64 rowlen, i64 off, i64 istride, i64 ustride, i64 U, const i64* nbr,
                        i64 base, i64 K, i64 N, const T* W, T* out, i64 ostride_i, i64 ostride_q, i64 D, i64 Q,
                        T* scratch) {
  for (i64 j = 0; j < D * Q; ++j) scratch[j] = T(0);
  for (i64 k = 0; k < K; ++k) {
    i64 s = nbr[k];
    if (s == N) continue;
    const T* xs = src + (base + s) * rowlen + off;
    const T* wk = W + k * U * Q;
    for (i64 u = 0; u < U; ++u) {
      const T* wr = wk + u * Q;
      for (i64 i = 0; i < D; ++i) {
        T xv = xs[u * ustride + i * istride];
        T* acc = scratch + i * Q;
        for (i64 q = 0; q < Q; ++q) acc[q] += xv * wr[q];
      }
    }
  }
  for (i64 i = 0; i < D; ++i)
    for (i64 q = 0; q < Q; ++q) out[i * ostride_i + q * ostride_q] = scratch[i * Q + q];
}

template <typename T>
inline void mix(const T* src, i64 rowlen, i64 off, i64 istride, i64 ustride, i64 U, const i64* nbr, i64 base,
                i64 K, i64 N, const T* W, T* out, i64 ostride_i, i64 ostride_q, i64 D, i64 Q, T* scratch) {
  if (Q == 1 && ustride == 1) {  // one output channel (mul = 1 transposed): dot products over u
    for (i64 i = 0; i < D; ++i) {
      T acc = T(0);
      for (i64 k = 0; k < K; ++k) {
        i64 s = nbr[k];
        if (s == N) continue;
        acc += dot<T>(src + (base + s) * rowlen + off + i * istride, W + k * U, U);
      }
      out[i * ostride_i] = acc;
    }
    return;
  }
  mix_generic<T>(src, rowlen, off, istride, ustride, U, nbr, base, K, N, W, out, ostride_i, ostride_q, D, Q,
                 scratch);
}

// ---------------------------------------------------------------- multi-site (tile) micro-kernels
// Mixing one site at a time would load one W row (k, u) for the D components of that site: for
// scalar irreps one multiply-add per load. Here S sites of a tile share each W row load (S x D x NV
// accumulators), in the machine's widest vectors (64 bytes: 16 floats, 8 doubles; 32 bytes for
// rows shorter than that). Where Q is not a multiple of the width, the row's last vector is
// loaded ending at its last entry (overlapping the one before; the lanes counted twice are
// dropped or masked): no partial loads, which would go through memory. A missing neighbour reads
// a row of zeros (adds exact zeros) instead of being skipped, so that the sites of a block run
// the same instructions. Each site's sum runs in the same order whatever its place in a block,
// and a short block (the tile's end) repeats its last site into a dummy output: results do not
// depend on where tiles start, hence not on the number of threads.
// Keeps a vector in a register: without it the compiler folds the load into every multiply-add
// that uses the vector (one load per use; the block kernels would be load-bound again).
// Only a vector that fits one register can be pinned: with AVX2 alone a 64-byte vector is two
// ymm registers and the constraint would not compile.
template <typename V>
inline void klm_reg(V& x) {
#if defined(__AVX512F__)
  asm("" : "+v"(x));
#elif defined(__AVX__)
  if constexpr (sizeof(V) <= 32) asm("" : "+x"(x));
#else
  (void)x;
#endif
}
#define KLM_REG(x) klm_reg(x)

// the 8 bytes at p repeated over a 64-byte vector (a bit copy, no arithmetic: one broadcast load;
// a 16-byte group would halve the loads, but its broadcast runs at a third of the speed on this
// Zen 5 core: 60-75 against 150-185 GFLOP/s in isolation)
template <typename V>
inline V repeat8(const void* p) {
  static_assert(sizeof(V) == 64, "a 64-byte vector");
  double word;
  __builtin_memcpy(&word, p, 8);
  const typename Vec8<double>::type b = splat<double>(word);
  V x;
  __builtin_memcpy(&x, &b, 64);
  return x;
}

template <typename T, int Q> struct RowVec {
  static constexpr int B = Q * (int)sizeof(T) >= 64 ? 64 : 32;  // bytes per vector
  static constexpr int VL = B / (int)sizeof(T), NV = (Q + VL - 1) / VL;
  static constexpr int DUP = NV * VL - Q;  // lanes of the last vector that repeat the one before
  typedef T type __attribute__((vector_size(B)));
  // the v-th vector of a row of Q entries (the last one ends at the row's end)
  static inline type load(const T* row, int v) {
    type x;
    __builtin_memcpy(&x, row + (v + 1 < NV ? VL * v : Q - VL), sizeof(type));
    return x;
  }
};

// Prefetches the row segments the block reads for neighbour class k + KLM_AHEAD: the rows are
// scattered over the lattice (the hardware prefetcher cannot guess them) and a miss costs more than
// the multiply-adds of one class.
constexpr i64 KLM_AHEAD = 2;
template <typename T, int S>
inline void prefetch_rows(const T* src, i64 rowlen, i64 off, const i64* const* nb, const i64* base, i64 k, i64 K,
                          i64 N, i64 len) {
  if (k + KLM_AHEAD >= K) return;
  for (int s = 0; s < S; ++s) {
    const i64 j = nb[s][k + KLM_AHEAD];
    if (j == N) continue;
    const char* p = (const char*)(src + (base[s] + j) * rowlen + off);
    for (i64 b = 0; b < len * (i64)sizeof(T); b += 64) __builtin_prefetch(p + b, 0, 3);
  }
}

// the block's shape for D components and Q outputs: accumulator copies C (u modulo C, enough
// independent chains to hide the multiply-add latency; a function of D and Q only, so that a
// site's summation order does not depend on the block), sites per block S (fit the registers)
template <typename T, int D, int Q, int SMAX = 4> struct MixShape {
  static constexpr int NV = RowVec<T, Q>::NV, C = D * NV >= 3 ? 1 : 2;
  static constexpr int S0 = 24 / (D * NV * C), S = S0 < 1 ? 1 : S0 > SMAX ? SMAX : S0;
};
// at most this many sites per block of the transposed mixing (its D = 1 blocks would otherwise keep
// 8 accumulators: a weight load per 4 multiply-adds)
constexpr int KLM_SMAX_T = 8;

// out_s[i * ostride_i + q * ostride_q] = sum_k sum_u x_s[nb_k][off + u * ustride + i * istride] W[(k * U + u) * Q + q]
// for the S sites g[s] (x_s the rows of g[s]'s configuration, nb_k its neighbour table row).
// P > 1 (the transposed mixing of floats, Q = 8 outputs): the inputs go in groups of P = 2
// consecutive ones (ustride 1), a group broadcast to every lane pair (with P = 1 the 8 outputs
// would fill half a 64-byte vector), W interleaved: row k * U / P + group, lane q * P + p for
// the input group * P + p; out[q] is the sum of the P lanes of q (in the order p = 0, 1, ...).
// SPLIT (dual numbers, P = 2): the P lanes of output q are the P parts of one input read as a
// group (value, derivative), mixed with W's entries repeated P times (row k * U + u, lane q * P + p)
// and written apart, to out[... + q * ostride_q + p] (the strides in reals).
// SMAX: the most sites per block.
template <typename T, int D, int Q, int P = 1, int SMAX = 4, bool SPLIT = false>
inline void mix_block(const T* __restrict src, i64 rowlen, i64 off, i64 istride, i64 ustride, i64 U,
                      const i64* __restrict table, const i64* g, i64 K, i64 N, const T* __restrict zero,
                      const T* __restrict W, T* const* out, i64 ostride_i, i64 ostride_q) {
  constexpr int QP = Q * P;
  typedef MixShape<T, D, QP, SMAX> Sh;
  typedef RowVec<T, QP> RV;
  typedef typename RV::type V;
  constexpr int S = Sh::S, NV = RV::NV, C = Sh::C, VL = RV::VL, DUP = RV::DUP;
  static_assert(P == 1 || (P * sizeof(T) == 8 && VL * sizeof(T) == 64 && DUP == 0), "a group of P inputs is 8 bytes");
  V acc[C][S][D][NV];
  for (int c = 0; c < C; ++c)
    for (int s = 0; s < S; ++s)
      for (int i = 0; i < D; ++i)
        for (int v = 0; v < NV; ++v) acc[c][s][i][v] = V{};
  const i64* nb[S];
  i64 base[S];
  for (int s = 0; s < S; ++s) { const i64 n = g[s] % N; nb[s] = table + n * K; base[s] = g[s] - n; }
  auto step = [&](V (&a)[S][D][NV], const T* const* xs, i64 u, const T* wr) {
    V w[NV];
    for (int v = 0; v < NV; ++v) w[v] = RV::load(wr, v);
    for (int s = 0; s < S; ++s)
      for (int i = 0; i < D; ++i) {
        if constexpr (P == 1) {
          const T xv = xs[s][u * ustride + i * istride];
          for (int v = 0; v < NV; ++v) a[s][i][v] += xv * w[v];  // the scalar broadcast to the lanes
        } else {
          const V xv = repeat8<V>(xs[s] + (SPLIT ? u * ustride : u * P) + i * istride);
          for (int v = 0; v < NV; ++v) a[s][i][v] += xv * w[v];
        }
      }
  };
  const i64 UG = SPLIT ? U : U / P;
  for (i64 k = 0; k < K; ++k) {
    const T* xs[S];
    for (int s = 0; s < S; ++s) {
      const i64 j = nb[s][k];
      xs[s] = j == N ? zero : src + (base[s] + j) * rowlen + off;
    }
    prefetch_rows<T, S>(src, rowlen, off, nb, base, k, K, N, (U - 1) * ustride + (D - 1) * istride + 1);
    const T* wk = W + k * (SPLIT ? U * QP : U * Q);
    i64 u = 0;
    for (; u + C <= UG; u += C)
      for (int c = 0; c < C; ++c) step(acc[c], xs, u + c, wk + (u + c) * QP);
    for (; u < UG; ++u) step(acc[0], xs, u, wk + u * QP);
  }
  for (int c = 1; c < C; ++c)
    for (int s = 0; s < S; ++s)
      for (int i = 0; i < D; ++i)
        for (int v = 0; v < NV; ++v) acc[0][s][i][v] += acc[c][s][i][v];
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < D; ++i)
      for (int v = 0; v < NV; ++v) {
        const int first = v + 1 < NV ? VL * v : QP - VL;
        if constexpr (P == 1) {
          for (int e = v + 1 < NV ? 0 : DUP; e < VL; ++e) out[s][i * ostride_i + (first + e) * ostride_q] = acc[0][s][i][v][e];
        } else {
          if constexpr (SPLIT) {
            for (int e = 0; e < VL; ++e) out[s][i * ostride_i + ((first + e) / P) * ostride_q + e % P] = acc[0][s][i][v][e];
            continue;
          }
          for (int e = 0; e < VL; e += P) {
            T t = acc[0][s][i][v][e];
            for (int p = 1; p < P; ++p) t += acc[0][s][i][v][e + p];
            out[s][i * ostride_i + ((first + e) / P) * ostride_q] = t;
          }
        }
      }
}

// the sum of the lanes of a (a fixed tree: halves added first)
template <typename T, typename V>
inline T lane_total(const V& a) {
  typedef typename Vec8<T>::type V8;
  V8 b;
  if constexpr (sizeof(V) == sizeof(V8)) {
    __builtin_memcpy(&b, &a, sizeof(V8));
  } else {
    V8 lo, hi;
    __builtin_memcpy(&lo, &a, sizeof(V8));
    __builtin_memcpy(&hi, (const char*)&a + sizeof(V8), sizeof(V8));
    b = lo + hi;
  }
  return ((b[0] + b[4]) + (b[2] + b[6])) + ((b[1] + b[5]) + (b[3] + b[7]));
}

// sites per block of the single-output transposed mixing of D rows (D accumulators per site)
constexpr int mixt_sites(int D) { return 24 / D > 4 ? 4 : 24 / D; }

// Transposed mixing (the backward's dE/dx = mix^T(gather^-1(dE/dz)), W the forward's (K, Q)
// matrix) with one output: the first layer's single channel per irrep. The rank-1 form of
// mix_block would run one lane; here the sums over q run in vector lanes, S x D independent
// accumulators reduced once per site, W loads shared by the S sites (the lanes a row's last
// vector repeats are zeroed in x):
// out_s[i * ostride_i] = sum_k sum_q src[nb_k][off + i * Q + q] W[k * Q + q]
// PAIR (dual numbers as pairs of reals, W's entries repeated twice): the even lanes and the odd lanes
// are summed apart, to out_s[i * ostride_i] (values) and out_s[i * ostride_i + 1] (derivatives).
template <typename T, int D, int Q, bool PAIR = false>
inline void mixt_block(const T* __restrict src, i64 rowlen, i64 off, const i64* __restrict table, const i64* g,
                       i64 K, i64 N, const T* __restrict zero, const T* __restrict W, T* const* out,
                       i64 ostride_i) {
  typedef RowVec<T, Q> RV;
  typedef typename RV::type V;
  constexpr int NV = RV::NV, VL = RV::VL, DUP = RV::DUP, S = mixt_sites(D);
  V mask;
  for (int e = 0; e < VL; ++e) mask[e] = e < DUP ? T(0) : T(1);
  V acc[S][D];
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < D; ++i) acc[s][i] = V{};
  const i64* nb[S];
  i64 base[S];
  for (int s = 0; s < S; ++s) { const i64 n = g[s] % N; nb[s] = table + n * K; base[s] = g[s] - n; }
  for (i64 k = 0; k < K; ++k) {
    const T* xs[S];
    for (int s = 0; s < S; ++s) {
      const i64 j = nb[s][k];
      xs[s] = j == N ? zero : src + (base[s] + j) * rowlen + off;
    }
    prefetch_rows<T, S>(src, rowlen, off, nb, base, k, K, N, D * Q);
    const T* wk = W + k * Q;
    for (int v = 0; v < NV; ++v) {
      V w = RV::load(wk, v);
      KLM_REG(w);
      for (int s = 0; s < S; ++s)
        for (int i = 0; i < D; ++i) {
          V x = RV::load(xs[s] + i * Q, v);
          if (DUP > 0 && v + 1 == NV) x *= mask;
          acc[s][i] += x * w;
        }
    }
  }
  for (int s = 0; s < S; ++s)
    for (int i = 0; i < D; ++i) {
      if constexpr (PAIR) {
        static_assert(VL == 16 && DUP == 0, "pairs of floats in 64-byte vectors");
        typename Vec8<T>::type e, o;
        for (int m = 0; m < 8; ++m) { e[m] = acc[s][i][2 * m]; o[m] = acc[s][i][2 * m + 1]; }
        out[s][i * ostride_i] = lane_total<T>(e);
        out[s][i * ostride_i + 1] = lane_total<T>(o);
      } else {
        out[s][i * ostride_i] = lane_total<T, V>(acc[s][i]);
      }
    }
}

// Runs kern(g, out) over the sites [lo, hi) in blocks of S: g the S site indices, out their output
// rows (out0 + (g - lo) * orow); the last block is padded with its last site, writing to `dummy`.
template <typename T, int S, typename Kern>
inline void over_blocks(i64 lo, i64 hi, T* out0, i64 orow, T* dummy, Kern kern) {
  for (i64 g0 = lo; g0 < hi; g0 += S) {
    i64 g[S];
    T* out[S];
    for (int s = 0; s < S; ++s) {
      const bool in = g0 + s < hi;
      g[s] = in ? g0 + s : hi - 1;
      out[s] = in ? out0 + (g0 + s - lo) * orow : dummy;
    }
    kern(g, out);
  }
}

// mix_block over the sites [lo, hi) (output rows out0 + (g - lo) * orow); false where no block
// kernel has the shape (D, Q) or T is not a real type (the caller then mixes site by site)
template <typename T>
inline bool mix_tile(const T* src, i64 rowlen, i64 off, i64 istride, i64 ustride, i64 U, const i64* table, i64 lo,
                     i64 hi, i64 K, i64 N, const T* zero, const T* W, T* out0, i64 orow, T* dummy, i64 ostride_i,
                     i64 ostride_q, i64 D, i64 Q) {
  if constexpr (!std::is_floating_point<T>::value) {
    return false;
  } else {
#define KLM_MIXB(DD, QQ)                                                                                         \
  if (D == DD && Q == QQ) {                                                                                      \
    over_blocks<T, MixShape<T, DD, QQ>::S>(lo, hi, out0, orow, dummy, [&](const i64* g, T* const* out) {         \
      mix_block<T, DD, QQ>(src, rowlen, off, istride, ustride, U, table, g, K, N, zero, W, out, ostride_i,       \
                           ostride_q);                                                                           \
    });                                                                                                          \
    return true;                                                                                                 \
  }
    // the shapes of the published architecture (8 channels, l <= 2, filter l <= 1)
    KLM_MIXB(1, 8) KLM_MIXB(1, 16) KLM_MIXB(1, 24) KLM_MIXB(1, 32)
    KLM_MIXB(3, 8) KLM_MIXB(3, 16) KLM_MIXB(3, 24) KLM_MIXB(3, 32)
    KLM_MIXB(5, 8) KLM_MIXB(5, 16) KLM_MIXB(5, 24) KLM_MIXB(5, 32)
#undef KLM_MIXB
    return false;
  }
}

// The single-output transposed mixing (UO = 1: the first layer's single channel) over the sites
// [lo, hi), Q = 8, 16, 24 or 32 inputs per row, up to 5 rows at a time (mixt_block). PAIR (dual
// numbers as pairs of reals, see mixt_block): rowlen, off, orow and ostride_i in reals, Q in pairs.
template <typename T, bool PAIR = false>
inline void mixt1_tile(const T* src, i64 rowlen, i64 off, i64 Q, const i64* table, i64 lo, i64 hi, i64 K, i64 N,
                       const T* zero, const T* W, T* out0, i64 orow, T* dummy, i64 ostride_i, i64 D) {
  constexpr i64 F = PAIR ? 2 : 1;
  for (i64 i = 0; i < D;) {
    const i64 n = std::min<i64>(D - i, 5);
    const i64 o = off + i * Q * F;
    T* op = out0 + i * ostride_i;
#define KLM_MIXT(NN, QQ)                                                                                         \
  if (n == NN && Q == QQ)                                                                                        \
    over_blocks<T, mixt_sites(NN)>(lo, hi, op, orow, dummy, [&](const i64* g, T* const* out) {                  \
      mixt_block<T, NN, F * QQ, PAIR>(src, rowlen, o, table, g, K, N, zero, W, out, ostride_i);                  \
    });
    KLM_MIXT(1, 8) KLM_MIXT(1, 16) KLM_MIXT(1, 24) KLM_MIXT(1, 32)
    KLM_MIXT(2, 8) KLM_MIXT(2, 16) KLM_MIXT(2, 24) KLM_MIXT(2, 32)
    KLM_MIXT(3, 8) KLM_MIXT(3, 16) KLM_MIXT(3, 24) KLM_MIXT(3, 32)
    KLM_MIXT(4, 8) KLM_MIXT(4, 16) KLM_MIXT(4, 24) KLM_MIXT(4, 32)
    KLM_MIXT(5, 8) KLM_MIXT(5, 16) KLM_MIXT(5, 24) KLM_MIXT(5, 32)
#undef KLM_MIXT
    i += n;
  }
}

// The transposed mixing over the sites [lo, hi):
// out[i * ostride_i + u * ostride_u] = sum_k sum_q src[nb_k][off + i * Q + q] W[(k * UO + u) * Q + q].
// UO = 8 outputs (hidden layers): the forward's micro-kernel (mix_block) on the transposed
// weights WP, interleaved for groups of P = 8 / sizeof(T) inputs (8 outputs x P fill a 64-byte
// vector), up to 8 sites per block; UO = 1 (the first layer's single channel, up to 5 rows at a
// time): mixt_block on W. False where no block kernel has the shape or T is not a real type.
template <typename T>
inline bool mixt_tile(const T* src, i64 rowlen, i64 off, i64 Q, const i64* table, i64 lo, i64 hi, i64 K, i64 N,
                      const T* zero, const T* W, const T* WP, T* out0, i64 orow, T* dummy, i64 ostride_i,
                      i64 ostride_u, i64 D, i64 UO) {
  if constexpr (!std::is_floating_point<T>::value) {
    return false;
  } else {
    constexpr int P = 8 / sizeof(T);
    if (UO == 8) {
      if (Q % P != 0) return false;
#define KLM_MIXTP(DD)                                                                                            \
  if (D == DD) {                                                                                                 \
    over_blocks<T, MixShape<T, DD, 8 * P, KLM_SMAX_T>::S>(lo, hi, out0, orow, dummy,                            \
                                                          [&](const i64* g, T* const* out) {                     \
      mix_block<T, DD, 8, P, KLM_SMAX_T>(src, rowlen, off, Q, 1, Q, table, g, K, N, zero, WP, out, ostride_i,    \
                                         ostride_u);                                                             \
    });                                                                                                          \
    return true;                                                                                                 \
  }
      KLM_MIXTP(1) KLM_MIXTP(3) KLM_MIXTP(5)
#undef KLM_MIXTP
      return false;
    }
    if (Q % 8 != 0 || Q > 32 || Q == 0 || UO != 1) return false;
    mixt1_tile<T>(src, rowlen, off, Q, table, lo, hi, K, N, zero, W, out0, orow, dummy, ostride_i, D);
    return true;
  }
}

// ---------------------------------------------------------------- dual-number micro-kernels
template <typename T> struct Scalar { typedef T real; static constexpr bool dual = false; };
template <typename R> struct Scalar<Dual<R>> { typedef R real; static constexpr bool dual = true; };

// Mixing of one site for dual features (D x Q / 8 vector accumulators, one W row load per (k, u)
// shared by the D components) with the weights split into real parts Wa and derivatives Wb (with
// wtan false, Wb is zero and skipped): value and derivative in separate vector accumulators.
template <typename R, int D, int Q>
inline void mix_dual_fixed(const Dual<R>* __restrict src, i64 rowlen, i64 off, i64 istride, i64 ustride, i64 U,
                           const i64* __restrict nbr, i64 base, i64 K, i64 N, const R* __restrict Wa,
                           const R* __restrict Wb, bool wtan, Dual<R>* __restrict out, i64 ostride_i,
                           i64 ostride_q) {
  typedef typename Vec8<R>::type V;
  constexpr int NV = Q / 8;
  V acc[D][NV], dac[D][NV];
  for (int i = 0; i < D; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = dac[i][v] = V{};
  for (i64 k = 0; k < K; ++k) {
    i64 s = nbr[k];
    if (s == N) continue;
    const Dual<R>* xs = src + (base + s) * rowlen + off;
    for (i64 u = 0; u < U; ++u) {
      V w[NV];
      const i64 row = (k * U + u) * Q;
      for (int v = 0; v < NV; ++v) __builtin_memcpy(&w[v], Wa + row + 8 * v, sizeof(V));
      for (int i = 0; i < D; ++i) {
        const Dual<R> x = xs[u * ustride + i * istride];
        const V xa = splat<R>(x.a), xb = splat<R>(x.b);
        for (int v = 0; v < NV; ++v) { acc[i][v] += xa * w[v]; dac[i][v] += xb * w[v]; }
      }
      if (wtan) {
        for (int v = 0; v < NV; ++v) __builtin_memcpy(&w[v], Wb + row + 8 * v, sizeof(V));
        for (int i = 0; i < D; ++i) {
          const V xa = splat<R>(xs[u * ustride + i * istride].a);
          for (int v = 0; v < NV; ++v) dac[i][v] += xa * w[v];
        }
      }
    }
  }
  for (int i = 0; i < D; ++i)
    for (int v = 0; v < NV; ++v)
      for (int e = 0; e < 8; ++e) out[i * ostride_i + (8 * v + e) * ostride_q] = Dual<R>(acc[i][v][e], dac[i][v][e]);
}

template <typename R>
inline bool mix_dual(const Dual<R>* src, i64 rowlen, i64 off, i64 istride, i64 ustride, i64 U, const i64* nbr,
                     i64 base, i64 K, i64 N, const R* Wa, const R* Wb, bool wtan, Dual<R>* out, i64 ostride_i,
                     i64 ostride_q, i64 D, i64 Q) {
#define KLM_MIX(DD, QQ) \
  if (D == DD && Q == QQ) { \
    mix_dual_fixed<R, DD, QQ>(src, rowlen, off, istride, ustride, U, nbr, base, K, N, Wa, Wb, wtan, out, ostride_i, \
                              ostride_q); \
    return true; \
  }
  KLM_MIX(1, 8) KLM_MIX(1, 16) KLM_MIX(1, 24) KLM_MIX(1, 32)
  KLM_MIX(3, 8) KLM_MIX(3, 16) KLM_MIX(3, 24) KLM_MIX(3, 32)
  KLM_MIX(5, 8) KLM_MIX(5, 16) KLM_MIX(5, 24) KLM_MIX(5, 32)
#undef KLM_MIX
  return false;
}

// mix_tile for dual features and real weights (their derivatives zero) over the sites [lo, hi):
// mix_block with each input's (value, derivative) pair broadcast as one group of P = 2 and the
// weights WD repeated twice (WD[2 * j + p] = W[j], p = 0, 1), so that one 64-byte multiply-add
// does 8 outputs' values and derivatives (SPLIT). Dual<float> only (a Dual<double> is 16 bytes);
// false (nothing written) where no block kernel has the shape (D, Q).
template <typename R>
inline bool mix_tile_dual(const Dual<R>* src, i64 rowlen, i64 off, i64 istride, i64 ustride, i64 U,
                          const i64* table, i64 lo, i64 hi, i64 K, i64 N, const Dual<R>* zero, const R* WD,
                          Dual<R>* out0, i64 orow, Dual<R>* dummy, i64 ostride_i, i64 ostride_q, i64 D, i64 Q) {
  if constexpr (!std::is_same<R, float>::value) {
    return false;
  } else {
    static_assert(sizeof(Dual<R>) == 2 * sizeof(R), "Dual<R> is two packed reals");
    const R* x = (const R*)src;
    const R* z = (const R*)zero;
    R* o0 = (R*)out0;
    R* dm = (R*)dummy;
#define KLM_MIXD(DD, QQ)                                                                                         \
  if (D == DD && Q == QQ) {                                                                                      \
    over_blocks<R, MixShape<R, DD, 2 * QQ, KLM_SMAX_T>::S>(lo, hi, o0, 2 * orow, dm,                            \
                                                           [&](const i64* g, R* const* out) {                    \
      mix_block<R, DD, QQ, 2, KLM_SMAX_T, true>(x, 2 * rowlen, 2 * off, 2 * istride, 2 * ustride, U, table, g,   \
                                                K, N, z, WD, out, 2 * ostride_i, 2 * ostride_q);                 \
    });                                                                                                          \
    return true;                                                                                                 \
  }
    KLM_MIXD(1, 8) KLM_MIXD(1, 16) KLM_MIXD(1, 24) KLM_MIXD(1, 32)
    KLM_MIXD(3, 8) KLM_MIXD(3, 16) KLM_MIXD(3, 24) KLM_MIXD(3, 32)
    KLM_MIXD(5, 8) KLM_MIXD(5, 16) KLM_MIXD(5, 24) KLM_MIXD(5, 32)
#undef KLM_MIXD
    return false;
  }
}

// mixt_tile's single-output transposed mixing (UO = 1: the first layer) for dual features and real
// weights: each input's (value, derivative) pair times W's entry repeated twice (WD, as for
// mix_tile_dual), the values' and the derivatives' lanes summed apart (mixt_block with PAIR).
// Dual<float> only; false (nothing written) where no block kernel has the shape.
template <typename R>
inline bool mixt_tile_dual(const Dual<R>* src, i64 rowlen, i64 off, i64 Q, const i64* table, i64 lo, i64 hi,
                           i64 K, i64 N, const Dual<R>* zero, const R* WD, Dual<R>* out0, i64 orow,
                           Dual<R>* dummy, i64 ostride_i, i64 D, i64 UO) {
  if constexpr (!std::is_same<R, float>::value) {
    return false;
  } else {
    if (UO != 1 || Q % 8 != 0 || Q > 32 || Q == 0) return false;
    mixt1_tile<R, true>((const R*)src, 2 * rowlen, 2 * off, Q, table, lo, hi, K, N, (const R*)zero, WD, (R*)out0,
                        2 * orow, (R*)dummy, 2 * ostride_i, D);
    return true;
  }
}

// gW[(k * U + u) * Q + q] += sum_i x[nb_k][u * ustride + i] gz[i * Q + q]: the mixing weights'
// gradient at one site, the sum over i in vector registers (gW is read and written once per
// (k, u)). Dual numbers: gz split into values ga and derivatives gb first, and the sums go to the
// split rows gWa (values), gWb (derivatives).
template <typename R, int D, int Q, bool DUAL>
inline void outer_fixed(const void* src_, i64 rowlen, i64 off, i64 ustride, i64 U, const i64* __restrict nbr,
                        i64 base, i64 K, i64 N, const R* __restrict ga, const R* __restrict gb, void* gW_,
                        R* __restrict gWa, R* __restrict gWb) {
  typedef typename Vec8<R>::type V;
  typedef typename std::conditional<DUAL, Dual<R>, R>::type T;
  const T* src = (const T*)src_;
  T* gW = (T*)gW_;
  constexpr int NV = Q / 8;
  V a[D][NV], b[D][NV];
  for (int i = 0; i < D; ++i)
    for (int v = 0; v < NV; ++v) {
      __builtin_memcpy(&a[i][v], ga + i * Q + 8 * v, sizeof(V));
      if (DUAL) __builtin_memcpy(&b[i][v], gb + i * Q + 8 * v, sizeof(V));
    }
  for (i64 k = 0; k < K; ++k) {
    const i64 s = nbr[k];
    if (s == N) continue;
    const T* xs = src + (base + s) * rowlen + off;
    for (i64 u = 0; u < U; ++u) {
      V acc[NV], dac[NV];
      for (int v = 0; v < NV; ++v) acc[v] = dac[v] = V{};
      for (int i = 0; i < D; ++i) {
        if constexpr (DUAL) {
          const Dual<R> x = xs[u * ustride + i];
          const V xa = splat<R>(x.a), xb = splat<R>(x.b);
          for (int v = 0; v < NV; ++v) { acc[v] += xa * a[i][v]; dac[v] += xb * a[i][v] + xa * b[i][v]; }
        } else {
          const V xa = splat<R>(xs[u * ustride + i]);
          for (int v = 0; v < NV; ++v) acc[v] += xa * a[i][v];
        }
      }
      auto add = [](R* row, const V& x) {
        V r;
        __builtin_memcpy(&r, row, sizeof(V));
        r += x;
        __builtin_memcpy(row, &r, sizeof(V));
      };
      const i64 at = (k * U + u) * Q;
      for (int v = 0; v < NV; ++v) {
        if constexpr (DUAL) {
          add(gWa + at + 8 * v, acc[v]);
          add(gWb + at + 8 * v, dac[v]);
        } else {
          add((R*)(gW + at) + 8 * v, acc[v]);
        }
      }
    }
  }
}

template <typename T>
inline void outer(const T* src, i64 rowlen, i64 off, i64 ustride, i64 U, const i64* nbr, i64 base, i64 K, i64 N,
                  const T* gz, i64 D, i64 Q, T* gW, typename Scalar<T>::real* gWa,
                  typename Scalar<T>::real* gWb) {
  typedef typename Scalar<T>::real R;
  constexpr bool dual = Scalar<T>::dual;
  if (D * Q <= 5 * 32 && Q % 8 == 0) {
    R ga[5 * 32], gb[5 * 32];
    for (i64 j = 0; j < D * Q; ++j) {
      if constexpr (dual) { ga[j] = gz[j].a; gb[j] = gz[j].b; } else { ga[j] = gz[j]; }
    }
#define KLM_OUTER(DD, QQ) \
    if (D == DD && Q == QQ) { \
      outer_fixed<R, DD, QQ, dual>(src, rowlen, off, ustride, U, nbr, base, K, N, ga, gb, gW, gWa, gWb); \
      return; \
    }
    KLM_OUTER(1, 8) KLM_OUTER(1, 16) KLM_OUTER(1, 24) KLM_OUTER(1, 32)
    KLM_OUTER(3, 8) KLM_OUTER(3, 16) KLM_OUTER(3, 24) KLM_OUTER(3, 32)
    KLM_OUTER(5, 8) KLM_OUTER(5, 16) KLM_OUTER(5, 24) KLM_OUTER(5, 32)
#undef KLM_OUTER
  }
  for (i64 k = 0; k < K; ++k) {
    const i64 s = nbr[k];
    if (s == N) continue;
    const T* xs = src + (base + s) * rowlen + off;
    for (i64 u = 0; u < U; ++u) {
      T* row = gW + (k * U + u) * Q;
      for (i64 i = 0; i < D; ++i) {
        const T xv = xs[u * ustride + i];
        const T* g = gz + i * Q;
        for (i64 q = 0; q < Q; ++q) row[q] += xv * g[q];
      }
    }
  }
}

// The mixing weights' gradient of a block of n sites from g0 (one configuration's or not: each site
// its own), as a matrix product over the block: for each class k and each group of UC inputs u,
// gW[(k * U + u) * Q + q] += sum_s sum_i x_s[nb_k][off + u * ustride + i] gz_s[i * Q + q] in
// UC x NV vector registers (the sum over the block's sites and i, then added to gW once: per site,
// the gradient rows were read and written once per site and class, more memory operations than
// multiply-adds). x: rows of F reals per entry (F = 2: dual numbers, value then derivative);
// ga (and gb, derivatives) the block's dE/dz rows, site s at s * gstride, split into values and
// derivatives; gWa (gWb) the values' (derivatives') sums. A missing neighbour reads the zero row. A
// site's terms are added in the order of the sites of the block (blocks start at fixed places:
// see the caller), so the sums do not depend on the number of threads.
template <typename R, int D, int Q, int UC, bool DUAL>
inline void outer_block(const R* __restrict src, i64 rowlen, i64 off, i64 ustride, i64 U,
                        const i64* __restrict table, i64 g0, i64 n, i64 K, i64 N, const R* __restrict zero,
                        const R* __restrict ga, const R* __restrict gb, i64 gstride, R* __restrict gWa,
                        R* __restrict gWb) {
  typedef RowVec<R, Q> RV;
  typedef typename RV::type V;
  constexpr int NV = RV::NV, VL = RV::VL, DUP = RV::DUP, F = DUAL ? 2 : 1;
  constexpr i64 SB = 32;
  const R* xr[SB];
  V keep;  // the lanes of a row's last vector that are not repeated from the one before
  for (int e = 0; e < VL; ++e) keep[e] = e < DUP ? R(0) : R(1);
  for (i64 k = 0; k < K; ++k) {
    for (i64 s = 0; s < n; ++s) {
      const i64 g = g0 + s, c = g % N, j = table[c * K + k];
      xr[s] = j == N ? zero : src + ((g - c + j) * rowlen + off) * F;
    }
    for (i64 u0 = 0; u0 < U; u0 += UC) {
      V a[UC][NV], b[UC][NV];
      for (int uu = 0; uu < UC; ++uu)
        for (int v = 0; v < NV; ++v) a[uu][v] = b[uu][v] = V{};
      for (i64 s = 0; s < n; ++s) {
        const R* xs = xr[s] + u0 * ustride * F;
        const R* gas = ga + s * gstride;
        const R* gbs = gb + s * gstride;
        for (int i = 0; i < D; ++i) {
          V gav[NV], gbv[NV];
          for (int v = 0; v < NV; ++v) {
            gav[v] = RV::load(gas + i * Q, v);
            if (DUAL) gbv[v] = RV::load(gbs + i * Q, v);
          }
          for (int uu = 0; uu < UC; ++uu) {
            const R xa = xs[(uu * ustride + i) * F];
            for (int v = 0; v < NV; ++v) a[uu][v] += xa * gav[v];
            if constexpr (DUAL) {
              const R xb = xs[(uu * ustride + i) * F + 1];
              for (int v = 0; v < NV; ++v) b[uu][v] += xb * gav[v] + xa * gbv[v];
            }
          }
        }
      }
      auto add = [&](R* row, V x, int v) {  // the last vector ends at the row's end, its repeated lanes zeroed
        R* p = row + (v + 1 < NV ? VL * v : Q - VL);
        if (DUP > 0 && v + 1 == NV) x *= keep;
        V r;
        __builtin_memcpy(&r, p, sizeof(V));
        r += x;
        __builtin_memcpy(p, &r, sizeof(V));
      };
      for (int uu = 0; uu < UC; ++uu)
        for (int v = 0; v < NV; ++v) {
          const i64 row = (k * U + u0 + uu) * Q;
          add(gWa + row, a[uu][v], v);
          if (DUAL) add(gWb + row, b[uu][v], v);
        }
    }
  }
}

// outer_block for the n <= 32 sites from g0 (dE/dz of site s at gz + s * gzrow, D x Q), the sums
// into gW (reals) or split into gWa, gWb (dual numbers; their dE/dz split first into `split`, 2 x 32
// x D x Q reals); false (nothing added) where no block kernel has the shape (D, Q)
template <typename T>
inline bool outer_tile(const T* src, i64 rowlen, i64 off, i64 ustride, i64 U, const i64* table, i64 g0, i64 n,
                       i64 K, i64 N, const T* zero, const T* gz, i64 gzrow, i64 D, i64 Q, T* gW,
                       typename Scalar<T>::real* gWa, typename Scalar<T>::real* gWb,
                       typename Scalar<T>::real* split) {
  typedef typename Scalar<T>::real R;
  constexpr bool dual = Scalar<T>::dual;
  if (!((D == 1 || D == 3 || D == 5) && (Q == 8 || Q == 16 || Q == 24 || Q == 32))) return false;
  const R *ga, *gb;
  i64 gstride;
  R *wa, *wb;
  if constexpr (dual) {
    const i64 DQ = D * Q;
    R* sa = split;
    R* sb = split + 32 * DQ;
    for (i64 s = 0; s < n; ++s)
      for (i64 j = 0; j < DQ; ++j) { sa[s * DQ + j] = gz[s * gzrow + j].a; sb[s * DQ + j] = gz[s * gzrow + j].b; }
    ga = sa; gb = sb; gstride = DQ; wa = gWa; wb = gWb;
  } else {
    ga = gb = gz; gstride = gzrow; wa = (R*)gW; wb = nullptr;
  }
  const R* x = (const R*)src;
  const R* z = (const R*)zero;
  // UC inputs per register block: UC x NV accumulators (twice for dual numbers) within the 32 registers
  constexpr int B = dual ? 8 : 16;
#define KLM_OUTB(DD, QQ)                                                                                         \
  if (D == DD && Q == QQ) {                                                                                      \
    constexpr int NV = RowVec<R, QQ>::NV, UC = B / NV > 8 ? 8 : B / NV;                                          \
    if (U % UC == 0)                                                                                             \
      outer_block<R, DD, QQ, UC, dual>(x, rowlen, off, ustride, U, table, g0, n, K, N, z, ga, gb, gstride, wa, wb); \
    else                                                                                                         \
      outer_block<R, DD, QQ, 1, dual>(x, rowlen, off, ustride, U, table, g0, n, K, N, z, ga, gb, gstride, wa, wb); \
    return true;                                                                                                 \
  }
  KLM_OUTB(1, 8) KLM_OUTB(1, 16) KLM_OUTB(1, 24) KLM_OUTB(1, 32)
  KLM_OUTB(3, 8) KLM_OUTB(3, 16) KLM_OUTB(3, 24) KLM_OUTB(3, 32)
  KLM_OUTB(5, 8) KLM_OUTB(5, 16) KLM_OUTB(5, 24) KLM_OUTB(5, 32)
#undef KLM_OUTB
  return false;
}

// the norm activation's factor silu(n) / n = sigmoid(n) of one number (the read-out's below its clamp)
#ifdef KLM_FAKE
template <typename T> inline T sigmoid(T t) { return T(0.5) + T(0.2) * t; }
#else
template <typename T> inline T sigmoid(T t) { return T(1) / (T(1) + kexp(-t)); }
#endif

// ---------------------------------------------------------------- per-site passes over blocks of sites
// One site at a time, the per-site work (Clebsch-Gordan product, norm activation, read-out and their
// backward) costs a scalar index computation or a half-filled vector per multiply-add and a scalar
// exponential per channel. Here W sites (one 64-byte vector: 16 floats, 8 doubles) go together: a
// block's rows are transposed to [row][site] at its start (the rows of e3nn layout, z or dE/dz each one
// vector), every operation runs once for the W sites in the lanes of one vector, and the results are
// transposed back to the per-site rows that the mixing passes read. No operation mixes lanes, so a
// site's result does not depend on its lane (nor on the number of threads); a short block repeats its
// last site in the lanes it does not store. Dual numbers: a vector of values and one of derivatives
// (DualLanes), on the lanes of their real type.
template <typename T> struct Lanes {
  static constexpr int W = 64 / (int)sizeof(T);
  typedef T V __attribute__((vector_size(64)));
  typedef typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type I;
  typedef I IV __attribute__((vector_size(64)));
};

template <typename T> inline typename Lanes<T>::V lsplat(T x) {
  return typename Lanes<T>::V{} + x;
}

// lane l of the results of one butterfly stage on rows A (row index bit b clear) and B (bit b set)
constexpr int klm_swap(int W, int b, bool first, int l) {
  return first ? ((l & b) ? W + (l ^ b) : l) : ((l & b) ? W + l : (l ^ b));
}
template <typename T, int b, bool first, int... L>
inline typename Lanes<T>::V klm_shuffle(typename Lanes<T>::V A, typename Lanes<T>::V B,
                                        std::integer_sequence<int, L...>) {
#if defined(__clang__)
  return __builtin_shufflevector(A, B, klm_swap(Lanes<T>::W, b, first, L)...);
#else
  return __builtin_shuffle(A, B, typename Lanes<T>::IV{klm_swap(Lanes<T>::W, b, first, L)...});
#endif
}
// a butterfly stage of the W x W transpose: swaps bit b of the row index with bit b of the lane index
template <typename T, int b>
inline void klm_stage(typename Lanes<T>::V* x) {
  constexpr int W = Lanes<T>::W;
  for (int r = 0; r < W; ++r)
    if (!(r & b)) {
      const typename Lanes<T>::V A = x[r], B = x[r | b];
      x[r] = klm_shuffle<T, b, true>(A, B, std::make_integer_sequence<int, W>{});
      x[r | b] = klm_shuffle<T, b, false>(A, B, std::make_integer_sequence<int, W>{});
    }
}
// x[r][l] <- x[l][r] (log2 W stages of W two-source shuffles)
template <typename T>
inline void transpose_lanes(typename Lanes<T>::V* x) {
  klm_stage<T, 1>(x);
  klm_stage<T, 2>(x);
  klm_stage<T, 4>(x);
  if constexpr (Lanes<T>::W == 16) klm_stage<T, 8>(x);
}

// out[r][s] = src[s][r] for the rows r < R of the W sites' rows src[s]. Rows in groups of W, the last
// group ending at row R (overlapping the one before: rows written twice with the same value).
template <typename T>
inline void to_lanes(const T* const* src, i64 R, typename Lanes<T>::V* __restrict out) {
  typedef typename Lanes<T>::V V;
  constexpr int W = Lanes<T>::W;
  V x[W];
  if (R < W) {  // element by element (rows of a few entries: dE/dY)
    for (i64 r = 0; r < R; ++r)
      for (int s = 0; s < W; ++s) out[r][s] = src[s][r];
    return;
  }
  for (i64 g = 0; g < R; g += W) {
    const i64 r0 = g + W <= R ? g : R - W;
    for (int s = 0; s < W; ++s) __builtin_memcpy(&x[s], src[s] + r0, sizeof(V));
    transpose_lanes<T>(x);
    for (int r = 0; r < W; ++r) out[r0 + r] = x[r];
  }
}

// dst[s][r] = in[r * STEP][s] for the rows r < R and the first n sites (STEP 2: every other row, the
// derivatives of a block's dual rows)
template <typename T, int STEP = 1>
inline void from_lanes(const typename Lanes<T>::V* __restrict in, i64 R, T* const* dst, int n) {
  typedef typename Lanes<T>::V V;
  constexpr int W = Lanes<T>::W;
  V x[W];
  if (R < W) {
    for (i64 r = 0; r < R; ++r)
      for (int s = 0; s < n; ++s) dst[s][r] = in[r * STEP][s];
    return;
  }
  for (i64 g = 0; g < R; g += W) {
    const i64 r0 = g + W <= R ? g : R - W;
    for (int r = 0; r < W; ++r) x[r] = in[(r0 + r) * STEP];
    transpose_lanes<T>(x);
    for (int s = 0; s < n; ++s) __builtin_memcpy(dst[s] + r0, &x[s], sizeof(V));
  }
}

// prefetch for writing of n entries from p (a block's output rows, stored at its end: a store that
// misses the cache waits for its line, and the block's stores fill the store queue)
template <typename T> inline void prefetch_w(T* p, i64 n) {
  for (i64 b = 0; b < n * (i64)sizeof(T); b += 64) __builtin_prefetch((char*)p + b, 1, 3);
}

template <typename T> inline typename Lanes<T>::V vsqrt(typename Lanes<T>::V x) {
  for (int l = 0; l < Lanes<T>::W; ++l) x[l] = std::sqrt(x[l]);  // one vector square root
  return x;
}

// exp of each lane. float: x = n ln2 + r (|r| <= ln2 / 2, ln2 in two parts), exp(r) by the degree-6
// polynomial of Cephes' expf, times 2^n (as two factors, so that each is a normal number): within about
// 1 ulp of exp over the normal range (tests/test_fused.py); 0 below it (x < -87.34), inf above. double:
// std::exp per lane (the accuracy of the float64 path is checked to 1e-10).
template <typename T> inline typename Lanes<T>::V vexp(typename Lanes<T>::V x) {
  typedef typename Lanes<T>::V V;
  typedef typename Lanes<T>::IV IV;
  if constexpr (sizeof(T) == 8) {
    for (int l = 0; l < Lanes<T>::W; ++l) x[l] = std::exp(x[l]);
    return x;
  } else {
    const V hi = lsplat<T>(88.7228391f), lo = lsplat<T>(-87.3365447504f);
    const V x0 = x;
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    const V magic = lsplat<T>(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
    const V n = (x * lsplat<T>(1.44269504088896341f) + magic) - magic;
    V r = x - n * lsplat<T>(0.693359375f);
    r = r - n * lsplat<T>(-2.12194440e-4f);
    V p = lsplat<T>(1.9875691500e-4f);
    p = p * r + lsplat<T>(1.3981999507e-3f);
    p = p * r + lsplat<T>(8.3334519073e-3f);
    p = p * r + lsplat<T>(4.1665795894e-2f);
    p = p * r + lsplat<T>(1.6666665459e-1f);
    p = p * r + lsplat<T>(5.0000001201e-1f);
    p = p * (r * r) + r + lsplat<T>(1.0f);
    const IV ni = __builtin_convertvector(n, IV), n1 = ni >> 1;
    const IV e1 = (n1 + 127) << 23, e2 = (ni - n1 + 127) << 23;
    V s1, s2;
    __builtin_memcpy(&s1, &e1, sizeof(V));
    __builtin_memcpy(&s2, &e2, sizeof(V));
    V y = (p * s1) * s2;
    y = x0 > hi ? lsplat<T>(INFINITY) : y;
    return x0 < lo ? V{} : y;
  }
}

// The lanes of T: a vector for a real T; for Dual<R>, a vector of values and one of derivatives (the
// arithmetic of Dual, lane by lane). A block's transposed rows of dual numbers are these pairs as they
// are: row r of reals 2 r (values) and 2 r + 1 (derivatives).
template <typename R> struct DualLanes {
  typedef typename Lanes<R>::V V;
  V a, b;
  DualLanes& operator+=(const DualLanes& o) { a += o.a; b += o.b; return *this; }
};
template <typename R> inline DualLanes<R> operator+(const DualLanes<R>& x, const DualLanes<R>& y) { return {x.a + y.a, x.b + y.b}; }
template <typename R> inline DualLanes<R> operator-(const DualLanes<R>& x, const DualLanes<R>& y) { return {x.a - y.a, x.b - y.b}; }
template <typename R> inline DualLanes<R> operator-(const DualLanes<R>& x) { return {-x.a, -x.b}; }
template <typename R> inline DualLanes<R> operator*(const DualLanes<R>& x, const DualLanes<R>& y) {
  return {x.a * y.a, x.b * y.a + x.a * y.b};
}
template <typename R> inline DualLanes<R> operator/(const DualLanes<R>& x, const DualLanes<R>& y) {
  const typename Lanes<R>::V q = x.a / y.a;
  return {q, (x.b - q * y.b) / y.a};
}
template <typename R> inline DualLanes<R> operator*(const Dual<R>& x, const DualLanes<R>& y) {
  return {x.a * y.a, x.b * y.a + x.a * y.b};
}
template <typename R> inline DualLanes<R> operator*(const DualLanes<R>& x, const Dual<R>& y) {
  return {x.a * y.a, x.b * y.a + x.a * y.b};
}
template <typename R> inline DualLanes<R> operator+(const Dual<R>& x, const DualLanes<R>& y) { return {x.a + y.a, x.b + y.b}; }
template <typename R> inline DualLanes<R> operator-(const Dual<R>& x, const DualLanes<R>& y) { return {x.a - y.a, x.b - y.b}; }
template <typename R> inline DualLanes<R> operator/(const Dual<R>& x, const DualLanes<R>& y) {
  const typename Lanes<R>::V q = x.a / y.a;
  return {q, (x.b - q * y.b) / y.a};
}

template <typename T> struct LaneOf { typedef typename Lanes<T>::V type; typedef T real; };
template <typename R> struct LaneOf<Dual<R>> { typedef DualLanes<R> type; typedef R real; };
template <typename T> using LV = typename LaneOf<T>::type;

template <typename T> inline LV<T> lane_splat(const T& x) {
  if constexpr (Scalar<T>::dual) return {lsplat(x.a), lsplat(x.b)}; else return lsplat<T>(x);
}
template <typename T> inline void set_lane(LV<T>& v, int l, const T& x) {
  if constexpr (Scalar<T>::dual) { v.a[l] = x.a; v.b[l] = x.b; } else { v[l] = x; }
}
template <typename T> inline T get_lane(const LV<T>& v, int l) {
  if constexpr (Scalar<T>::dual) return T(v.a[l], v.b[l]); else return v[l];
}
// x < y lane by lane (dual numbers: their values), and the lanes of x where m holds, else of y
template <typename V> inline auto lless(const V& x, const V& y) { return x < y; }
template <typename R> inline auto lless(const DualLanes<R>& x, const DualLanes<R>& y) { return x.a < y.a; }
template <typename M, typename V> inline V lsel(const M& m, const V& x, const V& y) { return m ? x : y; }
template <typename M, typename R> inline DualLanes<R> lsel(const M& m, const DualLanes<R>& x, const DualLanes<R>& y) {
  return {m ? x.a : y.a, m ? x.b : y.b};
}
inline Lanes<float>::V lsqrt(const Lanes<float>::V& x) { return vsqrt<float>(x); }
inline Lanes<double>::V lsqrt(const Lanes<double>::V& x) { return vsqrt<double>(x); }
template <typename R> inline DualLanes<R> lsqrt(const DualLanes<R>& x) {
  const typename Lanes<R>::V r = vsqrt<R>(x.a);
  return {r, x.b / (R(2) * r)};
}
inline Lanes<float>::V lexp(const Lanes<float>::V& x) { return vexp<float>(x); }
inline Lanes<double>::V lexp(const Lanes<double>::V& x) { return vexp<double>(x); }
template <typename R> inline DualLanes<R> lexp(const DualLanes<R>& x) {
  const typename Lanes<R>::V e = vexp<R>(x.a);
  return {e, e * x.b};
}
#ifdef KLM_FAKE
template <typename T> inline LV<T> lsigmoid(const LV<T>& t) {
  return lane_splat<T>(T(0.5)) + T(0.2) * t;
}
#else
template <typename T> inline LV<T> lsigmoid(const LV<T>& t) {
  return T(1) / (T(1) + lexp(-t));
}
#endif

// to_lanes and from_lanes for the rows of T (dual numbers: their reals, twice as many rows)
template <typename T>
inline void to_lanes_of(const T* const* src, i64 R, LV<T>* __restrict out) {
  typedef typename LaneOf<T>::real Re;
  constexpr int W = Lanes<Re>::W, F = sizeof(T) / sizeof(Re);
  const Re* rows[W];
  for (int s = 0; s < W; ++s) rows[s] = (const Re*)src[s];
  to_lanes<Re>(rows, F * R, (typename Lanes<Re>::V*)out);
}
template <typename T>
inline void from_lanes_of(const LV<T>* __restrict in, i64 R, T* const* dst, int n) {
  typedef typename LaneOf<T>::real Re;
  constexpr int W = Lanes<Re>::W, F = sizeof(T) / sizeof(Re);
  Re* rows[W];
  for (int s = 0; s < W; ++s) rows[s] = (Re*)dst[s];
  from_lanes<Re>((const typename Lanes<Re>::V*)in, F * R, rows, n);
}

// f(std::integral_constant<int, M>) for M = min(m, 8): the channels whose sums a run keeps in registers
template <typename F> inline void klm_chunk(i64 m, F f) {
  switch (m) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

// Per run of entries (one destination row group), for the channels w of the output irrep c, in groups
// of up to 8: out(w) = sum over the run, in the entries' order, of params[e.p] Y[e.j] src(e, w)
template <typename T, typename Src, typename Dst>
inline void cg_runs_lanes(const Layer& ly, const CGRuns& runs, const T* __restrict params,
                          const LV<T>* __restrict Y, Src src, Dst dst) {
  typedef LV<T> V;
  for (size_t run = 0; run + 1 < runs.starts.size(); ++run) {
    const CGEntry* first = runs.e.data() + runs.starts[run];
    const CGEntry* end = runs.e.data() + runs.starts[run + 1];
    const i64 mul = ly.out[first->c].mul;
    for (i64 w0 = 0; w0 < mul; w0 += 8)
      klm_chunk(mul - w0, [&](auto chunk) {
        constexpr int M = decltype(chunk)::value;
        V acc[M];
        for (int w = 0; w < M; ++w) acc[w] = V{};
        for (const CGEntry* e = first; e < end; ++e) {
          const V cy = params[e->p] * Y[e->j];
          for (int w = 0; w < M; ++w) acc[w] += cy * src(*e, w0 + w);
        }
        for (int w = 0; w < M; ++w) dst(*first, w0 + w, acc[w]);
      });
  }
}

// h = CG(z, Y) [+ residual] for a block (rows: z of zsize, Y of J, h and residual of dout)
template <typename T>
inline void cg_forward_lanes(const Layer& ly, const LV<T>* __restrict z,
                             const LV<T>* __restrict Y, const T* __restrict params,
                             const LV<T>* __restrict residual, LV<T>* __restrict h) {
  typedef LV<T> V;
  for (i64 r = 0; r < ly.dout; ++r) h[r] = residual ? residual[r] : V{};
  cg_runs_lanes<T>(ly, ly.by_out, params, Y, [&](const CGEntry& e, i64 w) { return z[e.zb + w]; },
                   [&](const CGEntry& e, i64 w, const V& a) {
                     const OutIrrep& o = ly.out[e.c];
                     const i64 r = o.off + w * o.d + e.k;
                     h[r] = residual ? a + residual[r] : a;
                   });
}

// norm activation V -> SiLU(|V|) V / |V| per (mul, d) block of a block of sites, |V| clamped below at
// eps; y may be h
template <typename T>
inline void act_forward_lanes(const LV<T>* h, LV<T>* y, const Layer& ly, T eps2) {
  typedef LV<T> V;
  const V e2 = lane_splat<T>(eps2);
  for (const OutIrrep& o : ly.out)
    for (i64 u = 0; u < o.mul; ++u) {
      const i64 at = o.off + u * o.d;
      V sq = V{};
      for (i64 i = 0; i < o.d; ++i) sq += h[at + i] * h[at + i];
      const V f = lsigmoid<T>(lsqrt(lsel(lless(sq, e2), e2, sq)));  // silu(n) / n
      for (i64 i = 0; i < o.d; ++i) y[at + i] = h[at + i] * f;
    }
}

// the activation's backward for a block of sites: gh = dE/dh from h and g = dE/dy. Below the clamp
// f = silu(n) / n = sigmoid(n) is constant: dE/dV = f dE/dy; above, + f'(n) (V . dE/dy) / n V
template <typename T>
inline void act_backward_lanes(const LV<T>* __restrict h, const LV<T>* __restrict g,
                               LV<T>* __restrict gh, const Layer& ly, T eps2) {
  typedef LV<T> V;
  const V e2 = lane_splat<T>(eps2), zero = V{};
  for (const OutIrrep& o : ly.out)
    for (i64 u = 0; u < o.mul; ++u) {
      const i64 at = o.off + u * o.d;
      V sq = V{}, vg = V{};
      for (i64 i = 0; i < o.d; ++i) { sq += h[at + i] * h[at + i]; vg += h[at + i] * g[at + i]; }
      const auto small = lless(sq, e2);
      const V nrm = lsqrt(lsel(small, e2, sq));
      const V s = lsigmoid<T>(nrm);
      const V c = lsel(small, zero, s * (T(1) - s) * vg / nrm);
      for (i64 i = 0; i < o.d; ++i) gh[at + i] = s * g[at + i] + c * h[at + i];
    }
}

// the backward of h = CG(z, Y) for a block: gz (zsize rows, all written) from g = dE/dh, and
// gY = gY_in + dE/dY (gY_in may be null or gY itself)
template <typename T>
inline void cg_backward_lanes(const Layer& ly, const LV<T>* __restrict z,
                              const LV<T>* __restrict Y, i64 J, const T* __restrict params,
                              const LV<T>* __restrict g, LV<T>* __restrict gz,
                              const LV<T>* gY_in, LV<T>* gY) {
  typedef LV<T> V;
  for (i64 r = 0; r < ly.zsize; ++r) gz[r] = V{};
  auto grow = [&](const CGEntry& e, i64 w) -> const V& {
    const OutIrrep& o = ly.out[e.c];
    return g[o.off + w * o.d + e.k];
  };
  cg_runs_lanes<T>(ly, ly.by_z, params, Y, grow, [&](const CGEntry& e, i64 w, const V& a) { gz[e.zb + w] = a; });
  for (i64 j = 0; j < J; ++j) gY[j] = gY_in ? gY_in[j] : V{};
  const CGRuns& rj = ly.by_j;
  for (size_t run = 0; run + 1 < rj.starts.size(); ++run) {
    V a = V{};
    for (i64 x = rj.starts[run]; x < rj.starts[run + 1]; ++x) {
      const CGEntry& e = rj.e[x];
      const i64 mul = ly.out[e.c].mul;
      V t = V{};
      for (i64 w = 0; w < mul; ++w) t += z[e.zb + w] * grow(e, w);
      a += params[e.p] * t;
    }
    const i64 j = rj.e[rj.starts[run]].j;
    gY[j] = gY[j] + a;
  }
}

// the read-out MLP of a block of sites: a_0 = h, y_m = A_m a_m + b_m, a_{m+1} = act(y_m) (no act after
// the last); returns the site energies and leaves seed * dE/dh in grad (rows: as of
// (nmlp + 1) * dmax, ys of nmlp * dmax, grad and gnext of dmax). With gp, adds seed * dE/dA_m and
// seed * dE/db_m to gp, per lane: for each m, A_m's entries (o, i) then b_m's.
template <typename T>
inline LV<T> readout_lanes(const Net& net, const T* params, const LV<T>* h, i64 dh,
                                          const LV<T>& seed, T eps2, i64 dmax,
                                          LV<T>* as, LV<T>* ys,
                                          LV<T>* grad, LV<T>* gnext, LV<T>* gp = nullptr) {
  typedef LV<T> V;
  const i64 nmlp = (i64)net.mlp.size();
  const T f0 = sigmoid(ksqrt(eps2));
  const V e2 = lane_splat<T>(eps2);
  for (i64 j = 0; j < dh; ++j) as[j] = h[j];
  for (i64 m = 0; m < nmlp; ++m) {
    const Linear& li = net.mlp[m];
    const V* a = as + m * dmax;
    V* y = ys + m * dmax;
    V* an = as + (m + 1) * dmax;
    for (i64 o = 0; o < li.nout; ++o) {
      V sum = lane_splat<T>(params[li.b + o]);
      for (i64 i = 0; i < li.nin; ++i) sum += params[li.w + o * li.nin + i] * a[i];
      y[o] = sum;
      const V sq = sum * sum;
      an[o] = m + 1 < nmlp ? sum * lsigmoid<T>(lsqrt(lsel(lless(sq, e2), e2, sq))) : sum;
    }
  }
  grad[0] = seed;
  for (i64 m = nmlp; m-- > 0;) {
    const Linear& li = net.mlp[m];
    const V* y = ys + m * dmax;
    if (m + 1 < nmlp)
      for (i64 o = 0; o < li.nout; ++o) {
        const V sq = y[o] * y[o];
        const V r = lsqrt(sq), sg = lsigmoid<T>(r);
        const V big = sg * grad[o] + sg * (T(1) - sg) * r * grad[o];
        grad[o] = lsel(lless(sq, e2), grad[o] * f0, big);
      }
    if (gp) {
      i64 at = 0;
      for (i64 k = 0; k < m; ++k) at += net.mlp[k].nout * (net.mlp[k].nin + 1);
      const V* a = as + m * dmax;
      for (i64 o = 0; o < li.nout; ++o) {
        gp[at + li.nout * li.nin + o] += grad[o];
        for (i64 i = 0; i < li.nin; ++i) gp[at + o * li.nin + i] += grad[o] * a[i];
      }
    }
    for (i64 i = 0; i < li.nin; ++i) gnext[i] = V{};
    for (i64 o = 0; o < li.nout; ++o)
      for (i64 i = 0; i < li.nin; ++i) gnext[i] += params[li.w + o * li.nin + i] * grad[o];
    for (i64 i = 0; i < li.nin; ++i) grad[i] = gnext[i];
  }
  return as[nmlp * dmax];
}

// ---------------------------------------------------------------- scheduling
#if defined(__x86_64__) || defined(__i386__)
#define KLM_PAUSE() __builtin_ia32_pause()
#else
#define KLM_PAUSE() ((void)0)
#endif
// Runs fn_p(lo, hi) over [0, total) in tiles, pass after pass, each tile of a pass exactly once,
// with a barrier between passes: the backward's buffers alternate between layers (see Layout),
// so a pass must not start while a tile of the previous one, which reads the buffer it is about
// to overwrite, is still running. Thread r owns the r-th contiguous range of tiles (the same
// sites in every pass: their data stays in its cache) and takes them in order from its range's
// counter; when its range is exhausted it takes the tiles left in the other ranges, so a thread
// the OS has descheduled (a loaded machine) holds up a pass by at most the tile it is in. The
// barrier spins briefly (a tile takes about 0.3 ms) and then sleeps until the last tile is done,
// leaving the core to the thread it waits for (spinning or yielding would compete with it).
struct Passes {
  std::vector<std::function<void(i64, i64)>> fns;
  void run(i64 total, i64 tile, int threads) {
    const i64 P = (i64)fns.size();
    const i64 ntiles = (total + tile - 1) / tile;
    const int R = (int)std::max<i64>(1, std::min<i64>(threads, ntiles));
    std::vector<std::atomic<i64>> next(P * R), done(P);
    for (auto& x : next) x = 0;
    for (auto& x : done) x = 0;
    std::mutex mutex;
    std::condition_variable wake;
    auto range = [&](int r, i64& lo, i64& hi) { lo = ntiles * r / R; hi = ntiles * (r + 1) / R; };
#ifdef KLM_PROFILE
    auto t0 = std::chrono::steady_clock::now();
#endif
    auto work = [&](int me) {
      for (i64 p = 0; p < P; ++p) {
        for (int k = 0; k < R; ++k) {  // my range first, then the others'
          const int r = (me + k) % R;
          i64 lo, hi;
          range(r, lo, hi);
          for (;;) {
            i64 t = lo + next[p * R + r].fetch_add(1, std::memory_order_relaxed);
            if (t >= hi) break;
            fns[p](t * tile, std::min(total, (t + 1) * tile));
            if (done[p].fetch_add(1, std::memory_order_acq_rel) + 1 == ntiles && R > 1) {
              std::lock_guard<std::mutex> lock(mutex);  // a waiter checks under the lock: no lost wake-up
              wake.notify_all();
            }
          }
        }
        for (int spin = 0; spin < 2048 && done[p].load(std::memory_order_acquire) < ntiles; ++spin) KLM_PAUSE();
        if (done[p].load(std::memory_order_acquire) < ntiles) {
          std::unique_lock<std::mutex> lock(mutex);
          wake.wait(lock, [&] { return done[p].load(std::memory_order_acquire) >= ntiles; });
        }
#ifdef KLM_PROFILE
        if (me == 0) { auto now = std::chrono::steady_clock::now(); fprintf(stderr, "pass %ld: %.3f ms\n", (long)p, std::chrono::duration<double>(now - t0).count() * 1e3); t0 = now; }
#endif
      }
    };
    std::vector<std::thread> pool;
    for (int r = 1; r < R; ++r) pool.emplace_back(work, r);
    work(0);
    for (auto& th : pool) th.join();
  }
};

// Per-site storage of one call, as offsets into one workspace (reused between calls: fresh pages
// for every call would cost a page fault per 4 KiB). Rows: x_l xw[l] entries, z_l and dE/dz_l
// zsize, dE/dh_l dout of layer l.
// With `keep` (a parameter gradient, read after the passes by the last one) every layer keeps its
// input x_l (din), its z_l, dE/dz_l and dE/dh_l.
// Energy + field (4 KB per site in all, PyTorch's part included, at 96 x 96): stored are the
// inputs x_l of the layers (x_0 is the caller's), read by the neighbours in the forward, and the
// z_l of layers L-3 and L-2 (the last two hidden layers of the published models); the backward
// recomputes the other layers' z_l from the x_l of the neighbours (one more gather-mix) and every
// layer's pre-activations h_l. Of the backward, dE/dz lives from one pass to the next (the
// neighbours read it): two buffers, alternating between layers. A kept z_l waits in the buffer
// that dE/dz_l will take: that buffer is free from the forward until P_l, which reads z_l only at
// its own sites, block by block, before it writes dE/dz_l there; for l = L-3 this needs dE/dz of
// the last layer in rows of its own (zsize 32 in the published models, against 232; a third
// buffer of 232 for z_{L-4} would not fit in 4 KB per site). dE/dh_l (written by P_l, read at the
// same site by P_{l-1} for the residual) takes the place of x_l where z_l is kept (P_l reads x_l
// only at its own sites then) and of x_{l+1} otherwise (no pass reads x_{l+1} after P_{l+1});
// dE/dh of the last layer is stored only where that layer has a residual; the running dE/dY is
// read and overwritten at the same site. A layer without a residual reads of its input x_l only
// the irreps that its mixing uses (Q > 0; the last layer of the published models reads the l = 0
// and 1 channels, 32 of 72 entries): x_l is stored up to the last of them (xw[l]).
// `recompute` (KLM_RECOMPUTE_Z, for the tests) keeps no z_l: every one is recomputed.
// With `tangents` (a dual call that reuses a real call's values, KLM_REUSE) two planes of reals hold
// the derivatives of dE/dz apart (S x zmax reals each, alternating between layers like dE/dz without
// `keep`): the transposed mixing of the derivatives reads them as real rows. Both fit in S x zmax
// entries of Dual<R>.
struct Layout {
  // zs[l] < 0: z_l not stored (recomputed); gh[l] < 0: dE/dh_l not stored (no residual reads it)
  std::vector<i64> xs, xw, zs, gz, gh;
  i64 gy = 0, gzt = 0, zmax = 0, dmax = 0, scratch = 0, total = 0;
  Layout(const Net& net, i64 S, bool keep, bool tangents = false, bool recompute = false) {
    for (const Layer& ly : net.layers) {
      zmax = std::max(zmax, ly.zsize);
      dmax = std::max(dmax, std::max(ly.din, ly.dout));
      for (const InIrrep& ir : ly.in) scratch = std::max(scratch, ir.d * std::max(ir.Q, ir.mul));
    }
    for (const Linear& li : net.mlp) dmax = std::max(dmax, std::max(li.nin, li.nout));
    const i64 L = net.L;
    i64 off = 0;
    auto align = [&] { off = (off + 15) / 16 * 16; };  // every buffer starts on 16 entries (64 bytes in float)
    if (keep) {
      for (i64 l = 0; l < L; ++l) {
        align();
        xs.push_back(off);
        xw.push_back(net.layers[l].din);
        if (l > 0) off += S * net.layers[l].din;
      }
      for (const Layer& ly : net.layers) {
        align(); zs.push_back(off); off += S * ly.zsize;
        align(); gz.push_back(off); off += S * ly.zsize;
        align(); gh.push_back(off); off += S * ly.dout;
      }
    } else {
      std::vector<char> kept(L, 0);
      for (i64 l = std::max<i64>(0, L - 3); l + 1 < L && !recompute; ++l) kept[l] = 1;
      std::vector<i64> width(L, 0), slot(L, -1);  // of x_l's rows; where dE/dh_l goes
      for (i64 l = 0; l < L; ++l) {
        const Layer& ly = net.layers[l];
        i64 used = 0;
        for (const InIrrep& ir : ly.in)
          if (ir.Q > 0) used = std::max(used, ir.off + ir.mul * ir.d);
        xw.push_back(l == 0 || ly.residual ? ly.din : used);
        width[l] = xw[l];
      }
      for (i64 l = 0; l + 1 < L; ++l) {
        slot[l] = kept[l] && l > 0 ? l : l + 1;
        width[slot[l]] = std::max(width[slot[l]], net.layers[l].dout);
      }
      for (i64 l = 0; l < L; ++l) {
        align();
        xs.push_back(off);
        if (l > 0) off += S * width[l];
      }
      align();
      for (i64 l = 0; l < L; ++l) {
        gz.push_back(off + (l % 2) * S * zmax);
        zs.push_back(kept[l] ? gz[l] : -1);
        gh.push_back(l + 1 < L ? xs[slot[l]] : -1);
      }
      off += 2 * S * zmax;
      const Layer& last = net.layers[L - 1];
      if (L >= 3 && !recompute) { align(); gz[L - 1] = off; off += S * last.zsize; }
      if (last.residual) { align(); gh[L - 1] = off; off += S * last.dout; }
    }
    if (tangents) { align(); gzt = off; off += S * zmax; }
    align();
    gy = off; off += S * net.J;
    total = off;
  }
};

// What a real call keeps for a later dual call on the same inputs (KLM_SAVE, KLM_REUSE), in reals:
// z_l of every layer (S x zsize) and dE/dx_l of every layer's input before the residual, the
// transposed mixing's output (S x din; l = 0 is dE/dx_0), for a seed of 1.
struct SavedLayout {
  std::vector<i64> z, gx;
  i64 total = 0;
  SavedLayout(const Net& net, i64 S) {
    for (const Layer& ly : net.layers) {
      z.push_back(total); total += S * ly.zsize;
      gx.push_back(total); total += S * ly.din;
    }
  }
};

// What a call computes (bits of `mode`): site energies always; KLM_GRAD_X: seed-weighted
// dE/dx0 and dE/dY; KLM_GRAD_P: seed-weighted dE/dparams, summed over all configurations, or
// one sum per configuration (B x nparams) with KLM_PER_CONFIG.
// KLM_SAVE (a real call): keep z_l and dE/dx_l in `saved` (SavedLayout). KLM_REUSE (a dual call
// with KLM_GRAD_P and no parameter derivatives): the values of z_l and dE/dx_l are the `saved` ones
// of a real call on the same parameters and inputs (dE/dx_l scaled by the seed, which must then be
// constant over each configuration), and the mixing and transposed mixing run on the derivatives
// alone, as real numbers: half the multiply-adds of mixing (value, derivative) pairs. The caller
// checks that `saved` is that call's (fused.py).
// KLM_CONST_CG (with KLM_GRAD_P): the Clebsch-Gordan coefficients are constants for the caller (the
// model's buffers), so their entries of dE/dparams are left 0 instead of computed.
// KLM_RECOMPUTE_Z (tests): no z_l kept in the energy + field layout (see Layout), every one recomputed.
constexpr int KLM_GRAD_X = 1, KLM_GRAD_P = 2, KLM_PER_CONFIG = 4, KLM_SAVE = 8, KLM_REUSE = 16, KLM_CONST_CG = 32,
              KLM_RECOMPUTE_Z = 64;

// Groups of tiles whose parameter gradients are summed in their own buffer: a fixed number, so
// that the sum's rounding is the same for any number of threads.
constexpr i64 KLM_GROUPS = 8;

template <typename T>
void energy_and_grads(const i64* meta, const T* user_params, const T* x0, const T* Y, const i64* table,
                      const i64* inverse, i64 B, i64 N, T eps2, int threads, const T* seed, int mode, T* energy,
                      T* gx0, T* gY, T* gparams, T* work, typename Scalar<T>::real* saved) {
  typedef typename Scalar<T>::real R;
  const Net net = parse(meta);
  const i64 L = net.L, K = net.K, J = net.J, S = B * N;
  const bool want_x = mode & KLM_GRAD_X, want_p = mode & KLM_GRAD_P;
  const bool tangents = (mode & KLM_REUSE) && want_p;
  const Layout lay(net, S, want_p, tangents, mode & KLM_RECOMPUTE_Z);
  const SavedLayout sl(net, S);
  // KLM_SAVE: a real call to the inputs, z_l kept in `saved` instead of recomputed in the backward
  const bool save = !Scalar<T>::dual && (mode & KLM_SAVE) && want_x && !want_p && saved;
  // the caller's parameters followed by the transposed mixing matrices (the backward's layout)
  std::vector<T> pstore(net.nparams + net.nwt);
  std::copy(user_params, user_params + net.nparams, pstore.begin());
  for (const Layer& ly : net.layers)
    for (const InIrrep& ir : ly.in)
      for (i64 k = 0; k < K; ++k)
        for (i64 u = 0; u < ir.mul; ++u)
          for (i64 q = 0; q < ir.Q; ++q)
            pstore[ir.wt + (k * ir.Q + q) * ir.mul + u] = pstore[ir.w + (k * ir.mul + u) * ir.Q + q];
  const T* params = pstore.data();
  // the mixing matrices again, each starting on 64 bytes (rows of 16 or 32 floats then load whole
  // cache lines), for the block kernels: wal + wa[l][a] is layer l's W_a
  std::vector<std::vector<i64>> wa(L);
  i64 nwa = 0;
  for (i64 l = 0; l < L; ++l)
    for (const InIrrep& ir : net.layers[l].in) {
      wa[l].push_back(nwa);
      nwa += (K * ir.mul * ir.Q + 15) / 16 * 16;
    }
  std::vector<T> wstore(nwa + 64 / sizeof(T));
  T* const wal = (T*)(((uintptr_t)wstore.data() + 63) & ~(uintptr_t)63);
  for (i64 l = 0; l < L; ++l)
    for (size_t a = 0; a < net.layers[l].in.size(); ++a) {
      const InIrrep& ir = net.layers[l].in[a];
      std::copy(params + ir.w, params + ir.w + K * ir.mul * ir.Q, wal + wa[l][a]);
    }
  // and transposed, interleaved for the transposed block mixing (see mixt_tile): wpal + wa[l][a]
  // holds layer l's WP_a[(k * Q / P + c) * mul * P + u * P + p] = W_a[(k * mul + u) * Q + c * P + p]
  // (for dual numbers the interleaving of their reals: KLM_REUSE runs mixt_tile on the reals)
  constexpr i64 P = 8 / (i64)sizeof(typename Scalar<T>::real);
  std::vector<T> wpstore(nwa + 64 / sizeof(T));
  T* const wpal = (T*)(((uintptr_t)wpstore.data() + 63) & ~(uintptr_t)63);
  for (i64 l = 0; l < L; ++l)
    for (size_t a = 0; a < net.layers[l].in.size(); ++a) {
      const InIrrep& ir = net.layers[l].in[a];
      if (ir.Q % P != 0) continue;
      T* wp = wpal + wa[l][a];
      for (i64 k = 0; k < K; ++k)
        for (i64 u = 0; u < ir.mul; ++u)
          for (i64 q = 0; q < ir.Q; ++q)
            wp[(k * (ir.Q / P) + q / P) * ir.mul * P + u * P + q % P] = params[ir.w + (k * ir.mul + u) * ir.Q + q];
    }
  // dual numbers: the parameters' values and derivatives apart, for the vectorised mixing
  std::vector<R> pa, pb;
  bool wtan = false;
  if constexpr (Scalar<T>::dual) {
    pa.resize(pstore.size());
    pb.resize(pstore.size());
    for (size_t j = 0; j < pstore.size(); ++j) { pa[j] = pstore[j].a; pb[j] = pstore[j].b; wtan |= pb[j] != R(0); }
  }
  // and the values repeated twice for the block mixing of dual features (see mix_tile_dual)
  std::vector<R> pd(Scalar<T>::dual && !wtan ? 2 * pa.size() : 0);
  for (size_t j = 0; j < pd.size(); ++j) pd[j] = pa[j / 2];
  // KLM_REUSE: the derivatives mixed by the real block kernels, on the weights' values (aligned and
  // interleaved copies of reals, as wal and wpal); the values come from the real call's `saved`
  const bool reuse = tangents && Scalar<T>::dual && !wtan && saved;
  std::vector<R> wrstore(reuse ? nwa + 64 / sizeof(R) : 0), wprstore(wrstore.size());
  const R* walr = nullptr;
  const R* wpalr = nullptr;
  if constexpr (Scalar<T>::dual) {
    if (reuse) {
      R* a = (R*)(((uintptr_t)wrstore.data() + 63) & ~(uintptr_t)63);
      R* b = (R*)(((uintptr_t)wprstore.data() + 63) & ~(uintptr_t)63);
      for (i64 j = 0; j < nwa; ++j) { a[j] = wal[j].a; b[j] = wpal[j].a; }
      walr = a;
      wpalr = b;
    }
  }
  // the derivatives of layer l's dE/dz (KLM_REUSE): two planes of reals in the workspace, alternating
  auto gz_tangents = [&](i64 l) { return (R*)(work + lay.gzt) + (l % 2) * S * lay.zmax; };
  auto saved_z = [&](i64 l) { return (T*)(saved + sl.z[l]); };  // KLM_SAVE (real T)
  // out = mix(gather(src)) with the weights at params + woff (see mix)
  auto mixp = [&](const T* src, i64 rowlen, i64 off, i64 istride, i64 ustride, i64 U, const i64* nbr, i64 base,
                  i64 woff, T* out, i64 ostride_i, i64 ostride_q, i64 D, i64 Q, T* scr) {
    if constexpr (Scalar<T>::dual) {
      if (mix_dual<R>(src, rowlen, off, istride, ustride, U, nbr, base, K, N, pa.data() + woff, pb.data() + woff,
                      wtan, out, ostride_i, ostride_q, D, Q))
        return;
    }
    mix<T>(src, rowlen, off, istride, ustride, U, nbr, base, K, N, params + woff, out, ostride_i, ostride_q, D, Q,
           scr);
  };
  // zk[l]: where the forward leaves z_l for the backward (null: P_l recomputes it)
  std::vector<T*> xs(L), zs(L), gz(L), gh(L), zk(L);
  for (i64 l = 0; l < L; ++l) {
    xs[l] = work + lay.xs[l];
    zs[l] = want_p ? work + lay.zs[l] : nullptr;
    gz[l] = work + lay.gz[l];
    gh[l] = lay.gh[l] < 0 ? nullptr : work + lay.gh[l];
    zk[l] = want_p ? zs[l] : save ? saved_z(l) : lay.zs[l] < 0 ? nullptr : work + lay.zs[l];
  }
  T* const gy = work + lay.gy;
  const i64 zmax = lay.zmax, dmax = lay.dmax, scratch = lay.scratch;
  const i64 nmlp = (i64)net.mlp.size();
  // per thread: the site-by-site mixing's scratch (shapes without a block kernel)
  const i64 per_thread = scratch + 64;
  auto xin = [&](i64 l) -> const T* { return l == 0 ? x0 : xs[l]; };
  auto seed_of = [&](i64 g) -> T { return seed ? seed[g] : T(1); };

  // sites per tile of the passes; per thread and tile, z of the tile's sites, dE/dx of its sites,
  // and a dummy output row for the padding of short blocks (see over_blocks)
  const i64 tile = 32, zdmax = std::max(zmax, dmax);
  // and the rows of one block of W sites, transposed (see Lanes): z and dE/dz (zmax each), Y and dE/dY
  // (J each), x, h, dE/dx, dE/dh and the read-out's (dmax each)
  constexpr i64 W = Lanes<R>::W;
  typedef LV<T> V;
  const i64 lane_rows = 2 * zmax + 2 * J + (7 + 2 * nmlp) * dmax;  // see carve
  const i64 per_tile = tile * zmax + tile * dmax + zdmax + W * lane_rows + 128 / (i64)sizeof(T);  // + room to align
  const std::vector<T> zero(zdmax, T(0));  // the row of a missing neighbour (block kernels)
  // the rows base + (g - first) * stride of the block of W sites from g0 (past hi: the last site again)
  auto block_rows = [&](auto* base, i64 stride, i64 first, i64 g0, i64 hi, auto** out) {
    for (i64 s = 0; s < W; ++s) out[s] = base + (std::min(g0 + s, hi - 1) - first) * stride;
  };
  // a block's transposed rows (lane_rows in all) from p
  struct BlockRows { V *z, *gz, *Y, *gy, *x, *h, *gx, *gh, *grad, *gnext, *as, *ys; };
  auto carve = [&](V* p) {
    BlockRows b;
    b.z = p;
    b.gz = b.z + zmax;
    b.Y = b.gz + zmax;
    b.gy = b.Y + J;
    b.x = b.gy + J;
    b.h = b.x + dmax;
    b.gx = b.h + dmax;
    b.gh = b.gx + dmax;
    b.grad = b.gh + dmax;  // the read-out's dE/d(activation) of the current level
    b.gnext = b.grad + dmax;
    b.as = b.gnext + dmax;  // the read-out's activations a_0 .. a_nmlp, dmax each
    b.ys = b.as + (nmlp + 1) * dmax;  // and pre-activations y_0 .. y_{nmlp-1}
    return b;
  };
  // those of a tile: after its dummy row, on 64 bytes
  auto tile_rows = [&](T* dummy) { return carve((V*)(((uintptr_t)(dummy + zdmax) + 63) & ~(uintptr_t)63)); };
  // the first R entries of the rows base + (g - first) * stride of the block from g0, transposed to out
  auto load_block = [&](const T* base, i64 stride, i64 first, i64 R, i64 g0, i64 hi, V* out) {
    const T* src[W];
    block_rows(base, stride, first, g0, hi, src);
    to_lanes_of<T>(src, R, out);
  };
  // and back, to the rows base + g * stride of the block's sites below hi
  auto store_block = [&](const V* in, T* base, i64 stride, i64 R, i64 g0, i64 hi) {
    T* dst[W];
    block_rows(base, stride, 0, g0, hi, dst);
    from_lanes_of<T>(in, R, dst, (int)std::min<i64>(W, hi - g0));
  };
  // the derivatives of a block's first Rr dual rows, to the rows base + g * Rr of reals (KLM_REUSE)
  auto store_tangents = [&](const V* in, R* base, i64 Rr, i64 g0, i64 hi) {
    if constexpr (Scalar<T>::dual) {
      R* dst[W];
      block_rows(base, Rr, 0, g0, hi, dst);
      from_lanes<R, 2>((const typename Lanes<R>::V*)in + 1, Rr, dst, (int)std::min<i64>(W, hi - g0));
    }
  };

  // z_l = mix(gather(x_l)) of the sites [lo, hi) into the rows z0 + (g - lo) * zsize
  // (spare: room for tile x zmax entries that this call's pass does not use otherwise)
  auto mix_sites = [&](i64 l, i64 lo, i64 hi, T* z0, T* scr, T* dummy, T* spare) {
    const Layer& ly = net.layers[l];
    const T* x = xin(l);
    if constexpr (Scalar<T>::dual) {
      if (reuse) {  // the derivatives of x (every other real) mixed as reals; the values are the saved z
        R* tz = (R*)spare;
        const R* xr = (const R*)x + 1;
        for (size_t a = 0; a < ly.in.size(); ++a) {
          const InIrrep& ir = ly.in[a];
          if (ir.Q == 0) continue;
          if (!mix_tile<R>(xr, 2 * ly.din, 2 * ir.off, 2, 2 * ir.d, ir.mul, table, lo, hi, K, N,
                           (const R*)zero.data(), walr + wa[l][a], tz + ir.z, ly.zsize, (R*)dummy, ir.Q, 1, ir.d,
                           ir.Q))
            for (i64 g = lo; g < hi; ++g) {
              const i64 n = g % N;
              mix<R>(xr, 2 * ly.din, 2 * ir.off, 2, 2 * ir.d, ir.mul, table + n * K, g - n, K, N, pa.data() + ir.w,
                     tz + (g - lo) * ly.zsize + ir.z, ir.Q, 1, ir.d, ir.Q, (R*)scr);
            }
          const R* sz = saved + sl.z[l];
          for (i64 g = lo; g < hi; ++g) {
            T* o = z0 + (g - lo) * ly.zsize;
            const R* v = sz + g * ly.zsize;
            const R* d = tz + (g - lo) * ly.zsize;
            for (i64 e = ir.z; e < ir.z + ir.d * ir.Q; ++e) o[e] = T(v[e], d[e]);
          }
        }
        return;
      }
    }
    const i64 xw = lay.xw[l];  // x_l's rows (din where a parameter gradient keeps them whole)
    for (size_t a = 0; a < ly.in.size(); ++a) {
      const InIrrep& ir = ly.in[a];
      if (ir.Q == 0) continue;
      if (mix_tile<T>(x, xw, ir.off, 1, ir.d, ir.mul, table, lo, hi, K, N, zero.data(), wal + wa[l][a], z0 + ir.z,
                      ly.zsize, dummy, ir.Q, 1, ir.d, ir.Q))
        continue;
      if constexpr (Scalar<T>::dual) {
        if (!wtan && mix_tile_dual<R>(x, xw, ir.off, 1, ir.d, ir.mul, table, lo, hi, K, N, zero.data(),
                                      pd.data() + 2 * ir.w, z0 + ir.z, ly.zsize, dummy, ir.Q, 1, ir.d, ir.Q))
          continue;
      }
      for (i64 g = lo; g < hi; ++g) {
        const i64 n = g % N;
        mixp(x, xw, ir.off, 1, ir.d, ir.mul, table + n * K, g - n, ir.w, z0 + (g - lo) * ly.zsize + ir.z, ir.Q,
             1, ir.d, ir.Q, scr);
      }
    }
  };

  // layer l of the block from g0: b.h = CG(z, Y) [+ x] from the z rows z0 + (g - first) * zsize (and
  // the block's z, Y and x in b.z, b.Y, b.x)
  auto block_h = [&](i64 l, const T* z0, i64 first, i64 g0, i64 hi, const BlockRows& b) {
    const Layer& ly = net.layers[l];
    load_block(z0, ly.zsize, first, ly.zsize, g0, hi, b.z);
    load_block(Y, J, 0, J, g0, hi, b.Y);
    if (ly.residual) load_block(xin(l), lay.xw[l], 0, ly.din, g0, hi, b.x);
    cg_forward_lanes<T>(ly, b.z, b.Y, params, ly.residual ? b.x : nullptr, b.h);
  };

  Passes passes;
  for (i64 l = 0; l + 1 < L; ++l)
    passes.fns.push_back([&, l](i64 lo, i64 hi) {
      Buf<T> buf = alloc<T>(per_thread + per_tile);
      const Layer& ly = net.layers[l];
      T* scr = buf.get();
      T* zt = (T*)(((uintptr_t)(scr + per_thread) + 63) & ~(uintptr_t)63);
      T* dummy = zt + tile * zmax + tile * dmax;
      T* z0 = zk[l] ? zk[l] + lo * ly.zsize : zt;
      mix_sites(l, lo, hi, z0, scr, dummy, zt);
      const BlockRows b = tile_rows(dummy);
      for (i64 g0 = lo; g0 < hi; g0 += W) {
        const i64 xw = lay.xw[l + 1];  // the entries of x_{l+1} that are read
        prefetch_w(xs[l + 1] + g0 * xw, std::min<i64>(W, hi - g0) * xw);
        block_h(l, z0, lo, g0, hi, b);
        act_forward_lanes<T>(b.h, b.h, ly, eps2);
        store_block(b.h, xs[l + 1], xw, xw, g0, hi);
      }
    });
  // output convolution + read-out forward and backward + the convolution's per-site backward
  passes.fns.push_back([&](i64 lo, i64 hi) {
    Buf<T> buf = alloc<T>(per_thread + per_tile);
    const i64 l = L - 1;
    const Layer& ly = net.layers[l];
    T* scr = buf.get();
    T* zt = (T*)(((uintptr_t)(scr + per_thread) + 63) & ~(uintptr_t)63);
    T* dummy = zt + tile * zmax + tile * dmax;
    T* z0 = zk[l] ? zk[l] + lo * ly.zsize : zt;
    mix_sites(l, lo, hi, z0, scr, dummy, zt);
    const BlockRows b = tile_rows(dummy);
    for (i64 g0 = lo; g0 < hi; g0 += W) {
      const int n = (int)std::min<i64>(W, hi - g0);
      if (want_x || want_p) {
        prefetch_w(gz[l] + g0 * ly.zsize, n * ly.zsize);
        if (gh[l]) prefetch_w(gh[l] + g0 * ly.dout, n * ly.dout);
      }
      block_h(l, z0, lo, g0, hi, b);
      V seeds;
      for (i64 s = 0; s < W; ++s) set_lane<T>(seeds, (int)s, seed_of(std::min(g0 + s, hi - 1)));
      const V e = readout_lanes<T>(net, params, b.h, ly.dout, seeds, eps2, dmax, b.as, b.ys, b.grad, b.gnext);
      for (int s = 0; s < n; ++s) energy[g0 + s] = get_lane<T>(e, s);
      if (!want_x && !want_p) continue;
      cg_backward_lanes<T>(ly, b.z, b.Y, J, params, b.grad, b.gz, nullptr, b.gy);
      store_block(b.gz, gz[l], ly.zsize, ly.zsize, g0, hi);
      if (reuse) store_tangents(b.gz, gz_tangents(l), ly.zsize, g0, hi);
      store_block(b.gy, gy, J, J, g0, hi);
      if (gh[l]) store_block(b.grad, gh[l], ly.dout, ly.dout, g0, hi);
    }
  });
  // P_l: dE/dx_{l+1} from dE/dz_{l+1} of the neighbours, then layer l's per-site backward (z_l and
  // h_l recomputed; dE/dh_l goes where x_{l+1} was, dE/dY is updated in place: see Layout)
  for (i64 l = L - 2; l >= (want_x ? -1 : 0) && (want_x || want_p); --l)
    passes.fns.push_back([&, l](i64 lo, i64 hi) {
      Buf<T> buf = alloc<T>(per_thread + per_tile);
      const Layer& up = net.layers[l + 1];
      T* scr = buf.get();
      T* zt = (T*)(((uintptr_t)(scr + per_thread) + 63) & ~(uintptr_t)63);  // z_l of the tile's sites
      T* gxt = zt + tile * zmax;      // dE/dx_{l+1} of the tile's sites
      T* dummy = gxt + tile * dmax;
      const T* gzu = gz[l + 1];
      if constexpr (Scalar<T>::dual) {
        if (reuse) {  // the derivatives by the real transposed mixing; the values saved, times the seed
          R* tx = (R*)zt;
          const R* gzr = gz_tangents(l + 1);
          const R* sx = saved + sl.gx[l + 1];
          for (size_t a = 0; a < up.in.size(); ++a) {
            const InIrrep& ir = up.in[a];
            if (ir.Q != 0 && !mixt_tile<R>(gzr, up.zsize, ir.z, ir.Q, inverse, lo, hi, K, N, (const R*)zero.data(),
                                           walr + wa[l + 1][a], wpalr + wa[l + 1][a], tx + ir.off, up.din, (R*)dummy,
                                           1, ir.d, ir.d, ir.mul))
              for (i64 g = lo; g < hi; ++g) {
                const i64 n = g % N;
                mix<R>(gzr, up.zsize, ir.z, ir.Q, 1, ir.Q, inverse + n * K, g - n, K, N, pa.data() + ir.wt,
                       tx + (g - lo) * up.din + ir.off, 1, ir.d, ir.d, ir.mul, (R*)scr);
              }
            for (i64 g = lo; g < hi; ++g) {
              const R sd = seed_of(g).a;
              T* o = gxt + (g - lo) * up.din;
              const R* v = sx + g * up.din;
              const R* d = tx + (g - lo) * up.din;
              for (i64 e = ir.off; e < ir.off + ir.mul * ir.d; ++e) o[e] = ir.Q == 0 ? T(0) : T(sd * v[e], d[e]);
            }
          }
        }
      }
      for (size_t a = 0; a < up.in.size() && !reuse; ++a) {
        const InIrrep& ir = up.in[a];
        if (ir.Q == 0) {
          for (i64 g = lo; g < hi; ++g)
            for (i64 u = 0; u < ir.mul * ir.d; ++u) gxt[(g - lo) * up.din + ir.off + u] = T(0);
          continue;
        }
        // gx[off + u * d + i] = sum_k sum_q gz[inv_k][z + i * Q + q] WT[(k * Q + q) * mul + u]
        if (mixt_tile<T>(gzu, up.zsize, ir.z, ir.Q, inverse, lo, hi, K, N, zero.data(), wal + wa[l + 1][a],
                         wpal + wa[l + 1][a], gxt + ir.off, up.din, dummy, 1, ir.d, ir.d, ir.mul))
          continue;
        if constexpr (Scalar<T>::dual) {  // the transposed weights WT
          if (!wtan && mix_tile_dual<R>(gzu, up.zsize, ir.z, ir.Q, 1, ir.Q, inverse, lo, hi, K, N, zero.data(),
                                        pd.data() + 2 * ir.wt, gxt + ir.off, up.din, dummy, 1, ir.d, ir.d, ir.mul))
            continue;
          if (!wtan && mixt_tile_dual<R>(gzu, up.zsize, ir.z, ir.Q, inverse, lo, hi, K, N, zero.data(),
                                         pd.data() + 2 * ir.wt, gxt + ir.off, up.din, dummy, 1, ir.d, ir.mul))
            continue;
        }
        for (i64 g = lo; g < hi; ++g) {
          const i64 n = g % N;
          mixp(gzu, up.zsize, ir.z, ir.Q, 1, ir.Q, inverse + n * K, g - n, ir.wt, gxt + (g - lo) * up.din + ir.off, 1,
               ir.d, ir.d, ir.mul, scr);
        }
      }
      if constexpr (!Scalar<T>::dual) {
        if (save) std::copy(gxt, gxt + (hi - lo) * up.din, saved + sl.gx[l + 1] + lo * up.din);
      }
      if (up.residual)  // dE/dx_{l+1} += dE/dh_{l+1} (the tile's rows are contiguous)
        for (i64 j = 0; j < (hi - lo) * up.din; ++j) gxt[j] += gh[l + 1][lo * up.dout + j];
      if (l < 0) {
        for (i64 j = 0; j < (hi - lo) * up.din; ++j) gx0[lo * up.din + j] = gxt[j];
        for (i64 j = 0; j < (hi - lo) * J; ++j) gY[lo * J + j] = gy[lo * J + j];
        return;
      }
      const Layer& ly = net.layers[l];
      T* z0 = zk[l] ? zk[l] + lo * ly.zsize : zt;
      if (!zk[l]) mix_sites(l, lo, hi, zt, scr, dummy, zt);
      const BlockRows b = tile_rows(dummy);
      for (i64 g0 = lo; g0 < hi; g0 += W) {
        const i64 n = std::min<i64>(W, hi - g0);
        prefetch_w(gz[l] + g0 * ly.zsize, n * ly.zsize);
        prefetch_w(gh[l] + g0 * ly.dout, n * ly.dout);
        load_block(gxt, up.din, lo, up.din, g0, hi, b.gx);
        load_block(gy, J, 0, J, g0, hi, b.gy);
        block_h(l, z0, lo, g0, hi, b);
        act_backward_lanes<T>(b.h, b.gx, b.gh, ly, eps2);
        cg_backward_lanes<T>(ly, b.z, b.Y, J, params, b.gh, b.gz, b.gy, b.gy);
        store_block(b.gz, gz[l], ly.zsize, ly.zsize, g0, hi);
        if (reuse) store_tangents(b.gz, gz_tangents(l), ly.zsize, g0, hi);
        store_block(b.gy, gy, J, J, g0, hi);
        store_block(b.gh, gh[l], ly.dout, ly.dout, g0, hi);
      }
    });
  passes.run(S, tile, threads);
  if (!want_p) return;

  // dE/dparams: per site, the outer products of the gathered inputs with dE/dz (mixing weights),
  // the Clebsch-Gordan products with dE/dh (coefficients) and the read-out's weight gradient.
  // Each group of tiles sums into its own buffer, taken by exactly one thread (no redo: sums).
  // groups: [lo, hi) ranges of whole tiles, within one configuration with KLM_PER_CONFIG
  std::vector<i64> glo, ghi, gconf;
  const bool per_config = mode & KLM_PER_CONFIG;
  const i64 nconf = per_config ? B : 1;
  for (i64 b = 0; b < nconf; ++b) {
    const i64 first = per_config ? b * N : 0, count = per_config ? N : S;
    // KLM_GROUPS in all (at least one per configuration): every group is a row of sums to clear
    // and add up (nparams each; a few MB with many configurations)
    const i64 nt = (count + tile - 1) / tile, ng = std::min<i64>((KLM_GROUPS + nconf - 1) / nconf, nt);
    for (i64 q = 0; q < ng; ++q) {
      glo.push_back(first + std::min(count, nt * q / ng * tile));
      ghi.push_back(first + std::min(count, nt * (q + 1) / ng * tile));
      gconf.push_back(b);
    }
  }
  const i64 G = (i64)glo.size();
  std::vector<T> sums(G * net.nparams, T(0));
  std::vector<R> split(Scalar<T>::dual ? 2 * G * net.nparams : 0, R(0));  // dual: mixing weights' sums
  std::atomic<i64> next_group(0);
  // the Clebsch-Gordan coefficients' and the read-out's gradients: per thread and group, one lane
  // sum per parameter over blocks of W sites (from the group's start: the same blocks for any
  // number of threads), added up once at the group's end
  std::vector<i64> cgoff(L + 1, 0);
  for (i64 l = 0; l < L; ++l) cgoff[l + 1] = cgoff[l] + (i64)net.layers[l].cg.size();
  i64 nro = 0;
  for (const Linear& li : net.mlp) nro += li.nout * (li.nin + 1);
  auto group_work = [&]() {
    Buf<T> buf = alloc<T>(W * lane_rows + 64 / (i64)sizeof(T));
    const BlockRows b = carve((V*)(((uintptr_t)buf.get() + 63) & ~(uintptr_t)63));
    std::vector<V> acc(cgoff[L] + nro);
    std::vector<R> osplit(2 * 32 * zmax);  // a block's dE/dz split into values and derivatives (outer_tile)
    typename Lanes<R>::IV lane;
    for (int k = 0; k < W; ++k) lane[k] = k;
    for (;;) {
      const i64 grp = next_group.fetch_add(1);
      if (grp >= G) break;
      T* gp = sums.data() + grp * net.nparams;
      R* gpa = Scalar<T>::dual ? split.data() + grp * net.nparams : nullptr;
      R* gpb = Scalar<T>::dual ? split.data() + (G + grp) * net.nparams : nullptr;
      const i64 lo = glo[grp], hi = ghi[grp];
      // the mixing weights: blocks of 32 sites from the group's start (outer_tile), else site by site
      for (i64 g0 = lo; g0 < hi; g0 += 32) {
        const i64 nb = std::min<i64>(32, hi - g0);
        for (i64 l = 0; l < L; ++l) {
          const Layer& ly = net.layers[l];
          const T* x = xin(l);
          for (const InIrrep& ir : ly.in) {
            if (ir.Q == 0) continue;
            if (outer_tile<T>(x, ly.din, ir.off, ir.d, ir.mul, table, g0, nb, K, N, zero.data(),
                              gz[l] + g0 * ly.zsize + ir.z, ly.zsize, ir.d, ir.Q, gp + ir.w, gpa ? gpa + ir.w : nullptr,
                              gpb ? gpb + ir.w : nullptr, osplit.data()))
              continue;
            for (i64 g = g0; g < g0 + nb; ++g) {
              const i64 n = g % N;
              outer<T>(x, ly.din, ir.off, ir.d, ir.mul, table + n * K, g - n, K, N, gz[l] + g * ly.zsize + ir.z, ir.d,
                       ir.Q, gp + ir.w, gpa ? gpa + ir.w : nullptr, gpb ? gpb + ir.w : nullptr);
            }
          }
        }
      }
      for (V& a : acc) a = V{};
      for (i64 g0 = lo; g0 < hi; g0 += W) {
        const auto real = lane < lane * 0 + (typename Lanes<R>::I)std::min<i64>(W, hi - g0);  // lanes of sites
        const V zero = V{};
        load_block(Y, J, 0, J, g0, hi, b.Y);
        for (i64 l = 0; l < L && !(mode & KLM_CONST_CG); ++l) {
          const Layer& ly = net.layers[l];
          load_block(zs[l], ly.zsize, 0, ly.zsize, g0, hi, b.z);
          load_block(gh[l], ly.dout, 0, ly.dout, g0, hi, b.gh);
          // coefficient e: out_c[w][k] += coef * Y[j] * z[zb + w], so dE/dcoef = Y[j] sum_w z[zb + w] gout_c[w][k]
          for (size_t x = 0; x < ly.cg.size(); ++x) {
            const CGEntry& e = ly.cg[x];
            const OutIrrep& o = ly.out[e.c];
            V t = V{};
            for (i64 w = 0; w < o.mul; ++w) t += b.z[e.zb + w] * b.gh[o.off + w * o.d + e.k];
            acc[cgoff[l] + x] += b.Y[e.j] * lsel(real, t, zero);
          }
        }
        // the read-out's gradient: h of the last layer again, seed 0 in the lanes past hi
        block_h(L - 1, zs[L - 1], 0, g0, hi, b);
        V seeds;
        for (i64 s = 0; s < W; ++s) set_lane<T>(seeds, (int)s, g0 + s < hi ? seed_of(g0 + s) : T(0));
        readout_lanes<T>(net, params, b.h, net.layers[L - 1].dout, seeds, eps2, dmax, b.as, b.ys, b.grad, b.gnext,
                         acc.data() + cgoff[L]);
      }
      auto total = [&](const V& a) {
        T t = T(0);
        for (int k = 0; k < W; ++k) t += get_lane<T>(a, k);
        return t;
      };
      for (i64 l = 0; l < L; ++l)
        for (size_t x = 0; x < net.layers[l].cg.size(); ++x) gp[net.layers[l].cg[x].p] += total(acc[cgoff[l] + x]);
      i64 at = cgoff[L];
      for (const Linear& li : net.mlp) {
        for (i64 j = 0; j < li.nout * li.nin; ++j) gp[li.w + j] += total(acc[at + j]);
        for (i64 o = 0; o < li.nout; ++o) gp[li.b + o] += total(acc[at + li.nout * li.nin + o]);
        at += li.nout * (li.nin + 1);
      }
    }
  };
  {
    const int R = (int)std::max<i64>(1, std::min<i64>(threads, G));
    std::vector<std::thread> pool;
    for (int r = 1; r < R; ++r) pool.emplace_back(group_work);
    group_work();
    for (auto& th : pool) th.join();
  }
  // each configuration's sum over its groups, in the groups' order (one pass over each group's row)
  for (i64 j = 0; j < nconf * net.nparams; ++j) gparams[j] = T(0);
  for (i64 grp = 0; grp < G; ++grp) {
    T* out = gparams + gconf[grp] * net.nparams;
    const T* sg = sums.data() + grp * net.nparams;
    for (i64 j = 0; j < net.nparams; ++j) {
      T total = out[j] + sg[j];
      if constexpr (Scalar<T>::dual) total += T(split[grp * net.nparams + j], split[(G + grp) * net.nparams + j]);
      out[j] = total;
    }
  }
}

}  // namespace

extern "C" {
// the vector width the build targets: the block kernels are written for 64-byte vectors (AVX-512);
// narrower builds run them as pieces, slower than the eager path (fused.py reads this)
int klm_ecnn_vector_bytes() {
#if defined(__AVX512F__)
  return 64;
#elif defined(__AVX__)
  return 32;
#else
  return 16;
#endif
}
i64 klm_ecnn_workspace(const i64* meta, i64 sites, int mode) {
  return Layout(parse(meta), sites, mode & KLM_GRAD_P, (mode & KLM_REUSE) && (mode & KLM_GRAD_P),
                mode & KLM_RECOMPUTE_Z).total;
}
// the reals that KLM_SAVE keeps (SavedLayout)
i64 klm_ecnn_saved(const i64* meta, i64 sites) { return SavedLayout(parse(meta), sites).total; }
#define KLM_ENTRY(NAME, T, R)                                                                                    \
  void NAME(const i64* meta, const T* params, const T* x0, const T* Y, const i64* table, const i64* inverse,     \
            i64 B, i64 N, double eps2, int threads, const T* seed, int mode, T* energy, T* gx0, T* gY,          \
            T* gparams, T* work, R* saved) {                                                                     \
    energy_and_grads<T>(meta, params, x0, Y, table, inverse, B, N, T((R)eps2), threads, seed, mode, energy, gx0, \
                        gY, gparams, work, saved);                                                               \
  }
KLM_ENTRY(klm_ecnn_f32, float, float)
KLM_ENTRY(klm_ecnn_f64, double, double)
KLM_ENTRY(klm_ecnn_dual_f32, Dual<float>, float)
KLM_ENTRY(klm_ecnn_dual_f64, Dual<double>, double)
#undef KLM_ENTRY
}
"""
