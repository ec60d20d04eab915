// FP8 w8a8 matmul on CPU: out[M, N] = (a_q * a_scale) @ (b_q * b_scale)^T. Built for the decode
// step (a few rows of activations), where the product is a stream of the [N, K] fp8 weight: each
// weight byte is read once and decoded in registers, never written out.
//
// Every e4m3 value (fn or fnuz) is exact in bf16 and in fp32, and the product of two is exact in
// fp32 (4-bit significands), so the kernels sum exact products qa * qb in fp32 and apply the scales
// once per K segment: sa[m] * sb[n] (per token / channel / tensor), or sa[m, kb] * sb[n / bn, kb]
// per k-block. That differs from the reference's sum of (qa sa)(qb sb) only by fp32 rounding.
//
// Each thread takes a contiguous range of weight rows; the AVX-512 body reads each row front to back
// (one sequential stream: interleaving 4 rows measured 2x slower from DRAM), 8 activation rows a pass.
// Bodies, chosen at run time (AMD_LLAMA4_CPU_ISA=avx2|base forces a lower one):
// - AVX-512 with BF16 + VBMI (Zen 4, Sapphire Rapids): 64 weight bytes -> 2 x 32 words by
//   vpunpck{l,h}bw (each byte twice), then per 32: two 128-entry byte-table lookups (vpermi2b: the
//   high and low byte of bf16(|w|)) and the sign OR-ed back; vdpbf16ps against the activations held as
//   exact bf16 in that unpack order: 32 multiply-adds per instruction. k-blocks that are not a
//   multiple of 64 columns take the AVX2 body.
// - AVX2 + F16C: 16 bytes -> fp16 bits by a shift (the e4m3 exponent / mantissa land in fp16's
//   fields; fp16 subnormals cover e4m3's), vcvtph2ps, fp32 FMAs; the 2^(15 - bias) factor between the
//   fp16 reading and the value is a power of two applied with the scales.
// - portable: the 256-entry fp32 table of al4_fp8.h.
// NaN encodings (fn 0x7f / 0xff, fnuz 0x80) decode to NaN on every body, as torch's casts do.
#include "fp8_gemm.h"

// GCC 12 flags the _mm512_undefined_* placeholders inside its own intrinsics (false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>
#include <cstring>
#include <vector>

#include "al4_fp8.h"
#include "cpu_ops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define AL4_FP8_X86 1
#define AL4_FP8_V4 __attribute__((target("arch=x86-64-v4,avx512bf16,avx512vbmi")))
#define AL4_FP8_V3 __attribute__((target("arch=x86-64-v3")))
#define AL4_FP8_INLINE __attribute__((always_inline)) inline
#endif

namespace al4::cpu {

namespace {

constexpr int64_t kTile = 4;  // weight rows per task unit (thread ranges are whole tiles)

struct Args {
  const uint8_t* w = nullptr;  // [N, K] fp8 bits
  const void* x = nullptr;     // [M, ldx] decoded activations qa (bf16 bits or fp32), zero past K
  const float* sa = nullptr;   // segment s of row m: sa[m * sa_m + s]
  const float* sb = nullptr;   // segment s of weight row n: sb[(n / bn) * sb_n + s]
  float* y = nullptr;          // [M, N] fp32
  int64_t M = 0, N = 0, K = 0, ldx = 0;
  int64_t seg = 0, nseg = 1;   // K in nseg segments of seg columns (block_k, or one of K)
  int64_t sa_m = 0, sb_n = 0, bn = 1;
  float dec = 1.0f;            // the body's decoded weight times dec is the fp8 value
};

inline float seg_scale(const Args& a, int64_t m, int64_t n, int64_t s) {
  return a.sa[m * a.sa_m + s] * a.sb[(n / a.bn) * a.sb_n + s] * a.dec;
}

using RowsFn = void (*)(const Args& a, bool fnuz, int64_t n0, int64_t n1);

// ---------------------------------------------------------------- AVX-512 BF16 + VBMI

#ifdef AL4_FP8_X86
// Byte tables of bf16(|e4m3|) for the 128 magnitudes: [fnuz][lo0, lo1, hi0, hi1][64].
struct Bf16Tabs {
  alignas(64) uint8_t t[2][4][64];
};

const Bf16Tabs& bf16_tabs() {
  static const Bf16Tabs tabs = [] {
    Bf16Tabs x;
    for (int f = 0; f < 2; ++f)
      for (int mag = 0; mag < 128; ++mag) {
        const float v = f ? fp8_decode<true>(uint8_t(mag)) : fp8_decode<false>(uint8_t(mag));
        const uint16_t b = f32_to_bf16(v);  // exact: 4-bit significands (fn 0x7f: NaN 0x7fc0)
        x.t[f][mag / 64][mag % 64] = uint8_t(b & 0xff);
        x.t[f][2 + mag / 64][mag % 64] = uint8_t(b >> 8);
      }
    return x;
  }();
  return tabs;
}

// Column order of the activations for this body, per 64 columns: position p holds column
// perm64(p), the order in which vpunpcklbw / vpunpckhbw (in-lane, cheaper than a lane-crossing
// byte permute) lay out a 64-byte weight load as 2 x 32 words.
inline int perm64(int p) { return p < 32 ? 16 * (p / 8) + p % 8 : 16 * ((p - 32) / 8) + 8 + (p - 32) % 8; }

struct V4Ctx {
  __m512i lo0, lo1, hi0, hi1;
};

// 32 words each holding one fp8 byte twice -> 32 bf16: the odd (high) bytes look up the high-byte
// table, the even ones the low-byte table (vpermi2b reads 7 index bits: the magnitude); the sign
// (bit 15 of the duplicated word) is OR-ed back.
template <bool FNUZ>
AL4_FP8_V4 AL4_FP8_INLINE __m512i dec32_v4(const V4Ctx& c, __m512i d) {
  const __m512i t = _mm512_mask2_permutex2var_epi8(c.hi0, d, __mmask64(0xAAAAAAAAAAAAAAAAull), c.hi1);
  __m512i r = _mm512_mask2_permutex2var_epi8(c.lo0, t, __mmask64(0x5555555555555555ull), c.lo1);
  r = _mm512_ternarylogic_epi32(r, d, _mm512_set1_epi16(int16_t(0x8000)), 0xF8);  // r | (d & sign)
  if (FNUZ)  // 0x80 is fnuz's NaN, not -0
    r = _mm512_mask_mov_epi16(r, _mm512_cmpeq_epi16_mask(r, _mm512_set1_epi16(int16_t(0x8000))),
                              _mm512_set1_epi16(0x7fc0));
  return r;
}

// 64 columns at k of one weight row against MB activation rows, into accumulators acc[i][h], acc[i][h + 1]
// (several per row: the dot products' latency); MASKED: only the first `mk` columns (the rest read as 0).
template <int MB, int NA, bool FNUZ, bool MASKED>
AL4_FP8_V4 AL4_FP8_INLINE void step_v4(const V4Ctx& c, const uint8_t* w, const uint16_t* x, int64_t ldx, int64_t k,
                                       __mmask64 mk, __m512 (&acc)[MB][NA], int h) {
  const __m512i v = MASKED ? _mm512_maskz_loadu_epi8(mk, w + k) : _mm512_loadu_si512(w + k);
  const __m512i w0 = dec32_v4<FNUZ>(c, _mm512_unpacklo_epi8(v, v)), w1 = dec32_v4<FNUZ>(c, _mm512_unpackhi_epi8(v, v));
  for (int i = 0; i < MB; ++i) {
    const uint16_t* xp = x + i * ldx + k;
    acc[i][h] = _mm512_dpbf16_ps(acc[i][h], reinterpret_cast<__m512bh>(_mm512_loadu_si512(xp)),
                                 reinterpret_cast<__m512bh>(w0));
    acc[i][h + 1] = _mm512_dpbf16_ps(acc[i][h + 1], reinterpret_cast<__m512bh>(_mm512_loadu_si512(xp + 32)),
                                     reinterpret_cast<__m512bh>(w1));
  }
}

// Weight row n (read once, front to back: one sequential stream per thread keeps the hardware
// prefetcher on; interleaving 4 rows measured 2x slower from DRAM) against activation rows
// [m0, m0 + MB). Segments are whole 64-column steps (block_k % 64 == 0; the driver checks).
template <int MB, bool FNUZ>
AL4_FP8_V4 void row_v4(const Args& a, const V4Ctx& c, int64_t m0, int64_t n) {
  constexpr int NA = MB <= 2 ? 4 : 2;  // accumulators per activation row (4 measured +20% at 1 row, hot)
  const uint16_t* x = static_cast<const uint16_t*>(a.x) + m0 * a.ldx;
  const uint8_t* w = a.w + n * a.K;
  __m512 tot[MB];
  for (int i = 0; i < MB; ++i) tot[i] = _mm512_setzero_ps();
  for (int64_t s = 0; s < a.nseg; ++s) {
    const int64_t k0 = s * a.seg, k1 = std::min(a.K, k0 + a.seg);
    __m512 acc[MB][NA];
    for (int i = 0; i < MB; ++i)
      for (int h = 0; h < NA; ++h) acc[i][h] = _mm512_setzero_ps();
    int64_t k = k0;
    for (; k + 32 * NA <= k1; k += 32 * NA)
      for (int h = 0; h < NA; h += 2) step_v4<MB, NA, FNUZ, false>(c, w, x, a.ldx, k + 32 * h, 0, acc, h);
    for (; k + 64 <= k1; k += 64) step_v4<MB, NA, FNUZ, false>(c, w, x, a.ldx, k, 0, acc, 0);
    if (k < k1) step_v4<MB, NA, FNUZ, true>(c, w, x, a.ldx, k, __mmask64(~0ull >> (64 - (k1 - k))), acc, 0);
    for (int i = 0; i < MB; ++i) {
      __m512 sum = acc[i][0];
      for (int h = 1; h < NA; ++h) sum = _mm512_add_ps(sum, acc[i][h]);
      tot[i] = _mm512_fmadd_ps(sum, _mm512_set1_ps(seg_scale(a, m0 + i, n, s)), tot[i]);
    }
  }
  for (int i = 0; i < MB; ++i) a.y[(m0 + i) * a.N + n] = _mm512_reduce_add_ps(tot[i]);
}

template <bool FNUZ>
AL4_FP8_V4 void rows_v4_t(const Args& a, int64_t n0, int64_t n1) {
  const Bf16Tabs& tb = bf16_tabs();
  V4Ctx c;
  c.lo0 = _mm512_load_si512(tb.t[FNUZ][0]), c.lo1 = _mm512_load_si512(tb.t[FNUZ][1]);
  c.hi0 = _mm512_load_si512(tb.t[FNUZ][2]), c.hi1 = _mm512_load_si512(tb.t[FNUZ][3]);
  for (int64_t n = n0; n < n1; ++n) {
    int64_t m = 0;  // up to 8 rows per pass (2 x 8 accumulators); more rows decode the weight row again
    for (; m + 8 <= a.M; m += 8) row_v4<8, FNUZ>(a, c, m, n);
    if (m + 4 <= a.M) row_v4<4, FNUZ>(a, c, m, n), m += 4;
    if (m + 2 <= a.M) row_v4<2, FNUZ>(a, c, m, n), m += 2;
    if (m < a.M) row_v4<1, FNUZ>(a, c, m, n);
  }
}

AL4_FP8_V4 void rows_v4(const Args& a, bool fnuz, int64_t n0, int64_t n1) {
  fnuz ? rows_v4_t<true>(a, n0, n1) : rows_v4_t<false>(a, n0, n1);
}

// ---------------------------------------------------------------- AVX2 + F16C

// 16 fp8 bytes -> 16 fp32 equal to the values times 2^-(15 - bias): sign-extend to 16 bits, shift
// the magnitude into fp16's exponent / mantissa fields and clear the stray sign copy at bit 14.
template <bool FNUZ>
AL4_FP8_V3 AL4_FP8_INLINE void dec16_v3(const uint8_t* p, __m256& lo, __m256& hi) {
  __m256i v = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  v = _mm256_and_si256(_mm256_slli_epi16(v, 7), _mm256_set1_epi16(int16_t(0xBF80)));
  const __m256i nan = FNUZ ? _mm256_cmpeq_epi16(v, _mm256_set1_epi16(int16_t(0x8000)))
                           : _mm256_cmpeq_epi16(_mm256_and_si256(v, _mm256_set1_epi16(0x7fff)),
                                                _mm256_set1_epi16(0x3F80));
  v = _mm256_or_si256(v, _mm256_and_si256(nan, _mm256_set1_epi16(0x7E00)));  // an fp16 NaN
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(v));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(v, 1));
}

template <int MB, int NB, bool FNUZ>
AL4_FP8_V3 AL4_FP8_INLINE void step_v3(const uint8_t* const* w, const float* const* x, int64_t k,
                                       __m256 (&blk)[MB][NB]) {
  __m256 wl[NB], wh[NB];
  for (int j = 0; j < NB; ++j) dec16_v3<FNUZ>(w[j] + k, wl[j], wh[j]);
  for (int i = 0; i < MB; ++i) {
    const __m256 xl = _mm256_loadu_ps(x[i] + k), xh = _mm256_loadu_ps(x[i] + k + 8);
    for (int j = 0; j < NB; ++j) blk[i][j] = _mm256_fmadd_ps(xh, wh[j], _mm256_fmadd_ps(xl, wl[j], blk[i][j]));
  }
}

AL4_FP8_V3 AL4_FP8_INLINE float hsum_v3(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

template <int MB, bool FNUZ>
AL4_FP8_V3 void tile_v3(const Args& a, int64_t m0, int64_t n, int64_t n1) {
  constexpr int NB = 2;  // 16 ymm registers
  const float* xr[MB];
  for (int i = 0; i < MB; ++i) xr[i] = static_cast<const float*>(a.x) + (m0 + i) * a.ldx;
  const uint8_t* w[NB];
  int64_t row[NB];
  for (int j = 0; j < NB; ++j) {
    row[j] = std::min(n + j, n1 - 1);
    w[j] = a.w + row[j] * a.K;
  }
  float tot[MB][NB] = {};
  for (int64_t s = 0; s < a.nseg; ++s) {
    const int64_t k0 = s * a.seg, k1 = std::min(a.K, k0 + a.seg);
    __m256 blk[MB][NB];
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NB; ++j) blk[i][j] = _mm256_setzero_ps();
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) step_v3<MB, NB, FNUZ>(w, xr, k, blk);
    if (k < k1) {  // ragged tail: zero-padded copies (never read past the segment or the tensor)
      alignas(32) uint8_t wt[NB][16] = {};
      alignas(32) float xt[MB][16] = {};
      const uint8_t* wp[NB];
      const float* xp[MB];
      for (int j = 0; j < NB; ++j) std::memcpy(wt[j], w[j] + k, size_t(k1 - k)), wp[j] = wt[j];
      for (int i = 0; i < MB; ++i) std::memcpy(xt[i], xr[i] + k, size_t(k1 - k) * 4), xp[i] = xt[i];
      step_v3<MB, NB, FNUZ>(wp, xp, 0, blk);
    }
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NB; ++j) tot[i][j] += hsum_v3(blk[i][j]) * seg_scale(a, m0 + i, row[j], s);
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j)
      if (n + j < n1) a.y[(m0 + i) * a.N + n + j] = tot[i][j];
}

AL4_FP8_V3 void rows_v3(const Args& a, bool fnuz, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; n += 2) {
    const int64_t e = std::min(n1, n + 2);
    int64_t m = 0;
    if (fnuz) {
      for (; m + 2 <= a.M; m += 2) tile_v3<2, true>(a, m, n, e);
      for (; m < a.M; ++m) tile_v3<1, true>(a, m, n, e);
    } else {
      for (; m + 2 <= a.M; m += 2) tile_v3<2, false>(a, m, n, e);
      for (; m < a.M; ++m) tile_v3<1, false>(a, m, n, e);
    }
  }
}
#endif  // AL4_FP8_X86

// ---------------------------------------------------------------- portable

void rows_base(const Args& a, bool fnuz, int64_t n0, int64_t n1) {
  const float* tab = (fnuz ? fp8_table<true>() : fp8_table<false>()).v;
  const float* x = static_cast<const float*>(a.x);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = a.w + n * a.K;
    for (int64_t m = 0; m < a.M; ++m) {
      float tot = 0.0f;
      for (int64_t s = 0; s < a.nseg; ++s) {
        const int64_t k0 = s * a.seg, k1 = std::min(a.K, k0 + a.seg);
        float acc = 0.0f;
        for (int64_t k = k0; k < k1; ++k) acc += x[m * a.ldx + k] * tab[w[k]];
        tot += acc * seg_scale(a, m, n, s);
      }
      a.y[m * a.N + n] = tot;
    }
  }
}

struct Body {
  RowsFn rows;
  const char* name;
  bool bf16_x;  // activations as bf16 bits in perm64 order (else fp32 in column order)
  int pad;      // activation rows padded with zeros to a multiple of this
};

Body pick_body() {
#ifdef AL4_FP8_X86
  const int level = cpu_isa_level();
  __builtin_cpu_init();
  if (level >= 4 && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi"))
    return {rows_v4, "avx512_bf16", true, 64};
  if (level >= 3) return {rows_v3, "avx2", false, 16};
#endif
  return {rows_base, "portable", false, 1};
}

const Body& body() {
  static const Body b = pick_body();
  return b;
}

// The AVX-512 body's steps are 64 columns: k-blocks of other sizes take the AVX2 body.
const Body& body_for(int64_t block_k) {
#ifdef AL4_FP8_X86
  static const Body v3 = {rows_v3, "avx2", false, 16};
  if (body().rows == rows_v4 && block_k % 64 != 0) return v3;
#endif
  return body();
}

// Activation fp8 bits -> exact values, rows of ldx with zeros past K: bf16 bits in perm64 order
// (the AVX-512 body) or fp32 in column order. Table lookups only: this runs on every call.
void decode_activations(const uint8_t* q, bool fnuz, int64_t M, int64_t K, int64_t ldx, bool bf16, void* out) {
  const float* tab = (fnuz ? fp8_table<true>() : fp8_table<false>()).v;
  if (!bf16) {
    float* o = static_cast<float*>(out);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < ldx; ++k) o[m * ldx + k] = k < K ? tab[q[m * K + k]] : 0.0f;
    return;
  }
  struct Tabs {
    uint16_t bf[2][256];  // bf16 bits of every fp8 byte (exact; NaN stays NaN)
    uint8_t perm[64];
  };
  static const Tabs t = [] {
    Tabs x;
    for (int i = 0; i < 256; ++i) {
      x.bf[0][i] = f32_to_bf16(fp8_table<false>().v[i]);
      x.bf[1][i] = f32_to_bf16(fp8_table<true>().v[i]);
    }
    for (int p = 0; p < 64; ++p) {
#ifdef AL4_FP8_X86
      x.perm[p] = uint8_t(perm64(p));
#else
      x.perm[p] = uint8_t(p);
#endif
    }
    return x;
  }();
  const uint16_t* bf = t.bf[fnuz];
  uint16_t* o = static_cast<uint16_t*>(out);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < ldx; c += 64) {
      const uint8_t* qr = q + m * K + c;
      uint16_t* orow = o + m * ldx + c;
      if (c + 64 <= K) {
        for (int p = 0; p < 64; ++p) orow[p] = bf[qr[t.perm[p]]];
      } else {
        for (int p = 0; p < 64; ++p) orow[p] = c + t.perm[p] < K ? bf[qr[t.perm[p]]] : 0;
      }
    }
}

}  // namespace

const char* fp8_gemm_isa() { return body().name; }

void fp8_gemm(const TensorRef& a_q, const TensorRef& a_scale, const TensorRef& b_q, const TensorRef& b_scale,
              int64_t block_n, int64_t block_k, const TensorRef& out) {
  const Body& bd = body_for(block_k);
  const int64_t M = a_q.size(0), K = a_q.size(1), N = b_q.size(0);
  Args a;
  a.M = M, a.N = N, a.K = K;
  a.w = b_q.data<uint8_t>();
  a.ldx = std::max<int64_t>(bd.pad, ceil_div(K, bd.pad) * bd.pad);
  std::vector<float> xbuf(size_t(M * a.ldx));  // large enough for bf16 too
  decode_activations(a_q.data<uint8_t>(), a_q.dtype == kF8E4M3FNUZ, M, K, a.ldx, bd.bf16_x, xbuf.data());
  a.x = xbuf.data();
  a.sa = a_scale.data<float>(), a.sb = b_scale.data<float>();
  if (block_k > 0) {
    a.seg = block_k, a.nseg = ceil_div(K, block_k);
    a.sa_m = a.nseg, a.sb_n = a.nseg, a.bn = block_n;
  } else {  // [M, 1] | [1, 1] and [N, 1] | [1, 1]
    a.seg = std::max<int64_t>(K, 1), a.nseg = 1;
    a.sa_m = a_scale.size(0) == M ? 1 : 0, a.sb_n = b_scale.size(0) == N ? 1 : 0, a.bn = 1;
  }
  const bool fnuz = b_q.dtype == kF8E4M3FNUZ;
#ifdef AL4_FP8_X86
  if (bd.rows == rows_v3) a.dec = fnuz ? 128.0f : 256.0f;  // 2^(15 - bias): the fp16 reading's factor
#endif
  std::vector<float> yf;
  if (out.dtype == kF32) {
    a.y = out.data<float>();
  } else {
    yf.resize(size_t(M * N));
    a.y = yf.data();
  }
  const int64_t tiles = ceil_div(N, kTile);
  const int64_t threads = int64_t(omp_get_max_threads());
  const int64_t chunks = N * K * std::max<int64_t>(M, 4) > (1 << 16) ? std::min(tiles, threads) : 1;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t t0 = tiles * c / chunks, t1 = tiles * (c + 1) / chunks;
    if (t0 < t1) bd.rows(a, fnuz, t0 * kTile, std::min(N, t1 * kTile));
  }
  if (out.dtype == kBF16) {
    bf16_t* o = out.data<bf16_t>();
    for (int64_t i = 0; i < M * N; ++i) store_f32(o, i, yf[size_t(i)]);
  }
}

}  // namespace al4::cpu
