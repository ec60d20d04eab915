// Paged attention on CPU (contract: amd_llama4/ops/paged_attention.py `paged_attention`): the flat new
// tokens of B sequences attend to their keys read in place from the block-table cache, never gathered
// into a dense copy, so a step costs what its sequences' real keys cost.
//
// A task is (sequence, KV head, tile of query tokens[, key split]): the G = Hq/Hkv query heads of the
// KV head times the tile's tokens are R rows sharing every K/V tile read. Keys go KT at a time: the
// tile is decoded to fp32 in L1 (fp8 through a 256-entry table times the per-tensor/head/token scale,
// rounded to the query dtype as the reference's dequantisation is), K transposed so that q.K runs as
// broadcast-FMAs over KT keys without horizontal sums. Online softmax per row; a row only visits the
// slot range it may see (causal, and its own chunk on chunked layers). Long key ranges split into
// parts merged at the end (flash-decoding), so one long sequence does not leave threads idle.
// Vector code is written with GCC/Clang vector extensions and compiled for AVX-512, AVX2 and the
// baseline (cpu_isa_level), as linear.cpp does.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "al4_fp8.h"
#include "cpu_ops.h"
#include "moe_gemm_kernel.h"  // AL4_INLINE, load_wvec

namespace al4::cpu {

namespace {

constexpr int kKT = 32;               // keys per tile: a multiple of every vector width (16, 8, 4)
constexpr int kRowsPerTask = 64;      // query rows (tokens x heads of a group) per task: K/V tile decoding amortised
constexpr int64_t kMinSplit = 256;    // keys per split at least: the merge must stay cheap
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// A KV scale: none, per tensor, per KV head or per token [num_blocks, block_size, Hkv] (any strides).
struct KvScale {
  const float* p = nullptr;
  int kind = 0;  // 0 none, 1 tensor, 2 head, 3 token
  int64_t sb = 0, ss = 0, sh = 0;
  AL4_INLINE float at(int64_t blk, int64_t off, int64_t h) const {
    switch (kind) {
      case 1: return p[0];
      case 2: return p[h * sh];
      case 3: return p[blk * sb + off * ss + h * sh];
      default: return 1.0f;
    }
  }
};

struct Args {
  const void* q = nullptr;
  int64_t q_st = 0, q_sh = 0;  // q [T, Hq, D]: token / head strides (elements), head dim contiguous
  void* out = nullptr;         // [T, Hq, D] contiguous
  const void *kc = nullptr, *vc = nullptr;
  int64_t kc_sb = 0, kc_ss = 0, kc_sh = 0, vc_sb = 0, vc_ss = 0, vc_sh = 0;
  const int32_t* bt = nullptr;
  int64_t bt_sb = 0;
  const int32_t *q_pos = nullptr, *first_pos = nullptr, *seq_lens = nullptr;
  int64_t Hq = 0, Hkv = 0, D = 0, Dp = 0, G = 0, bs = 0, chunk = 0;  // chunk 0: full causal
  float scale = 1.0f;
  bool q_bf16 = false;
  int kv = 0;  // 0: q's dtype, 1: e4m3fn, 2: e4m3fnuz
  const float* table = nullptr;
  KvScale ks, vs;
};

// One unit of work; part >= 0: a split of a longer key range, written to the partials for merging.
struct Task {
  int64_t b, h, t0, t1, k0, k1, part, cost;
};

// Visible slot range [lo, hi) of the query at absolute position qp in sequence b.
AL4_INLINE void key_range(const Args& a, int64_t b, int64_t qp, int64_t& lo, int64_t& hi) {
  const int64_t first = a.first_pos[b];
  hi = std::min<int64_t>(a.seq_lens[b], qp - first + 1);
  lo = a.chunk > 0 ? std::max<int64_t>(0, (qp >= 0 ? qp / a.chunk : -1) * a.chunk - first) : 0;
}

// Per-thread buffers (fp32): q rows [R, Dp], K^T tile [Dp, KT], V tile [KT, Dp], acc [R, Dp].
struct Scratch {
  std::vector<float> q, kt, v, acc, m, l;
  std::vector<int64_t> lo, hi;
  int64_t R_ = -1, Dp_ = -1;
  // Kept per thread between calls (thread_local at the call) and cleared only when the shape
  // changes: allocating and zeroing ~50 KB per call was a third of a decode step's attention.
  // Pad columns [D, Dp) are never written, so they stay zero.
  void size(int64_t R, int64_t Dp) {
    if (R == R_ && Dp == Dp_) return;
    R_ = R, Dp_ = Dp;
    R += 8;  // spare rows of the last register block
    q.assign(size_t(R * Dp), 0.0f), acc.assign(size_t(R * Dp), 0.0f);
    kt.assign(size_t(Dp * kKT), 0.0f), v.assign(size_t(kKT * Dp), 0.0f);
    m.resize(size_t(R)), l.resize(size_t(R)), lo.resize(size_t(R)), hi.resize(size_t(R));
  }
};

// e^x on VW lanes for x <= 0: 2^n * p(r), n = round(x / ln 2), r = x - n ln 2 in two
// parts, p a degree-6 Taylor polynomial (relative error ~2e-7, below the fp32 reference's rounding).
template <typename V, typename VI>
AL4_INLINE V vexp(V x) {
  const V lo = V{} - 87.0f;
  x = x < lo ? lo : x;  // lane-wise select; e^-87 ~ 1.6e-38 underflows to ~0 after scaling
  x = x > 0.0f ? 0.0f : x;  // lanes past a row's visible keys may exceed the max: unused, kept finite
  V n = x * 1.44269504088896341f;
  n = __builtin_convertvector(__builtin_convertvector(n + (n < 0.0f ? -0.5f : 0.5f), VI), V);
  const V r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  V p = V{} + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const VI e = (__builtin_convertvector(n, VI) + 127) << 23;
  V scale;
  __builtin_memcpy(&scale, &e, sizeof(V));
  return p * scale;
}

template <typename Q>
AL4_INLINE float kv_elem(const Args& a, const void* base, int64_t i, float s) {
  if (a.kv == 0) return load_f32(static_cast<const Q*>(base), i);
  // fp8: float(x) * scale, then the reference's cast to the query dtype
  return round_to<Q>(a.table[static_cast<const uint8_t*>(base)[i]] * s);
}

typedef float f16v __attribute__((vector_size(64)));

// out[c] = lane c of r[0..15]: a 16 x 16 transpose in four shuffle stages (64 shuffles where the
// scalar transpose costs a load, convert and store per element; the ISA's own widths when lowered).
AL4_INLINE void transpose16(const f16v* r, f16v* out) {
  f16v t[16], u[16], w[4][2], x[4][2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // 32-bit interleave of row pairs, per 128-bit lane
    t[2 * i] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
    t[2 * i + 1] = __builtin_shufflevector(r[2 * i], r[2 * i + 1], 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  }
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k)  // 64-bit interleave: lane L of u[4k + m] = rows 4k..4k+3 at column 4L + m
#pragma GCC unroll 2
    for (int p = 0; p < 2; ++p) {
      u[4 * k + 2 * p] = __builtin_shufflevector(t[4 * k + p], t[4 * k + 2 + p], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
      u[4 * k + 2 * p + 1] = __builtin_shufflevector(t[4 * k + p], t[4 * k + 2 + p], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    }
#pragma GCC unroll 4
  for (int m = 0; m < 4; ++m) {  // 128-bit lanes: gather lane L of u[m], u[4 + m], u[8 + m], u[12 + m]
    w[m][0] = __builtin_shufflevector(u[m], u[4 + m], 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    w[m][1] = __builtin_shufflevector(u[m], u[4 + m], 8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    x[m][0] = __builtin_shufflevector(u[8 + m], u[12 + m], 0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    x[m][1] = __builtin_shufflevector(u[8 + m], u[12 + m], 8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
#pragma GCC unroll 2
    for (int hf = 0; hf < 2; ++hf) {
      out[8 * hf + m] = __builtin_shufflevector(w[m][hf], x[m][hf], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
      out[8 * hf + 4 + m] = __builtin_shufflevector(w[m][hf], x[m][hf], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    }
  }
}

// 16 elements of row p from column d as fp32 (zeros for a missing row).
template <typename Q>
AL4_INLINE f16v load16(const Q* p, int64_t d) {
  f16v v{};
  if (p) load_wvec(p + d, v);
  return v;
}

// Decodes keys/values of slots [k0, k0 + n) (n <= KT) of sequence b, KV head h, into s.kt (transposed)
// and s.v; columns past n are zero.
template <typename Q>
AL4_INLINE void load_tile(const Args& a, int64_t b, int64_t h, int64_t k0, int64_t n, Scratch& s) {
  if (a.kv == 0) {  // a cache of q's dtype: 16 x 16 blocks of K transposed in registers
    static_assert(kKT % 16 == 0, "key tiles are whole 16-key blocks");
    const int64_t D16 = a.D / 16 * 16;
    for (int64_t j0 = 0; j0 < kKT; j0 += 16) {
      const Q* kr[16];
      for (int64_t i = 0; i < 16; ++i) {
        const int64_t j = j0 + i, slot = k0 + j;
        float* vrow = s.v.data() + j * a.Dp;
        if (j >= n) {
          kr[i] = nullptr;
          std::fill(vrow, vrow + a.D, 0.0f);
          continue;
        }
        const int64_t blk = a.bt[b * a.bt_sb + slot / a.bs], off = slot % a.bs;
        kr[i] = static_cast<const Q*>(a.kc) + blk * a.kc_sb + off * a.kc_ss + h * a.kc_sh;
        const Q* vq = static_cast<const Q*>(a.vc) + blk * a.vc_sb + off * a.vc_ss + h * a.vc_sh;
        for (int64_t d = 0; d < a.D; ++d) vrow[d] = load_f32(vq, d);
      }
      for (int64_t d0 = 0; d0 < D16; d0 += 16) {
        f16v r[16], c[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) r[i] = load16(kr[i], d0);
        transpose16(r, c);
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) __builtin_memcpy(s.kt.data() + (d0 + i) * kKT + j0, &c[i], sizeof(f16v));
      }
      for (int64_t d = D16; d < a.D; ++d)  // head-dim tail
        for (int64_t i = 0; i < 16; ++i) s.kt[size_t(d * kKT + j0 + i)] = kr[i] ? load_f32(kr[i], d) : 0.0f;
    }
    return;
  }
  const size_t esz = 1;  // fp8 from here on
  for (int64_t j = 0; j < kKT; ++j) {
    float* vrow = s.v.data() + j * a.Dp;
    if (j >= n) {
      for (int64_t d = 0; d < a.D; ++d) s.kt[size_t(d * kKT + j)] = 0.0f, vrow[d] = 0.0f;
      continue;
    }
    const int64_t slot = k0 + j, blk = a.bt[b * a.bt_sb + slot / a.bs], off = slot % a.bs;
    const char* kp = static_cast<const char*>(a.kc) + (blk * a.kc_sb + off * a.kc_ss + h * a.kc_sh) * esz;
    const char* vp = static_cast<const char*>(a.vc) + (blk * a.vc_sb + off * a.vc_ss + h * a.vc_sh) * esz;
    const float ksc = a.ks.at(blk, off, h), vsc = a.vs.at(blk, off, h);
    for (int64_t d = 0; d < a.D; ++d) s.kt[size_t(d * kKT + j)] = kv_elem<Q>(a, kp, d, ksc);
    for (int64_t d = 0; d < a.D; ++d) vrow[d] = kv_elem<Q>(a, vp, d, vsc);
  }
}

template <int VW, typename Q>
AL4_INLINE void run_task(const Args& a, const Task& tk, Scratch& s, float* partial) {
  typedef float vec __attribute__((vector_size(VW * 4)));
  typedef int32_t ivec __attribute__((vector_size(VW * 4)));
  constexpr int NS = kKT / VW;  // score vectors per row
  constexpr int RB = NS >= 8 ? 1 : 8 / NS;  // rows per register block: RB * NS score accumulators
  const int64_t G = a.G, Dp = a.Dp, R = (tk.t1 - tk.t0) * G;
  int64_t kmin = tk.k1, kmax = tk.k0;
  for (int64_t r = R; r < R + RB; ++r) s.lo[r] = s.hi[r] = 0;  // the last register block's spare rows
  for (int64_t r = 0; r < R; ++r) {  // row r: token t0 + r / G, query head h * G + r % G
    const int64_t t = tk.t0 + r / G, head = tk.h * G + r % G;
    const Q* qr = static_cast<const Q*>(a.q) + t * a.q_st + head * a.q_sh;
    float* qf = s.q.data() + r * Dp;
    for (int64_t d = 0; d < a.D; ++d) qf[d] = load_f32(qr, d) * a.scale;
    int64_t lo, hi;
    key_range(a, tk.b, a.q_pos[t], lo, hi);
    s.lo[r] = std::max(lo, tk.k0), s.hi[r] = std::min(hi, tk.k1);
    if (s.lo[r] < s.hi[r]) kmin = std::min(kmin, s.lo[r]), kmax = std::max(kmax, s.hi[r]);
    s.m[r] = kNegInf, s.l[r] = 0.0f;
    std::fill(s.acc.begin() + r * Dp, s.acc.begin() + (r + 1) * Dp, 0.0f);
  }
  // Tiles start on a multiple of KT from the task's first visible key.
  for (int64_t k0 = kmin; k0 < kmax; k0 += kKT) {
    const int64_t n = std::min<int64_t>(kKT, kmax - k0);
    load_tile<Q>(a, tk.b, tk.h, k0, n, s);
    // RB rows at a time: each K^T / V vector loaded feeds RB FMAs (R is padded to RB: spare rows see nothing).
    for (int64_t r0 = 0; r0 < R; r0 += RB) {
      int64_t jlo[RB], jhi[RB], glo = kKT, ghi = 0;
      for (int rr = 0; rr < RB; ++rr) {
        jlo[rr] = std::max(s.lo[r0 + rr], k0) - k0, jhi[rr] = std::min(s.hi[r0 + rr], k0 + n) - k0;
        if (jlo[rr] < jhi[rr]) glo = std::min(glo, jlo[rr]), ghi = std::max(ghi, jhi[rr]);
      }
      if (glo >= ghi) continue;
      vec sv[RB][NS];
#pragma GCC unroll 16
      for (int rr = 0; rr < RB; ++rr)
#pragma GCC unroll 8
        for (int i = 0; i < NS; ++i) sv[rr][i] = vec{};
      const float* qf = s.q.data() + r0 * Dp;
      for (int64_t d = 0; d < a.D; ++d) {
        const float* kr = s.kt.data() + d * kKT;
        vec kv[NS];
#pragma GCC unroll 8
        for (int i = 0; i < NS; ++i) __builtin_memcpy(&kv[i], kr + i * VW, sizeof(vec));
#pragma GCC unroll 16
        for (int rr = 0; rr < RB; ++rr) {
          const vec qd = vec{} + qf[rr * Dp + d];
#pragma GCC unroll 8
          for (int i = 0; i < NS; ++i) sv[rr][i] += qd * kv[i];
        }
      }
      float p[RB][kKT], alpha[RB];
      for (int rr = 0; rr < RB; ++rr) {
        const int64_t r = r0 + rr;
        alpha[rr] = 1.0f;
        if (jlo[rr] >= jhi[rr]) {
          std::fill(p[rr], p[rr] + kKT, 0.0f);
          continue;
        }
        float* sc = p[rr];
        __builtin_memcpy(sc, sv[rr], sizeof(p[rr]));
        float mx = kNegInf;
        for (int64_t j = jlo[rr]; j < jhi[rr]; ++j) mx = std::max(mx, sc[j]);
        const float m_new = std::max(s.m[r], mx);
        alpha[rr] = std::exp(s.m[r] - m_new);  // exp(-inf) = 0 on the first tile
#pragma GCC unroll 8
        for (int i = 0; i < NS; ++i) sv[rr][i] = vexp<vec, ivec>(sv[rr][i] - m_new);
        __builtin_memcpy(sc, sv[rr], sizeof(p[rr]));
        float sum = 0.0f;
        for (int64_t j = 0; j < kKT; ++j) {  // zero the keys this row may not see
          if (j < jlo[rr] || j >= jhi[rr]) sc[j] = 0.0f;
          sum += sc[j];
        }
        s.l[r] = s.l[r] * alpha[rr] + sum, s.m[r] = m_new;
      }
      for (int64_t d0 = 0; d0 < Dp; d0 += VW) {  // acc = acc * alpha + sum_j p_j v_j
        vec av[RB];
#pragma GCC unroll 16
        for (int rr = 0; rr < RB; ++rr) {
          __builtin_memcpy(&av[rr], s.acc.data() + (r0 + rr) * Dp + d0, sizeof(vec));
          av[rr] *= alpha[rr];
        }
        for (int64_t j = glo; j < ghi; ++j) {
          vec vv;
          __builtin_memcpy(&vv, s.v.data() + j * Dp + d0, sizeof(vec));
#pragma GCC unroll 16
          for (int rr = 0; rr < RB; ++rr) av[rr] += p[rr][j] * vv;
        }
#pragma GCC unroll 16
        for (int rr = 0; rr < RB; ++rr) __builtin_memcpy(s.acc.data() + (r0 + rr) * Dp + d0, &av[rr], sizeof(vec));
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const float* acc = s.acc.data() + r * Dp;
    if (partial) {  // [R][Dp + 2]: acc, m, l, merged by merge_parts
      float* p = partial + r * (Dp + 2);
      std::copy(acc, acc + Dp, p);
      p[Dp] = s.m[r], p[Dp + 1] = s.l[r];
      continue;
    }
    const int64_t t = tk.t0 + r / G, head = tk.h * G + r % G;
    Q* o = static_cast<Q*>(a.out) + (t * a.Hq + head) * a.D;
    const float inv = s.l[r] > 0.0f ? 1.0f / s.l[r] : 0.0f;  // a query with no visible key writes 0
    for (int64_t d = 0; d < a.D; ++d) store_f32(o, d, acc[d] * inv);
  }
}

// Merges the splits of one (sequence, head, token tile): o = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s.
template <typename Q>
void merge_parts(const Args& a, const Task& tk, const float* parts, int64_t nparts, int64_t stride) {
  const int64_t G = a.G, Dp = a.Dp, R = (tk.t1 - tk.t0) * G;
  std::vector<float> o(size_t(a.D));
  for (int64_t r = 0; r < R; ++r) {
    float M = kNegInf, L = 0.0f;
    for (int64_t p = 0; p < nparts; ++p) M = std::max(M, parts[p * stride + r * (Dp + 2) + Dp]);
    std::fill(o.begin(), o.end(), 0.0f);
    for (int64_t p = 0; p < nparts; ++p) {
      const float* pp = parts + p * stride + r * (Dp + 2);
      if (pp[Dp] == kNegInf) continue;
      const float w = std::exp(pp[Dp] - M);
      L += w * pp[Dp + 1];
      for (int64_t d = 0; d < a.D; ++d) o[size_t(d)] += w * pp[d];
    }
    const int64_t t = tk.t0 + r / G, head = tk.h * G + r % G;
    Q* out = static_cast<Q*>(a.out) + (t * a.Hq + head) * a.D;
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    for (int64_t d = 0; d < a.D; ++d) store_f32(out, d, o[size_t(d)] * inv);
  }
}

// One task, compiled per ISA below; the OpenMP loop stays in generic code and calls through a pointer.
using TaskFn = void (*)(const Args&, const Task&, Scratch&, float*);

template <int VW>
AL4_INLINE void task_typed(const Args& a, const Task& tk, Scratch& s, float* part) {
  if (a.q_bf16)
    run_task<VW, bf16_t>(a, tk, s, part);
  else
    run_task<VW, float>(a, tk, s, part);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("arch=x86-64-v4"))) void task_v4(const Args& a, const Task& t, Scratch& s, float* p) {
  task_typed<16>(a, t, s, p);
}
__attribute__((target("arch=x86-64-v3"))) void task_v3(const Args& a, const Task& t, Scratch& s, float* p) {
  task_typed<8>(a, t, s, p);
}
#endif
void task_base(const Args& a, const Task& t, Scratch& s, float* p) { task_typed<4>(a, t, s, p); }

TaskFn task_fn(int64_t& vw) {
  const int level = cpu_isa_level();
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (level >= 4) return vw = 16, task_v4;
  if (level >= 3) return vw = 8, task_v3;
#endif
  (void)level;
  return vw = 4, task_base;
}

KvScale kv_scale(const TensorRef* s) {
  KvScale k;
  if (!s) return k;
  k.p = s->data<float>();
  if (s->dim() == 3) {
    k.kind = 3, k.sb = s->strides[0], k.ss = s->strides[1], k.sh = s->strides[2];
  } else if (s->numel() == 1) {
    k.kind = 1;
  } else {
    k.kind = 2, k.sh = s->strides[0];
  }
  return k;
}

}  // namespace

// q: [T, Hq, D] fp32|bf16 (head dim contiguous); k_cache, v_cache: [num_blocks, block_size, Hkv, D] of q's
// dtype or fp8 (head dim contiguous); block_tables: [B, W] int32 (head dim contiguous); cu_seqlens_q:
// [B+1], seq_lens / first_pos: [B], q_pos: [T] int32 contiguous; k_scale / v_scale: fp32 scalar, [Hkv] or
// [num_blocks, block_size, Hkv], null for non-fp8 caches; out: [T, Hq, D] contiguous, q's dtype.
// Inputs are validated by the launcher in bindings.cpp, the table entries here (before any thread runs).
void paged_attention(const TensorRef& q, const TensorRef& k_cache, const TensorRef& v_cache,
                     const TensorRef& block_tables, const TensorRef& cu_seqlens_q, const TensorRef& seq_lens,
                     const TensorRef& first_pos, const TensorRef& q_pos, double scale, int64_t chunk_size,
                     const TensorRef* k_scale, const TensorRef* v_scale, const TensorRef& out) {
  static int64_t vw = 0;
  static const TaskFn run = task_fn(vw);
  Args a;
  a.q = reinterpret_cast<const void*>(q.ptr), a.q_st = q.strides[0], a.q_sh = q.strides[1];
  a.out = reinterpret_cast<void*>(out.ptr);
  a.kc = reinterpret_cast<const void*>(k_cache.ptr), a.vc = reinterpret_cast<const void*>(v_cache.ptr);
  a.kc_sb = k_cache.strides[0], a.kc_ss = k_cache.strides[1], a.kc_sh = k_cache.strides[2];
  a.vc_sb = v_cache.strides[0], a.vc_ss = v_cache.strides[1], a.vc_sh = v_cache.strides[2];
  a.bt = block_tables.data<int32_t>(), a.bt_sb = block_tables.strides[0];
  a.q_pos = q_pos.data<int32_t>(), a.first_pos = first_pos.data<int32_t>(), a.seq_lens = seq_lens.data<int32_t>();
  a.Hq = q.size(1), a.Hkv = k_cache.size(2), a.D = q.size(2), a.G = a.Hq / a.Hkv, a.bs = k_cache.size(1);
  a.Dp = ceil_div(a.D, vw) * vw;
  a.chunk = chunk_size > 0 ? chunk_size : 0;
  a.scale = float(scale);
  a.q_bf16 = q.dtype == kBF16;
  a.kv = k_cache.dtype == kF8E4M3FN ? 1 : k_cache.dtype == kF8E4M3FNUZ ? 2 : 0;
  a.table = a.kv == 1 ? fp8_table<false>().v : a.kv == 2 ? fp8_table<true>().v : nullptr;
  if (a.kv) a.ks = kv_scale(k_scale), a.vs = kv_scale(v_scale);

  const int64_t B = block_tables.size(0), W = block_tables.size(1), T = q.size(0), NB = k_cache.size(0);
  const int32_t* cu = cu_seqlens_q.data<int32_t>();
  check(cu[0] == 0 && cu[B] == T, "paged_attention: cu_seqlens_q must start at 0 and end at T=" + std::to_string(T) +
                                      ", got " + std::to_string(cu[0]) + " .. " + std::to_string(cu[B]));
  // Plan: token tiles per sequence and KV head, split over keys when a range is long.
  const int64_t tile = std::max<int64_t>(1, kRowsPerTask / a.G);
  const int64_t threads = omp_get_max_threads();
  std::vector<Task> tasks;
  std::vector<std::pair<Task, int64_t>> merges;  // (whole task, first part) of split ranges
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = a.seq_lens[b], t0 = cu[b], t1 = cu[b + 1];
    check(t0 <= t1, "paged_attention: cu_seqlens_q must not decrease (at sequence " + std::to_string(b) + ")");
    check(n >= 0 && n <= W * a.bs, "paged_attention: seq_lens[" + std::to_string(b) + "]=" + std::to_string(n) +
                                       " exceeds block_tables' " + std::to_string(W) + " blocks of " +
                                       std::to_string(a.bs) + " slots");
    for (int64_t i = 0; i < ceil_div(n, a.bs); ++i) {
      const int64_t blk = a.bt[b * a.bt_sb + i];
      check(blk >= 0 && blk < NB, "paged_attention: block_tables[" + std::to_string(b) + ", " + std::to_string(i) +
                                      "]=" + std::to_string(blk) + " is not a block of the cache (num_blocks=" +
                                      std::to_string(NB) + ")");
    }
    for (int64_t s0 = t0; s0 < t1; s0 += tile) {
      const int64_t s1 = std::min(t1, s0 + tile);
      int64_t kmin = n, kmax = 0;
      for (int64_t t = s0; t < s1; ++t) {
        int64_t lo, hi;
        key_range(a, b, a.q_pos[t], lo, hi);
        if (lo < hi) kmin = std::min(kmin, lo), kmax = std::max(kmax, hi);
      }
      const int64_t keys = std::max<int64_t>(0, kmax - kmin), rows = (s1 - s0) * a.G;
      for (int64_t h = 0; h < a.Hkv; ++h) tasks.push_back({b, h, s0, s1, kmin, std::max(kmin, kmax), -1, keys * rows});
      total += keys * rows * a.Hkv;
    }
  }
  // Split the ranges costlier than a fair share of a thread's work (flash-decoding), then run the
  // costliest tasks first so that the dynamic schedule balances.
  std::vector<Task> run_list;
  int64_t nparts = 0;
  const int64_t share = threads > 1 ? std::max<int64_t>(1, total / (threads * 4)) : total + 1;
  for (const Task& tk : tasks) {
    const int64_t keys = tk.k1 - tk.k0;
    const int64_t splits = std::min(keys / kMinSplit, ceil_div(tk.cost, share));
    if (splits < 2) {
      run_list.push_back(tk);
      continue;
    }
    merges.push_back({tk, nparts});
    const int64_t per = ceil_div(ceil_div(keys, splits), kKT) * kKT;
    for (int64_t k = tk.k0; k < tk.k1; k += per)
      run_list.push_back({tk.b, tk.h, tk.t0, tk.t1, k, std::min(tk.k1, k + per), nparts++, tk.cost / splits});
  }
  std::stable_sort(run_list.begin(), run_list.end(), [](const Task& x, const Task& y) { return x.cost > y.cost; });
  const int64_t part_stride = tile * a.G * (a.Dp + 2);
  std::vector<float> partials(size_t(nparts * part_stride));
  const bool par = threads > 1 && run_list.size() > 1 && total * a.D > kParallelMin;
#pragma omp parallel if (par)
  {
    thread_local Scratch s;
    s.size(tile * a.G, a.Dp);
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < run_list.size(); ++i) {
      const Task& tk = run_list[i];
      run(a, tk, s, tk.part >= 0 ? partials.data() + tk.part * part_stride : nullptr);
    }
  }
  if (merges.empty()) return;
  std::vector<int64_t> counts(merges.size());
  for (size_t i = 0; i < merges.size(); ++i)
    counts[i] = (i + 1 < merges.size() ? merges[i + 1].second : nparts) - merges[i].second;
#pragma omp parallel for schedule(dynamic, 1) if (par && merges.size() > 1)
  for (size_t i = 0; i < merges.size(); ++i) {
    const float* p = partials.data() + merges[i].second * part_stride;
    if (a.q_bf16)
      merge_parts<bf16_t>(a, merges[i].first, p, counts[i], part_stride);
    else
      merge_parts<float>(a, merges[i].first, p, counts[i], part_stride);
  }
}

}  // namespace al4::cpu
