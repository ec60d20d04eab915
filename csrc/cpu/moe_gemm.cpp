// Fused MoE on CPU: route (sort rows by expert, scale inputs by the routing weight), gate_up GEMM
// with SiLU-and-mul fused into its epilogue, down GEMM, per-token sum over the k slots.
// Activations float32|bfloat16 with weights of the same dtype, or FP8 w8a8 (weights e4m3fn|fnuz
// with per-output-channel scales, activations quantised per token on the fly).
// fp32|bf16 expert weights are input-major (HF's [E, H, 2I], contiguous) or output-major (the same
// logical tensors stored [E, 2I, H], as a CPU model keeps them). Parallel over (expert, column
// strip) tasks: packed panels (input-major, fp8) or dot-product tiles (output-major); at decode
// (fp32|bf16, <= kStreamRows rows per expert) moe_stream.cpp streams the weights instead. The ISA
// (AVX-512 / AVX2 / baseline) is picked once.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <string>
#include <type_traits>
#include <cstring>
#include <vector>

#include "linear_kernel.h"  // dot_tile, LoadF32 / LoadBF16 (output-major weights)
#include "moe_gemm_internal.h"

namespace al4::cpu {

namespace moe {

// fused_moe's row buffers (routed inputs, h, expert outputs), kept per calling thread between calls
// while small: fresh pages cost a fault each (1.5 ms of 27 at 512 x 1024 x 16 experts). Larger
// calls (long prefills) allocate and free, so no thread holds hundreds of MB.
constexpr size_t kKeepFloats = size_t(4) << 20;  // per buffer: 16 MB

float* row_buffer(int slot, size_t n, std::unique_ptr<float[]>& fresh) {
  // routed inputs, h, expert outputs, decode partial sums; moe_stream.cpp: prepared rows, gate|up
  thread_local std::vector<float> keep[6];
  if (n > kKeepFloats) {
    fresh.reset(new float[n]);
    return fresh.get();
  }
  if (keep[slot].size() < n) keep[slot].resize(n);
  return keep[slot].data();
}

}  // namespace moe

namespace {

using namespace moe;

constexpr int64_t KC = 256;  // longest K block of a packed panel
constexpr int64_t kPanelBytes = 256 << 10;  // packed weights per K block: fits L2 beside the C tiles
constexpr int64_t kFewRows = 8;  // at most this many rows per expert: strips grouped per task
constexpr int64_t kStreamRows = 16;  // fp32|bf16, at most this many rows per expert: weight rows streamed


// One aligned scratch buffer per thread, grown on demand.
float* scratch(int slot, size_t n) {
  thread_local std::vector<float> bufs[3];
  auto& b = bufs[slot];
  if (b.size() < n + 16) b.resize(n + 16);
  auto p = reinterpret_cast<uintptr_t>(b.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}

constexpr int64_t KD = 32;  // K block of the in-place path: KD weight rows (all strips) stay in L2

// Prefetch the weight rows [k1, k1 + kn) (segments of `bytes` from column col0 of each of the NW
// matrices), share j of ns: called once per strip, the requests spread over a block's compute and
// each reads whole row segments (sequential for DRAM). +20% bandwidth at decode.
template <int NW, typename W>
AL4_INLINE void prefetch_next_block(const W* const* wts, int64_t ldw, int64_t k1, int64_t kn, int64_t j, int64_t ns,
                                    int64_t col0, int64_t bytes) {
  for (int64_t r = j * kn / ns; r < (j + 1) * kn / ns; ++r)  // kn <= 0 (last block): nothing
    for (int w = 0; w < NW; ++w) {
      const char* row = reinterpret_cast<const char*>(wts[w] + (k1 + r) * ldw + col0);
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 2);
    }
}

// The cache lines of a K block's weights (rows [k1, k1 + kn) of the NW matrices, a segment of
// `bytes` from column col0 of each), handed out row by row so DRAM sees whole segments.
template <int NW, typename W>
struct BlockLines {
  const W* const* wts;
  int64_t ldw, col0, k1, kn, bytes;
  int64_t r = 0, b = 0;
  int w = 0;
  int64_t total() const { return kn > 0 ? kn * NW * ceil_div(bytes, 64) : 0; }
  AL4_INLINE int64_t take(const char** out, int64_t want) {  // up to `want` lines; how many
    int64_t got = 0;
    for (; got < want && r < kn; ++got) {
      out[got] = reinterpret_cast<const char*>(wts[w] + (k1 + r) * ldw + col0) + b;
      if ((b += 64) >= bytes) {
        b = 0;
        if (++w == NW) w = 0, ++r;
      }
    }
    return got;
  }
};

// Rows [r0, r0+n) of A ([*, K], fp32) times column strips [s0, s1) (NR = NV * VW columns each,
// the last one may be partial) of NW weight matrices W[w] ([K, ncols], stride ldw between rows, or
// with om (output-major) between columns) -> C tiles ctile[w] = [s1 - s0][n][NR] (row-major).
template <class Cfg, int NW, typename W, typename Dec>
AL4_INLINE void strip_gemm(const float* A, int64_t K, int64_t n, const W* const* wts, int64_t ldw, bool om,
                           int64_t ncols, int64_t s0, int64_t s1, Dec dec, float* const* ctile) {
  constexpr int VW = Cfg::VW, MR = Cfg::template MR<NW>, NV = Cfg::template NV<NW>, NR = NV * VW;
  float dump[NR] __attribute__((aligned(64)));
  for (int w = 0; w < NW; ++w) std::memset(ctile[w], 0, sizeof(float) * n * NR * (s1 - s0));
  auto tile = [&](int w, int64_t s, int64_t i) { return i < n ? ctile[w] + ((s - s0) * n + i) * NR : dump; };

  // A few rows of fp32 weights (the decode step): read full strips in place, K block outermost,
  // so the strips of one block together read KD whole weight rows (sequential DRAM traffic).
  // Each weight element is used once here, so packing would only add a copy.
  int64_t s_packed = s0;
  if constexpr (std::is_same_v<W, float>) {
    if (n <= MR && !om) {
      s_packed = std::max(s0, std::min(s1, ncols / NR));
      const int64_t ns = s_packed - s0;
      // as many tile rows as needed: a 1-row step must not pay for MR rows of FMAs
      const int m = n == 1 ? 1 : (n == 2 && MR > 2) ? 2 : (n <= 4 && MR > 4) ? 4 : MR;
      for (int64_t k0 = 0; k0 < K; k0 += KD) {
        const int64_t kc = std::min(KD, K - k0);
        for (int64_t s = s0; s < s_packed; ++s) {
          prefetch_next_block<NW>(wts, ldw, k0 + KD, std::min(KD, K - k0 - KD), s - s0, ns, s0 * NR,
                              ns * NR * int64_t(sizeof(W)));
          const float* pw[NW];
          const float* a[MR];
          float* c[NW * MR];  // c[w * m + i]: the layout of microkernel<.., m, ..>
          for (int w = 0; w < NW; ++w) pw[w] = wts[w] + k0 * ldw + s * NR;
          for (int i = 0; i < m; ++i) {
            a[i] = A + (i < n ? i : 0) * K + k0;  // rows past n reuse row 0 and write to `dump`
            for (int w = 0; w < NW; ++w) c[w * m + i] = tile(w, s, i);
          }
          if (m == 1)
            microkernel<VW, 1, NV, NW>(a, kc, pw, ldw, c);
          else if (m == 2)
            microkernel<VW, (MR > 2 ? 2 : MR), NV, NW>(a, kc, pw, ldw, c);
          else if (m == 4)
            microkernel<VW, (MR > 4 ? 4 : MR), NV, NW>(a, kc, pw, ldw, c);
          else
            microkernel<VW, MR, NV, NW>(a, kc, pw, ldw, c);
        }
      }
    }
  }

  // Output-major weights: each column's weights are contiguous along K, so no packing: dot-product
  // tiles of OM_MB rows x 4 columns over K blocks of KO, a column group's weights (4 x KO) staying in
  // L1 while every row tile passes over them. (Output-major weights are fp32|bf16 only: the
  // launcher rejects fp8 ones, so the packing below always reads input-major weights.)
  if (om) {
    if constexpr (std::is_same_v<W, float> || std::is_same_v<W, bf16_t>) {
      constexpr int OM_MB = VW >= 16 ? 4 : 2, OM_NB = 4;
      constexpr int64_t KO = 1024;
      using Ld = std::conditional_t<std::is_same_v<W, float>, LoadF32<VW>, LoadBF16<VW>>;
      float dump2[OM_MB * OM_NB];
      for (int64_t k0 = 0; k0 < K; k0 += KO) {
        const int64_t kc = std::min(KO, K - k0);
        for (int w = 0; w < NW; ++w)
          for (int64_t s = s0; s < s1; ++s)
            for (int64_t j0 = 0; j0 < NR; j0 += OM_NB) {
              const W* wr[OM_NB];
              for (int j = 0; j < OM_NB; ++j) wr[j] = wts[w] + std::min(s * NR + j0 + j, ncols - 1) * ldw + k0;
              for (int64_t i0 = 0; i0 < n; i0 += OM_MB) {
                const float* a[OM_MB];
                float* o[OM_MB * OM_NB];
                for (int i = 0; i < OM_MB; ++i) {
                  const bool ok = i0 + i < n;  // rows past the end reuse row 0 and write to dump2
                  a[i] = A + (ok ? i0 + i : 0) * K + k0;
                  for (int j = 0; j < OM_NB; ++j)
                    o[i * OM_NB + j] = ok && s * NR + j0 + j < ncols ? tile(w, s, i0 + i) + j0 + j : dump2 + i * OM_NB + j;
                }
                dot_tile<VW, OM_MB, OM_NB, W>(a, wr, kc, o, Ld{}, nullptr, 0, true);
              }
            }
      }
      return;
    }
  }

  // Otherwise, per K block, pack the strips' weights to fp32 (decoding bf16/fp8) into a panel of
  // about kPanelBytes (L2), then run every row tile of every strip over it; the C tiles carry the
  // sums from block to block.
  if (s_packed < s1) {
    const int64_t ns = s1 - s_packed;
    const int64_t kb = std::clamp<int64_t>(kPanelBytes / int64_t(sizeof(float) * NW * ns * NR) / 8 * 8, 8, KC);
    const int64_t seg_bytes = std::min<int64_t>(ns * NR, ncols - s_packed * NR) * int64_t(sizeof(W));
    float* panel = scratch(0, size_t(NW) * ns * kb * NR);
    for (int64_t k0 = 0; k0 < K; k0 += kb) {
      const int64_t kc = std::min(kb, K - k0);
      for (int w = 0; w < NW; ++w) pack_strips<NR>(wts[w], ldw, ncols, k0, kc, s_packed, s1, kb, dec, panel + w * ns * kb * NR);
      // The next block's weights stream in under this block's FMAs: each row tile takes an even
      // share of its lines, one per k step (a burst would stall on the full miss buffers).
      BlockLines<NW, W> next{wts, ldw, s_packed * NR, k0 + kb, std::min(kb, K - k0 - kb), seg_bytes};
      const int64_t quota = ceil_div(next.total(), ns * ceil_div(n, int64_t(MR)));
      const char* pf[KC];
      for (int64_t s = s_packed; s < s1; ++s) {
        const float* pw[NW];
        for (int w = 0; w < NW; ++w) pw[w] = panel + (w * ns + (s - s_packed)) * kb * NR;
        for (int64_t i0 = 0; i0 < n; i0 += MR) {
          const float* a[MR];
          float* c[NW * MR];
          for (int i = 0; i < MR; ++i) {
            const bool ok = i0 + i < n;  // rows past the end reuse row 0 and write to `dump`
            a[i] = A + (ok ? i0 + i : 0) * K + k0;
            for (int w = 0; w < NW; ++w) c[w * MR + i] = tile(w, s, i0 + i);
          }
          for (int64_t extra = quota - kc; extra > 0; extra -= KC)  // more lines than k steps: the rest now
            for (int64_t j = 0, m = next.take(pf, std::min(extra, KC)); j < m; ++j) __builtin_prefetch(pf[j], 0, 2);
          const int64_t npf = next.take(pf, std::min(quota, kc));
          microkernel<VW, MR, NV, NW>(a, kc, pw, NR, c, pf, npf);
        }
      }
    }
  }
}

// Task (expert e, strips [s0, s1) of I): h[rows, strips] = silu(x W_gate) * (x W_up), scales applied.
template <class Cfg, typename W, typename Dec>
AL4_INLINE void gate_up_task(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, Dec dec) {
  constexpr int NR = Cfg::VW * Cfg::template NV<2>;
  const int64_t r0 = g.off[e], n = g.off[e + 1] - r0, ns = s1 - s0;
  const W* w1 = static_cast<const W*>(g.w1) + e * g.H * 2 * g.I;
  const W* wts[2] = {w1, w1 + (g.out_major ? g.I * g.H : g.I)};  // gate, up
  float* ct = scratch(1, size_t(2) * n * NR * ns);
  float* tiles[2] = {ct, ct + n * NR * ns};
  strip_gemm<Cfg, 2>(g.xin + r0 * g.H, g.H, n, wts, g.out_major ? g.H : 2 * g.I, g.out_major, g.I, s0, s1, dec, tiles);
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t n0 = s * NR, nr = std::min<int64_t>(NR, g.I - n0);
    const float* gt = tiles[0] + (s - s0) * n * NR;
    const float* ut = tiles[1] + (s - s0) * n * NR;
    for (int64_t i = 0; i < n; ++i) {
      float* hrow = g.h + (r0 + i) * g.I + n0;
      const float xs = g.xs ? g.xs[r0 + i] : 1.0f;
      for (int64_t j = 0; j < nr; ++j) {
        float gv = gt[i * NR + j], uv = ut[i * NR + j];
        if (g.s1) {
          gv = gv * xs * g.s1[e * 2 * g.I + n0 + j];
          uv = uv * xs * g.s1[e * 2 * g.I + g.I + n0 + j];
        }
        gv = act_round(gv, g.bf16_act);
        uv = act_round(uv, g.bf16_act);
        hrow[j] = act_round(act_round(silu_f32(gv), g.bf16_act) * uv, g.bf16_act || g.bf16_out);
      }
    }
  }
}

// Task (expert e, strips [s0, s1) of H): y[rows, strips] = h W_down, scales applied.
template <class Cfg, typename W, typename Dec>
AL4_INLINE void down_task(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, Dec dec) {
  constexpr int NR = Cfg::VW * Cfg::template NV<1>;
  const int64_t r0 = g.off[e], n = g.off[e + 1] - r0, ns = s1 - s0;
  const W* wts[1] = {static_cast<const W*>(g.w2) + e * g.I * g.H};
  float* ct = scratch(1, size_t(n) * NR * ns);
  float* tiles[1] = {ct};
  strip_gemm<Cfg, 1>(g.h + r0 * g.I, g.I, n, wts, g.out_major ? g.I : g.H, g.out_major, g.H, s0, s1, dec, tiles);
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t n0 = s * NR, nr = std::min<int64_t>(NR, g.H - n0);
    const float* yt = ct + (s - s0) * n * NR;
    for (int64_t i = 0; i < n; ++i) {
      float* yrow = g.y + (r0 + i) * g.H + n0;
      const float hs = g.hs ? g.hs[r0 + i] : 1.0f;
      for (int64_t j = 0; j < nr; ++j) {
        float v = yt[i * NR + j];
        if (g.s2) v = v * hs * g.s2[e * g.H + n0 + j];
        yrow[j] = act_round(v, g.bf16_act || g.bf16_out);
      }
    }
  }
}

// Per-ISA entry points: the target attribute makes the always_inline kernels compile for it.
using TaskFn = void (*)(const MoeArgs&, int64_t, int64_t, int64_t, int wtype);
enum WType { kWF32 = 0, kWBF16 = 1, kWFP8 = 2 };

template <class Cfg, bool GATE_UP, typename W, typename Dec>
AL4_INLINE void run_typed(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, Dec dec) {
  if constexpr (GATE_UP)
    gate_up_task<Cfg, W>(g, e, s0, s1, dec);
  else
    down_task<Cfg, W>(g, e, s0, s1, dec);
}

// No lambdas here: a lambda is a separate function that would not inherit the caller's target ISA.
template <class Cfg, bool GATE_UP>
AL4_INLINE void run_task(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, int wtype) {
  if (wtype == kWF32)
    run_typed<Cfg, GATE_UP, float>(g, e, s0, s1, DecF32{});
  else if (wtype == kWBF16)
    run_typed<Cfg, GATE_UP, bf16_t>(g, e, s0, s1, DecBF16{});
  else
    run_typed<Cfg, GATE_UP, uint8_t>(g, e, s0, s1, DecFP8{(g.fnuz ? fp8_table<true>() : fp8_table<false>()).v});
}

using CfgBase = TileCfg<4, 4, 1, 4, 2>;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
using CfgV3 = TileCfg<8, 4, 1, 6, 2>;    // AVX2: 8 + 12 accumulators of 16 ymm
using CfgV4 = TileCfg<16, 4, 2, 8, 2>;   // AVX-512: 16 + 16 accumulators of 32 zmm
#define AL4_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#define AL4_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
AL4_TARGET_V4 void gate_up_v4(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, int wt) { run_task<CfgV4, true>(g, e, s0, s1, wt); }
AL4_TARGET_V4 void down_v4(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, int wt) { run_task<CfgV4, false>(g, e, s0, s1, wt); }
AL4_TARGET_V3 void gate_up_v3(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, int wt) { run_task<CfgV3, true>(g, e, s0, s1, wt); }
AL4_TARGET_V3 void down_v3(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, int wt) { run_task<CfgV3, false>(g, e, s0, s1, wt); }
#endif
void gate_up_base(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, int wt) { run_task<CfgBase, true>(g, e, s0, s1, wt); }
void down_base(const MoeArgs& g, int64_t e, int64_t s0, int64_t s1, int wt) { run_task<CfgBase, false>(g, e, s0, s1, wt); }

struct Isa {
  const char* name;
  TaskFn gate_up, down;
  int nr_gate_up, nr_down;
};

const Isa& isa() {
  static const Isa chosen = [] {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const int level = cpu_isa_level();
    if (level >= 4) return Isa{"avx512", gate_up_v4, down_v4, 16 * 2, 16 * 2};
    if (level >= 3) return Isa{"avx2", gate_up_v3, down_v3, 8 * 1, 8 * 2};
#endif
    return Isa{"base", gate_up_base, down_base, 4 * 1, 4 * 2};
  }();
  return chosen;
}

template <bool FNUZ>
void quantize_rows(float* v, float* scale, int64_t n, int64_t cols) {
  const float fmax = Fp8Fmt<FNUZ>::kMax;
#pragma omp parallel for schedule(static) if (n * cols > kParallelMin)
  for (int64_t r = 0; r < n; ++r) {
    float* row = v + r * cols;
    float amax = 0.0f;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
    const float s = std::max(amax, 1e-12f) / fmax;
    scale[r] = s;
    for (int64_t c = 0; c < cols; ++c) row[c] = fp8_decode<FNUZ>(fp8_encode<FNUZ>(row[c] / s));
  }
}

}  // namespace

const char* gemm_isa() { return isa().name; }

int cpu_isa_level() {
  static const int level = [] {
    const char* force = std::getenv("AMD_LLAMA4_CPU_ISA");  // "base" / "avx2" to test those paths
    const std::string f = force ? force : "";
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (f.empty() && __builtin_cpu_supports("x86-64-v4")) return 4;
    if ((f.empty() || f == "avx2") && __builtin_cpu_supports("x86-64-v3")) return 3;
#endif
    return 0;
  }();
  return level;
}

// x: [T, H]; w_gate_up: [E, H, 2I]; w_down: [E, I, H] (contiguous, or both output-major: see
// MoeArgs::out_major); topk_weights: [T, k] fp32; topk_ids: [T, k]
// int32; w1_scale: [E, 2I] / w2_scale: [E, H] fp32 for fp8 weights (null otherwise) -> out: [T, H].
void fused_moe(const TensorRef& x, const TensorRef& w_gate_up, const TensorRef& w_down, const TensorRef& topk_weights,
               const TensorRef& topk_ids, const TensorRef* w1_scale, const TensorRef* w2_scale, const TensorRef& out) {
  const int64_t T = x.size(0), H = x.size(1), E = w_gate_up.size(0), I = w_down.size(1), k = topk_ids.size(1);
  const int64_t N = T * k;
  const bool fp8 = w1_scale != nullptr;
  MoeArgs g;
  g.H = H, g.I = I, g.E = E;
  g.bf16_act = !fp8 && x.dtype == kBF16;
  g.bf16_out = fp8 && x.dtype == kBF16;
  g.fnuz = w_gate_up.dtype == kF8E4M3FNUZ;
  g.out_major = !w_gate_up.contiguous();  // else output-major (the launcher accepts only these two)
  g.w1 = reinterpret_cast<const void*>(w_gate_up.ptr);
  g.w2 = reinterpret_cast<const void*>(w_down.ptr);
  g.s1 = fp8 ? w1_scale->data<float>() : nullptr;
  g.s2 = fp8 ? w2_scale->data<float>() : nullptr;
  const int wtype = fp8 ? kWFP8 : (w_gate_up.dtype == kBF16 ? kWBF16 : kWF32);

  // Routing: counting sort of the N = T*k slots by expert (stable); pos[slot] = its sorted row.
  const int32_t* ids = topk_ids.data<int32_t>();
  const float* tw = topk_weights.data<float>();
  std::vector<int64_t> off(E + 1, 0), pos(N);
  for (int64_t i = 0; i < N; ++i) {
    check(ids[i] >= 0 && ids[i] < E, "fused_moe: topk_ids holds " + std::to_string(ids[i]) +
                                         ", outside [0, E=" + std::to_string(E) + ")");
    ++off[ids[i] + 1];
  }
  for (int64_t e = 0; e < E; ++e) off[e + 1] += off[e];
  {
    std::vector<int64_t> cur(off.begin(), off.end() - 1);
    for (int64_t i = 0; i < N; ++i) pos[i] = cur[ids[i]]++;
  }
  g.off = off.data();
  // Every element is written before it is read.
  std::unique_ptr<float[]> fresh[3];
  float* xin = row_buffer(0, size_t(N * H), fresh[0]);
  float* h = row_buffer(1, size_t(N * I), fresh[1]);
  float* y = row_buffer(2, size_t(N * H), fresh[2]);
  std::vector<float> xs(fp8 ? N : 0), hs(fp8 ? N : 0);
  g.xin = xin, g.h = h, g.y = y;

  // Routed inputs: weight applied to the input in fp32, rounded to the activation dtype.
  dispatch_act(x, "fused_moe", [&](auto tag) {
    using T_ = decltype(tag);
    const T_* xp = x.data<T_>();
#pragma omp parallel for schedule(static) if (N * H > kParallelMin)
    for (int64_t i = 0; i < N; ++i) {
      float* dst = xin + pos[i] * H;
      const T_* src = xp + (i / k) * H;
      for (int64_t c = 0; c < H; ++c) dst[c] = act_round(load_f32(src, c) * tw[i], g.bf16_act);
    }
  });
  if (fp8) {
    g.fnuz ? quantize_rows<true>(xin, xs.data(), N, H) : quantize_rows<false>(xin, xs.data(), N, H);
    g.xs = xs.data(), g.hs = hs.data();
  }

  const Isa& is = isa();
  // Tasks are (expert, range of column strips), as long as the threads stay balanced: about 8
  // tasks per thread with few rows per expert (decode: the weights are read once, in place), 4
  // otherwise. Long tasks read long row segments: a whole expert reads its weight rows end to end,
  // which the hardware prefetcher streams (measured: 8-10% faster than half-expert tasks).
  int64_t active = 0, max_rows = 0;
  for (int64_t e = 0; e < E; ++e) {
    active += off[e + 1] > off[e];
    max_rows = std::max(max_rows, off[e + 1] - off[e]);
  }
  auto run_phase = [&](TaskFn fn, int64_t cols, int nr) {
    const int64_t strips = ceil_div(cols, nr);
    const int64_t tasks_per_thread = max_rows <= kFewRows ? 8 : 4;
    const int64_t per_task =
        std::clamp<int64_t>(active * strips / (tasks_per_thread * int64_t(omp_get_max_threads())), 1, strips);
    std::vector<std::array<int64_t, 3>> tasks;
    for (int64_t e = 0; e < E; ++e)
      if (off[e + 1] > off[e])
        for (int64_t s = 0; s < strips; s += per_task) tasks.push_back({e, s, std::min(strips, s + per_task)});
    const int64_t nt = int64_t(tasks.size());
#pragma omp parallel for schedule(dynamic, 1) if (nt > 1 && (N * H > 4096 || active * H * I >= (1 << 16)))
    for (int64_t t = 0; t < nt; ++t) fn(g, tasks[t][0], tasks[t][1], tasks[t][2], wtype);
  };
  if ((wtype == kWF32 || wtype == kWBF16) && max_rows <= kStreamRows) {  // weights of x's dtype (launcher)
    streamed_moe(g, N, active, wtype == kWBF16);
  } else {
    run_phase(is.gate_up, I, is.nr_gate_up);
    if (fp8) g.fnuz ? quantize_rows<true>(h, hs.data(), N, I) : quantize_rows<false>(h, hs.data(), N, I);
    run_phase(is.down, H, is.nr_down);
  }

  // Sum over the k slots of each token in fp32, one rounding to the output dtype.
  dispatch_act(out, "fused_moe", [&](auto tag) {
    using T_ = decltype(tag);
    T_* op = out.data<T_>();
#pragma omp parallel for schedule(static) if (T * H > kParallelMin)
    for (int64_t t = 0; t < T; ++t) {
      float* acc = scratch(2, size_t(H));
      std::memcpy(acc, y + pos[t * k] * H, sizeof(float) * H);
      for (int64_t j = 1; j < k; ++j) {
        const float* src = y + pos[t * k + j] * H;
        for (int64_t c = 0; c < H; ++c) acc[c] += src[c];
      }
      for (int64_t c = 0; c < H; ++c) store_f32(op, t * H + c, acc[c]);
    }
  });
}

}  // namespace al4::cpu
