// int4 weight-only linear on CPU: out[M, N] = x[M, K] @ dequant(W)[N, K]^T. Built for the decode
// step, where the product is a weight stream and int4 reads a quarter of bf16's bytes: the packed
// nibbles are dequantised in registers, never written out. The body is chosen once per process
// (int4_kernel): AVX-512 BF16 (int4_avx512.cpp; vdpbf16ps on exact bf16 nibble values, the scale
// applied once per block of a group), else the AVX2 and portable bodies here: fp32 throughout, a
// tile of NB weight rows x MB activation rows in vector accumulators; AVX2: (float(q) - z) * s,
// portable: a scalar table (q - z) * s per group.
// Prefill-sized inputs (more than a few rows) are dequantised here and multiplied by torch's BLAS
// (amd_llama4/ops/native.py): there the arithmetic, not the weight stream, dominates.
#include <algorithm>
#include <string>
#include <vector>

#include "cpu_ops.h"
#include "int4_kernel.h"
#include "int4_ops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define AL4_INT4_X86 1
#define AL4_V4 __attribute__((target("arch=x86-64-v4")))
#define AL4_V3 __attribute__((target("arch=x86-64-v3")))
#endif

namespace al4::cpu {

namespace {

constexpr int NB = int(kInt4NB);

// ---------------------------------------------------------------- AVX-512 (dequantise only)

#ifdef AL4_INT4_X86
// Dequantise weight rows [r0, r1) into out [N, K] fp32 or bf16 (round to nearest even; the values
// are finite). Per group and row a 16-float table (q - z) * s that vpermps indexes with the
// nibbles (exactly the reference's one rounding), then the low / high nibble results interleaved.
AL4_V4 void dequant_rows_v4(const Int4W& w, int64_t r0, int64_t r1, void* out, bool bf16) {
  const int64_t KB = w.K / 2, NG = w.K / w.G, BPG = w.G / 32;
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t n = r0; n < r1; ++n) {
    for (int64_t g = 0; g < NG; ++g) {
      const int64_t si = n * NG + g;
      const __m512 tab = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(int4_zero(w, si))),
                                       _mm512_set1_ps(int4_scale(w, si)));
      for (int64_t b = g * BPG; b < (g + 1) * BPG; ++b) {
        const auto* src = reinterpret_cast<const __m128i*>(w.q + n * KB + b * 16);
        const __m512i d = _mm512_cvtepu8_epi32(_mm_loadu_si128(src));
        const __m512 lo = _mm512_permutexvar_ps(d, tab), hi = _mm512_permutexvar_ps(_mm512_srli_epi32(d, 4), tab);
        const __m512 v0 = _mm512_permutex2var_ps(lo, lo_idx, hi), v1 = _mm512_permutex2var_ps(lo, hi_idx, hi);
        const int64_t o = n * w.K + b * 32;
        if (!bf16) {
          _mm512_storeu_ps(static_cast<float*>(out) + o, v0);
          _mm512_storeu_ps(static_cast<float*>(out) + o + 16, v1);
        } else {
          for (int h = 0; h < 2; ++h) {
            const __m512i u = _mm512_castps_si512(h ? v1 : v0);
            const __m512i r = _mm512_srli_epi32(
                _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)))),
                16);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + o + 16 * h),
                                _mm512_cvtepi32_epi16(r));
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- AVX2

template <int MB>
AL4_V3 inline void tile_v3(const Int4W& w, const float* xp, int64_t ldx, float* y, int64_t ldy, int64_t n,
                           int64_t n1) {
  constexpr int NB3 = 2;  // 16 ymm registers
  const int64_t KB = w.K / 2, NG = w.K / w.G, BPG = w.G / 32;
  const __m256i lo4 = _mm256_set1_epi32(15);
  for (int64_t nn = n; nn < std::min(n + NB, n1); nn += NB3) {
    int64_t row[NB3];
    const uint8_t* q[NB3];
    for (int j = 0; j < NB3; ++j) {
      row[j] = std::min<int64_t>(nn + j, n1 - 1);
      q[j] = w.q + row[j] * KB;
    }
    __m256 acc[MB][NB3];
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NB3; ++j) acc[i][j] = _mm256_setzero_ps();
    for (int64_t g = 0; g < NG; ++g) {
      __m256i zi[NB3];
      __m256 sv[NB3];
      for (int j = 0; j < NB3; ++j) {
        const int64_t si = row[j] * NG + g;
        zi[j] = _mm256_set1_epi32(int(int4_zero(w, si)));
        sv[j] = _mm256_set1_ps(int4_scale(w, si));
      }
      for (int64_t b = g * BPG; b < (g + 1) * BPG; ++b)
        for (int h = 0; h < 2; ++h) {  // bytes 8h..8h+7: columns 8h.. (low nibbles) and 16+8h.. (high)
          __m256 wl[NB3], wh[NB3];
          for (int j = 0; j < NB3; ++j) {
            const __m256i d =
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q[j] + b * 16 + h * 8)));
            wl[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(d, lo4), zi[j])), sv[j]);
            wh[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(d, 4), zi[j])), sv[j]);
          }
          for (int i = 0; i < MB; ++i) {
            const float* xb = xp + i * ldx + b * 32 + h * 8;
            const __m256 xe = _mm256_loadu_ps(xb), xo = _mm256_loadu_ps(xb + 16);
            for (int j = 0; j < NB3; ++j)
              acc[i][j] = _mm256_fmadd_ps(xo, wh[j], _mm256_fmadd_ps(xe, wl[j], acc[i][j]));
          }
        }
    }
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NB3; ++j)
        if (nn + j < n1) {
          const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc[i][j]), _mm256_extractf128_ps(acc[i][j], 1));
          const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
          y[i * ldy + nn + j] = _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
        }
  }
}

AL4_V3 void rows_v3(const Int4W& w, const float* xp, int64_t M, int64_t ldx, float* y, int64_t ldy, int64_t n0,
                    int64_t n1) {
  for (int64_t n = n0; n < n1; n += NB) {
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) tile_v3<2>(w, xp + m * ldx, ldx, y + m * ldy, ldy, n, n1);
    for (; m < M; ++m) tile_v3<1>(w, xp + m * ldx, ldx, y + m * ldy, ldy, n, n1);
  }
}
#endif  // AL4_INT4_X86

// ---------------------------------------------------------------- portable

void rows_base(const Int4W& w, const float* xp, int64_t M, int64_t ldx, float* y, int64_t ldy, int64_t n0,
               int64_t n1) {
  const int64_t KB = w.K / 2, NG = w.K / w.G, BPG = w.G / 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* q = w.q + n * KB;
    for (int64_t m = 0; m < M; ++m) {
      const float* x = xp + m * ldx;
      float acc = 0.0f;
      for (int64_t g = 0; g < NG; ++g) {
        float tab[16];
        const float s = int4_scale(w, n * NG + g), z = int4_zero(w, n * NG + g);
        for (int t = 0; t < 16; ++t) tab[t] = (float(t) - z) * s;
        for (int64_t b = g * BPG; b < (g + 1) * BPG; ++b)
          for (int t = 0; t < 16; ++t) {
            const uint8_t v = q[b * 16 + t];
            acc += x[b * 32 + t] * tab[v & 15] + x[b * 32 + 16 + t] * tab[v >> 4];
          }
      }
      y[m * ldy + n] = acc;
    }
  }
}

// The AVX2 and portable bodies' layout: fp32 rows "nibble-permuted": within each block of 32
// columns the 16 even columns first, then the 16 odd ones, so that the low nibbles of 16 packed
// bytes multiply 16 consecutive floats and the high nibbles the next 16 (G >= 32: a block never
// straddles two groups). Those bodies apply zero points themselves.
Int4Act prep_f32(const Int4In& in, int64_t, bool, std::vector<char>& scratch) {
  const int64_t M = in.M, K = in.K;
  scratch.resize(size_t(M * K) * sizeof(float));
  float* xp = reinterpret_cast<float*>(scratch.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < K; c += 32)
      for (int t = 0; t < 16; ++t) {
        const int64_t i = m * in.ld + c + 2 * t;
        float* d = xp + m * K + c;
        if (in.dtype == kBF16) {
          d[t] = load_f32(static_cast<const bf16_t*>(in.x), i);
          d[16 + t] = load_f32(static_cast<const bf16_t*>(in.x), i + 1);
        } else {
          d[t] = static_cast<const float*>(in.x)[i];
          d[16 + t] = static_cast<const float*>(in.x)[i + 1];
        }
      }
  Int4Act a;
  a.data = scratch.data();
  a.M = M, a.K = K, a.row_bytes = K * int64_t(sizeof(float));
  return a;
}

template <void (*F)(const Int4W&, const float*, int64_t, int64_t, float*, int64_t, int64_t, int64_t)>
void rows_f32(const Int4W& w, const Int4Act& a, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  F(w, reinterpret_cast<const float*>(a.data), a.M, a.row_bytes / int64_t(sizeof(float)), y, ldy, n0, n1);
}

Int4W weight_of(const TensorRef& q, const TensorRef& s, const TensorRef* z, int64_t G, int64_t e = -1) {
  Int4W w;
  const int64_t N = q.size(-2), K = q.size(-1) * 2, NG = K / G;
  const int64_t off = e < 0 ? 0 : e;
  w.q = q.data<uint8_t>() + off * N * (K / 2);
  w.sdt = s.dtype;
  w.s = reinterpret_cast<const char*>(s.ptr) + off * N * NG * (s.dtype == kF32 ? 4 : 2);
  w.z = z ? z->data<uint8_t>() + off * N * NG : nullptr;
  w.N = N, w.K = K, w.G = G;
  return w;
}

}  // namespace

const Int4Kernel& int4_kernel() {
  static const Int4Kernel* k = [] {
    if (const Int4Kernel* b = int4_kernel_avx512()) return b;
#ifdef AL4_INT4_X86
    static const Int4Kernel v3{"avx2", prep_f32, rows_f32<rows_v3>};
    if (cpu_isa_level() >= 3) return &v3;
#endif
    static const Int4Kernel base{"portable", prep_f32, rows_f32<rows_base>};
    return &base;
  }();
  return *k;
}

const char* int4_isa() { return int4_kernel().name; }

Int4W int4_weight(const TensorRef& q, const TensorRef& s, const TensorRef* z, int64_t G, int64_t e) {
  return weight_of(q, s, z, G, e);
}

// x: [M, K] fp32|bf16 (M: a decode step's rows; prefill goes to dequantise + BLAS, ops/native.py).
void int4_linear(const TensorRef& x, const TensorRef& q, const TensorRef& s, const TensorRef* z, int64_t G,
                 const TensorRef& out) {
  int4_linear_multi(x, {Int4Part{&q, &s, z}}, G, out);
}

// out [M, sum_p N_p] = x [M, K] @ [W_0; W_1; ...]^T (each part [N_p, K/2] with the same K and G): the
// decode step's q|k|v and gate|up in one call, one activation layout and one parallel region whose
// threads split the parts' weight rows evenly (a 256-row k or v alone leaves a thread half idle).
void int4_linear_multi(const TensorRef& x, const std::vector<Int4Part>& parts, int64_t G, const TensorRef& out) {
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  check(x.dtype == kF32 || x.dtype == kBF16, std::string("int4_linear: ") + x.name + " has unsupported dtype " +
                                                 dtype_name(x.dtype) + " (CPU path: float32, bfloat16)");
  std::vector<Int4W> ws;
  std::vector<int64_t> col{0}, tile0{0};  // per part: first output column, first global tile
  bool zp = false;
  for (const Int4Part& p : parts) {
    ws.push_back(weight_of(*p.q, *p.s, p.z, G));
    zp = zp || p.z != nullptr;
    col.push_back(col.back() + ws.back().N);
    tile0.push_back(tile0.back() + ceil_div(ws.back().N, kInt4NB));
  }
  check(col.back() == N, "int4_linear: the parts' rows (" + std::to_string(col.back()) + ") must equal out's " +
                             std::to_string(N) + " columns");
  const Int4Kernel& kern = int4_kernel();
  thread_local std::vector<char> scratch;  // reused: no allocation per decode-step call
  thread_local std::vector<float> yf;
  Int4In in;
  in.x = reinterpret_cast<const void*>(x.ptr), in.dtype = x.dtype, in.M = M, in.K = K, in.ld = K;
  const Int4Act a = kern.prep(in, G, zp, scratch);
  float* y = out.data<float>();
  if (x.dtype == kBF16) {
    yf.resize(size_t(M * N));
    y = yf.data();
  }
  const int64_t tiles = tile0.back(), threads = int64_t(omp_get_max_threads());
  const int64_t chunks = N * K * std::max<int64_t>(M, 4) > (1 << 16) ? std::min(tiles, threads) : 1;
  // contiguous shares, the ends stolen by a thread done early; pieces of ~64 KB of packed weights
  const int64_t step = std::max<int64_t>(1, (int64_t(64) << 10) / (kInt4NB * K / 2));
  parallel_ranges(tiles, chunks, step, [&](int64_t t0, int64_t t1) {
    for (size_t p = 0; p < ws.size(); ++p) {  // the piece's tiles within part p
      const int64_t a0 = std::max(t0, tile0[p]), a1 = std::min(t1, tile0[p + 1]);
      if (a0 >= a1) continue;
      const int64_t n0 = (a0 - tile0[p]) * kInt4NB, n1 = std::min(ws[p].N, (a1 - tile0[p]) * kInt4NB);
      kern.rows(ws[p], a, y + col[p], N, n0, n1);
      if (x.dtype == kBF16)  // the thread's own columns, rounded while they are in its cache
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = col[p] + n0; n < col[p] + n1; ++n) store_f32(out.data<bf16_t>(), m * N + n, y[m * N + n]);
    }
  });
}

void int4_dequantize(const TensorRef& q, const TensorRef& s, const TensorRef* z, int64_t G, const TensorRef& out) {
  const int64_t N = q.size(0), K = q.size(1) * 2, NG = K / G;
  const Int4W w = weight_of(q, s, z, G);
  const bool par = N * K > (1 << 16);
#ifdef AL4_INT4_X86
  if (cpu_isa_level() >= 4) {
    const int64_t threads = par ? int64_t(omp_get_max_threads()) : 1;
#pragma omp parallel for schedule(static) if (threads > 1)
    for (int64_t c = 0; c < threads; ++c)
      dequant_rows_v4(w, N * c / threads, N * (c + 1) / threads, reinterpret_cast<void*>(out.ptr), out.dtype == kBF16);
    return;
  }
#endif
#pragma omp parallel for schedule(static) if (par)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < NG; ++g) {
      float tab[16];
      const float sc = int4_scale(w, n * NG + g), zz = int4_zero(w, n * NG + g);
      for (int t = 0; t < 16; ++t) tab[t] = (float(t) - zz) * sc;
      const uint8_t* qb = w.q + n * (K / 2) + g * (G / 2);
      const int64_t o = n * K + g * G;
      if (out.dtype == kF32) {
        float* d = out.data<float>() + o;
        for (int64_t j = 0; j < G / 2; ++j) d[2 * j] = tab[qb[j] & 15], d[2 * j + 1] = tab[qb[j] >> 4];
      } else {
        bf16_t* d = out.data<bf16_t>() + o;
        for (int64_t j = 0; j < G / 2; ++j) {
          store_f32(d, 2 * j, tab[qb[j] & 15]);
          store_f32(d, 2 * j + 1, tab[qb[j] >> 4]);
        }
      }
    }
  }
}

}  // namespace al4::cpu
