// int4 (w4a16) kernel body for AVX-512, built for the decode step: 1-8 activation rows, where the
// product is a stream of packed weights that has to keep up with DRAM on two cores.
//  * 64 packed bytes (128 columns of one weight row) are one zmm load; the group's raw dot over
//    them is multiplied once per lane by its group's scale (lane i covers columns 8i..8i+7: one
//    group, G >= 32), not weight by weight.
//  * bf16 activations with AVX512-BF16 (Zen 4, Sapphire Rapids): four vpermw lookups (the load
//    shifted right by 0, 4, 8, 12 bits; vpermw reads the low 5 bits of each word, the table repeats
//    after 16) give 4 x 32 bf16 values q - 8, exactly; vector r, word k: column 4k + r. prep lays
//    the activation row out in that order (plane r, dword i: columns 8i + r, 8i + 4 + r), so that
//    vdpbf16ps multiplies matching pairs: exact products, fp32 sums, 4 instructions per 128 MACs.
//  * fp32 activations (and every activation without BF16): eight vpermps lookups of the dwords
//    shifted by 4r give fp32 q - 8 of columns 8i + r; prep's plane r holds those columns; fp32 FMAs.
//    (Splitting fp32 x into three exact bf16 parts for vdpbf16ps measured 25% slower at 1 row and
//    2.5x at 8: a zmm vdpbf16ps costs two cycles on Zen 4.)
//  * Zero points: q - z = (q - 8) - (z - 8). The kernel dots q - 8 and, per row at the end,
//    subtracts sum_g s_g (z_g - 8) sum(x over g) (prep keeps the group sums of x).
// Results differ from the reference (dequantise, then multiply) by fp32 reordering only; vdpbf16ps
// flushes bf16 denormals (|x| < 2^-126 counts as 0).
#include <algorithm>
#include <cstring>

#include "cpu_ops.h"
#include "int4_kernel.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define AL4_INT4_AVX512 1
#define AL4_V4 __attribute__((target("arch=x86-64-v4")))
#define AL4_BF16 __attribute__((target("arch=x86-64-v4,avx512bf16")))
#endif

namespace al4::cpu {

#ifdef AL4_INT4_AVX512
namespace {

constexpr int64_t kBlk = 128;  // columns per block: 64 packed bytes
// Bytes of the weight stream prefetched ahead into L2. Without, one core's loads and the unpacking
// take turns and reach about half of a plain read's bandwidth; 4 KB measured best of 1-8 KB.
constexpr int64_t kAhead = 4096;

// The bf16 layout of prep (plane r of a block = columns r, r + 4, ..., r + 124) for the whole 128-column
// blocks of one row: two vpermt2w over the block's four 32-word registers per plane. src: bf16, or
// fp32 holding bf16 values (the top half of each float). Returns the columns laid out.
AL4_V4 int64_t prep_row_bf16(const void* src, bool src_f32, int64_t K, uint16_t* dst) {
  alignas(64) uint16_t ix[4][32];
  for (int r = 0; r < 4; ++r)
    for (int k = 0; k < 32; ++k) ix[r][k] = uint16_t((4 * k + r) % 64);
  const int64_t full = K / kBlk * kBlk;
  for (int64_t c0 = 0; c0 < full; c0 += kBlk) {
    __m512i v[4];
    for (int q = 0; q < 4; ++q) {
      if (src_f32) {
        const float* f = static_cast<const float*>(src) + c0 + 32 * q;
        const __m256i lo = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(f)), 16));
        const __m256i hi = _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(_mm512_loadu_ps(f + 16)), 16));
        v[q] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
      } else {
        v[q] = _mm512_loadu_si512(static_cast<const uint16_t*>(src) + c0 + 32 * q);
      }
    }
    for (int r = 0; r < 4; ++r) {
      const __m512i idx = _mm512_load_si512(ix[r]);
      const __m512i lo = _mm512_permutex2var_epi16(v[0], idx, v[1]), hi = _mm512_permutex2var_epi16(v[2], idx, v[3]);
      _mm512_store_si512(dst + c0 + 32 * r, _mm512_mask_blend_epi16(0xFFFF0000u, lo, hi));
    }
  }
  return full;
}

// prep, one plane per row, Kp = K rounded up to kBlk wide (the tail zero: padded columns meet
// unpacked zero bytes, which are finite), then the group sums of x for zero-point weights.
//  bf16 values (with vdpbf16ps): plane r of a block, dword i = columns (8i + r, 8i + 4 + r);
//  fp32 values: plane r (r < 8) of a block, lane i = column 8i + r.
Int4Act prep_avx512(const Int4In& in, int64_t G, bool zero_point, bool dp, std::vector<char>& scratch) {
  const int64_t M = in.M, K = in.K, Kp = ceil_div(K, kBlk) * kBlk, NG = K / G;
  const bool bf16 = dp && (in.dtype == kBF16 || in.bf16_values);
  const int64_t row_bytes = Kp * (bf16 ? 2 : 4), sum_bytes = zero_point ? M * NG * 4 : 0;
  scratch.resize(size_t(M * row_bytes + sum_bytes + 64));
  char* base = scratch.data() + (64 - reinterpret_cast<uintptr_t>(scratch.data()) % 64) % 64;
  const auto x_at = [&](int64_t m, int64_t k) {
    return in.dtype == kBF16 ? bf16_to_f32(static_cast<const uint16_t*>(in.x)[m * in.ld + k])
                             : static_cast<const float*>(in.x)[m * in.ld + k];
  };
  for (int64_t m = 0; m < M; ++m) {
    char* row = base + m * row_bytes;
    if (Kp > K) std::memset(row + (Kp - kBlk) * (bf16 ? 2 : 4), 0, size_t(kBlk * (bf16 ? 2 : 4)));
    if (bf16) {
      uint16_t* dst = reinterpret_cast<uint16_t*>(row);
      const bool f32 = in.dtype != kBF16;
      const void* src = f32 ? static_cast<const void*>(static_cast<const float*>(in.x) + m * in.ld)
                            : static_cast<const void*>(static_cast<const uint16_t*>(in.x) + m * in.ld);
      for (int64_t k = prep_row_bf16(src, f32, K, dst); k < K; ++k) {  // the partial last block
        const int64_t c = k % kBlk, at = k - c + 32 * (c & 3) + 2 * (c / 8) + ((c / 4) & 1);
        dst[at] = in.dtype == kBF16 ? static_cast<const uint16_t*>(in.x)[m * in.ld + k]
                                    : uint16_t(f32_to_bits(static_cast<const float*>(in.x)[m * in.ld + k]) >> 16);
      }
    } else {
      float* dst = reinterpret_cast<float*>(row);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t c = k % kBlk;
        dst[k - c + 16 * (c & 7) + c / 8] = x_at(m, k);
      }
    }
  }
  Int4Act a;
  a.data = base;
  a.M = M, a.K = K, a.row_bytes = row_bytes, a.bf16 = bf16, a.NG = NG;
  if (zero_point) {
    float* xs = reinterpret_cast<float*>(base + M * row_bytes);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t g = 0; g < NG; ++g) {
        float acc = 0.0f;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) acc += x_at(m, k);
        xs[m * NG + g] = acc;
      }
    a.xsum = xs;
  }
  return a;
}

Int4Act prep_dp(const Int4In& in, int64_t G, bool zp, std::vector<char>& s) { return prep_avx512(in, G, zp, true, s); }
Int4Act prep_fma(const Int4In& in, int64_t G, bool zp, std::vector<char>& s) { return prep_avx512(in, G, zp, false, s); }

// Per call: the nibble table, the scale permutes and the masks of full and tail blocks.
struct Ctx {
  __m512i tab, sidx16, sidx32;
  __m512 tabf;  // fp32 t - 8 for t < 16 (vpermps reads the low 4 bits)
  __mmask64 tail_w = 0;  // packed bytes of the last block when K % 128 != 0 (0: no tail)
  __mmask8 full_s = 0, tail_s = 0;
  // per call, not per weight row: a row is only 8 blocks at K = 1024, and the row setup's divisions
  // by the run-time G cost as much as a block
  int64_t KB = 0, NG = 0, gpb = 0, nblk = 0, nfull = 0;  // bytes/row, groups/row, groups/block, blocks
};

AL4_V4 Ctx make_ctx(const Int4W& w) {
  Ctx c;
  alignas(64) uint16_t tab[32], s16[32];
  alignas(64) uint32_t s32[16];
  for (int t = 0; t < 32; ++t) tab[t] = f32_to_bf16(float((t & 15) - 8));
  for (int i = 0; i < 16; ++i) {  // lane i (columns 8i..8i+7) takes its group's scale
    s32[i] = uint32_t(8 * i / w.G);
    s16[2 * i] = 0, s16[2 * i + 1] = uint16_t(8 * i / w.G);  // bf16 bits into the high half
  }
  c.tab = _mm512_load_si512(tab);
  c.tabf = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  c.sidx16 = _mm512_load_si512(s16);
  c.sidx32 = _mm512_load_si512(s32);
  c.KB = w.K / 2, c.NG = w.K / w.G, c.gpb = kBlk / w.G, c.nblk = ceil_div(w.K, kBlk), c.nfull = w.K / kBlk;
  c.full_s = __mmask8((1u << (kBlk / w.G)) - 1);
  const int64_t rem = w.K % kBlk;
  if (rem) {
    c.tail_w = (__mmask64(1) << (rem / 2)) - 1;
    c.tail_s = __mmask8((1u << (rem / w.G)) - 1);
  }
  return c;
}

// The scales of one block's groups (i: the first), one per lane.
template <int SDT>
AL4_V4 inline __m512 block_scales(const void* s, int64_t i, __mmask8 mk, const Ctx& c) {
  if constexpr (SDT == kBF16) {
    const __m128i v = _mm_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(s) + i);
    return _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, c.sidx16, _mm512_castsi128_si512(v)));
  } else if constexpr (SDT == kF16) {
    const __m128 v = _mm_cvtph_ps(_mm_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(s) + i));
    return _mm512_permutexvar_ps(c.sidx32, _mm512_castps128_ps512(v));
  } else {
    const __m128 v = _mm_maskz_loadu_ps(mk, static_cast<const float*>(s) + i);
    return _mm512_permutexvar_ps(c.sidx32, _mm512_castps128_ps512(v));
  }
}

// 16 scales of one row from group g as fp32 (mask: the groups that exist).
template <int SDT>
AL4_V4 inline __m512 scales16(const void* s, int64_t i, __mmask16 mk) {
  if constexpr (SDT == kBF16)
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(s) + i)), 16));
  else if constexpr (SDT == kF16)
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(s) + i));
  else
    return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(s) + i);
}

// Row m0 + i's result for weight row n, unreduced: sums[i * 16] = tot[i]; with zero points
// corr[i * 16] = sum_g s_g (z_g - 8) xsum_g, the term to subtract (rows_t reduces 16 weight rows at once).
template <int MB, int SDT>
AL4_V4 inline void finish(const Int4W& w, const Int4Act& a, int64_t m0, int64_t n, const __m512* tot, const Ctx& c,
                          __m512* sums, float* corr) {
#pragma GCC unroll 16
  for (int i = 0; i < MB; ++i) sums[i * 16] = tot[i];
  if (!w.z) return;
  const int64_t NG = c.NG;
  __m512 cv[MB];
#pragma GCC unroll 16
  for (int i = 0; i < MB; ++i) cv[i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < NG; g += 16) {
    const __mmask16 mk = NG - g >= 16 ? __mmask16(0xffff) : __mmask16((1u << (NG - g)) - 1);
    const __m512 zf = _mm512_cvtepi32_ps(
        _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk, w.z + n * NG + g)), _mm512_set1_epi32(8)));
    const __m512 sz = _mm512_mul_ps(scales16<SDT>(w.s, n * NG + g, mk), zf);
#pragma GCC unroll 16
    for (int i = 0; i < MB; ++i) cv[i] = _mm512_fmadd_ps(sz, _mm512_maskz_loadu_ps(mk, a.xsum + (m0 + i) * NG + g), cv[i]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < MB; ++i) corr[i * 16] = _mm512_reduce_add_ps(cv[i]);
}

// Lane j of the result = the sum of v[j]'s 16 lanes: a shuffle tree over 16 vectors, ~3 instructions
// per vector where one vector's own reduction takes ~8.
AL4_V4 inline __m512 sum16(const __m512* v) {
  __m512 t[8], u[4], h[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: v2i and v2i+1 partial sums interleaved
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)  // 128-bit lane q: v4i..v4i+3's sums over that lane
    u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)
    h[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88), _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(h[0], h[1], 0x88), _mm512_shuffle_f32x4(h[0], h[1], 0xDD));
}

// Block b (kBlk columns, 64 bytes) of weight row n, with its per-column scales in sv; prefetches
// kAhead bytes on so that the row stays one sequential stream.
template <int SDT, bool TAIL>
AL4_V4 inline __m512i load_block(const Int4W& w, int64_t n, int64_t b, const Ctx& c, __m512& sv) {
  const uint8_t* q = w.q + n * c.KB + b * 64;
  _mm_prefetch(reinterpret_cast<const char*>(q + kAhead), _MM_HINT_T1);
  sv = block_scales<SDT>(w.s, n * c.NG + b * c.gpb, TAIL ? c.tail_s : c.full_s, c);
  return TAIL ? _mm512_maskz_loadu_epi8(c.tail_w, q) : _mm512_loadu_si512(q);
}

// Block b of activation rows [m0, m0 + MB) x one weight row (tot[i] += its dot times the scales).
// Weight rows go one at a time, so a thread's loads are one sequential stream (interleaving adjacent
// rows measured slower); each block's dot chain starts from 0, so that blocks overlap in the
// pipeline. bf16 planes, vdpbf16ps.
template <int MB>
AL4_BF16 inline void block_bf16(const Int4Act& a, int64_t m0, int64_t b, __m512i wq, __m512 sv, const Ctx& c,
                                __m512* tot) {
  __m512i v[4];
  v[0] = _mm512_permutexvar_epi16(wq, c.tab);
  v[1] = _mm512_permutexvar_epi16(_mm512_srli_epi16(wq, 4), c.tab);
  v[2] = _mm512_permutexvar_epi16(_mm512_srli_epi16(wq, 8), c.tab);
  v[3] = _mm512_permutexvar_epi16(_mm512_srli_epi16(wq, 12), c.tab);
#pragma GCC unroll 16
  for (int i = 0; i < MB; ++i) {
    const uint16_t* xb = reinterpret_cast<const uint16_t*>(a.data + (m0 + i) * a.row_bytes) + b * kBlk;
    __m512 d = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) d = _mm512_dpbf16_ps(d, (__m512bh)_mm512_load_si512(xb + 32 * r), (__m512bh)v[r]);
    tot[i] = _mm512_fmadd_ps(d, sv, tot[i]);
  }
}

// The same for fp32 planes: dword i of a block's load holds columns 8i..8i+7, and vpermps on it
// shifted right by 4r gives fp32 q - 8 of column 8i + r; fp32 FMAs (AVX-512F only).
template <int MB>
AL4_V4 inline void block_f32(const Int4Act& a, int64_t m0, int64_t b, __m512i wq, __m512 sv, const Ctx& c,
                             __m512* tot) {
  __m512 f[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) f[r] = _mm512_permutexvar_ps(r ? _mm512_srli_epi32(wq, 4 * r) : wq, c.tabf);
#pragma GCC unroll 16
  for (int i = 0; i < MB; ++i) {
    const float* xb = reinterpret_cast<const float*>(a.data + (m0 + i) * a.row_bytes) + b * kBlk;
    __m512 d0 = _mm512_mul_ps(_mm512_load_ps(xb), f[0]), d1 = _mm512_mul_ps(_mm512_load_ps(xb + 16), f[1]);
#pragma GCC unroll 4
    for (int r = 2; r < 8; r += 2) {
      d0 = _mm512_fmadd_ps(_mm512_load_ps(xb + 16 * r), f[r], d0);
      d1 = _mm512_fmadd_ps(_mm512_load_ps(xb + 16 * r + 16), f[r + 1], d1);
    }
    tot[i] = _mm512_fmadd_ps(_mm512_add_ps(d0, d1), sv, tot[i]);
  }
}

template <bool DP, int MB>
AL4_BF16 inline void block(const Int4Act& a, int64_t m0, int64_t b, __m512i wq, __m512 sv, const Ctx& c, __m512* tot) {
  if constexpr (DP)
    block_bf16<MB>(a, m0, b, wq, sv, c, tot);
  else
    block_f32<MB>(a, m0, b, wq, sv, c, tot);
}

// Activation rows [m0, m0 + MB) x weight row n: its full blocks, then the masked tail block; the
// unreduced results into sums / corr (finish).
template <bool DP, int MB, int SDT>
AL4_BF16 inline void row_dot(const Int4W& w, const Int4Act& a, int64_t m0, int64_t n, const Ctx& c, __m512* sums,
                             float* corr) {
  __m512 tot[MB], sv;
#pragma GCC unroll 16
  for (int i = 0; i < MB; ++i) tot[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < c.nfull; ++b) {
    const __m512i wq = load_block<SDT, false>(w, n, b, c, sv);
    block<DP, MB>(a, m0, b, wq, sv, c, tot);
  }
  if (c.nfull < c.nblk) {
    const __m512i wq = load_block<SDT, true>(w, n, c.nfull, c, sv);
    block<DP, MB>(a, m0, c.nfull, wq, sv, c, tot);
  }
  finish<MB, SDT>(w, a, m0, n, tot, c, sums, corr);
}

// Weight rows 16 at a time; each row against the x rows in chunks of 8, 4, 3, 2, 1 (a chunk reads
// the weight row once more, from L1), then per x row one sum16 over the 16 weight rows and one
// masked store.
template <bool DP, int SDT>
AL4_BF16 void rows_t(const Int4W& w, const Int4Act& a, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const Ctx c = make_ctx(w);
  thread_local std::vector<float> buf;  // sums [M][16] vectors, then corr [M][16]
  buf.resize(size_t(a.M * 16 * 17 + 16));
  float* base = buf.data() + (16 - reinterpret_cast<uintptr_t>(buf.data()) / 4 % 16) % 16;  // 64-byte aligned
  __m512* sums = reinterpret_cast<__m512*>(base);
  float* corr = base + a.M * 16 * 16;
  std::fill(corr, corr + a.M * 16, 0.0f);
  for (int64_t nb = n0; nb < n1; nb += 16) {
    const int64_t cnt = std::min<int64_t>(16, n1 - nb);
    for (int64_t j = 0; j < cnt; ++j)
      for (int64_t m = 0; m < a.M;) {
        __m512* s = sums + m * 16 + j;
        float* co = corr + m * 16 + j;
        const int64_t r = a.M - m;
        if (r >= 8) {
          row_dot<DP, 8, SDT>(w, a, m, nb + j, c, s, co), m += 8;
        } else if (r >= 4) {
          row_dot<DP, 4, SDT>(w, a, m, nb + j, c, s, co), m += 4;
        } else if (r == 3) {
          row_dot<DP, 3, SDT>(w, a, m, nb + j, c, s, co), m += 3;
        } else if (r == 2) {
          row_dot<DP, 2, SDT>(w, a, m, nb + j, c, s, co), m += 2;
        } else {
          row_dot<DP, 1, SDT>(w, a, m, nb + j, c, s, co), m += 1;
        }
      }
    const __mmask16 mk = __mmask16((1u << cnt) - 1);  // lanes past cnt: stale sums, not stored
    for (int64_t m = 0; m < a.M; ++m)
      _mm512_mask_storeu_ps(y + m * ldy + nb, mk, _mm512_sub_ps(sum16(sums + m * 16), _mm512_load_ps(corr + m * 16)));
  }
}

template <bool DP>
void rows_np(const Int4W& w, const Int4Act& a, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  if (w.sdt == kBF16) return rows_t<DP, kBF16>(w, a, y, ldy, n0, n1);
  if (w.sdt == kF16) return rows_t<DP, kF16>(w, a, y, ldy, n0, n1);
  rows_t<DP, kF32>(w, a, y, ldy, n0, n1);
}

void rows_avx512(const Int4W& w, const Int4Act& a, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  if (a.bf16) return rows_np<true>(w, a, y, ldy, n0, n1);
  rows_np<false>(w, a, y, ldy, n0, n1);
}

}  // namespace

const Int4Kernel* int4_kernel_avx512() {
  static const Int4Kernel dp{"avx512bf16", prep_dp, rows_avx512}, fma{"avx512", prep_fma, rows_avx512};
  static const Int4Kernel* k = [] {
    __builtin_cpu_init();
    if (cpu_isa_level() < 4) return static_cast<const Int4Kernel*>(nullptr);
    return __builtin_cpu_supports("avx512bf16") ? &dp : &fma;
  }();
  return k;
}

#else

const Int4Kernel* int4_kernel_avx512() { return nullptr; }

#endif  // AL4_INT4_AVX512

}  // namespace al4::cpu
