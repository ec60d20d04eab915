// One header that lets the .hip sources compile with hipcc/clang (ROCm) and with nvcc (CUDA).
// Traps (shared/rocm-notes.md): wave64 on CDNA vs warp32 on NVIDIA, 64- vs 32-bit lane masks,
// __shfl_xor(v, m, 64) vs __shfl_xor_sync(mask, v, m, 32), and warpSize is not a constant
// expression under nvcc: size arrays with AL4_WARP, never with warpSize.
#pragma once

#include <stdint.h>

#if defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__)
#include <hip/hip_runtime.h>
#define AL4_HIP 1
#define AL4_WARP 64
typedef uint64_t al4_lane_mask_t;
typedef hipStream_t al4_stream_t;
typedef hipError_t al4_error_t;
#define al4GetLastError hipGetLastError
#define al4GetErrorString hipGetErrorString
#define al4Malloc hipMalloc
#define al4Free hipFree
#define al4MemsetAsync hipMemsetAsync
#define al4StreamSynchronize hipStreamSynchronize
#define AL4_SUCCESS hipSuccess
__device__ __forceinline__ float al4_shfl_xor(float v, int m) { return __shfl_xor(v, m, AL4_WARP); }
#else
#include <cuda_runtime.h>
#define AL4_CUDA 1
#define AL4_WARP 32
typedef uint32_t al4_lane_mask_t;
typedef cudaStream_t al4_stream_t;
typedef cudaError_t al4_error_t;
#define al4GetLastError cudaGetLastError
#define al4GetErrorString cudaGetErrorString
#define al4Malloc cudaMalloc
#define al4Free cudaFree
#define al4MemsetAsync cudaMemsetAsync
#define al4StreamSynchronize cudaStreamSynchronize
#define AL4_SUCCESS cudaSuccess
__device__ __forceinline__ float al4_shfl_xor(float v, int m) { return __shfl_xor_sync(0xffffffffu, v, m, AL4_WARP); }
#endif

// Matrix cores: MFMA on CDNA3/CDNA4 only; every other target takes the portable path.
#if defined(__gfx942__) || defined(__gfx950__)
#define AL4_MFMA 1
#endif

#include <stdexcept>
#include <string>

namespace al4::gpu {

inline void check_launch(const char* what) {
  al4_error_t e = al4GetLastError();
  if (e != AL4_SUCCESS) throw std::runtime_error(std::string(what) + ": " + al4GetErrorString(e));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int m = AL4_WARP / 2; m > 0; m >>= 1) v += al4_shfl_xor(v, m);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int m = AL4_WARP / 2; m > 0; m >>= 1) v = fmaxf(v, al4_shfl_xor(v, m));
  return v;
}

// Block-wide reduction through shared memory; blockDim.x a multiple of AL4_WARP, <= 1024.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v) {
  __shared__ float part[1024 / 32];
  const int lane = threadIdx.x % AL4_WARP, wid = threadIdx.x / AL4_WARP, nw = blockDim.x / AL4_WARP;
  v = MAX ? warp_max(v) : warp_sum(v);
  if (lane == 0) part[wid] = v;
  __syncthreads();
  if (wid == 0) {
    v = lane < nw ? part[lane] : (MAX ? 0.0f : 0.0f);
    v = MAX ? warp_max(v) : warp_sum(v);
    if (lane == 0) part[0] = v;
  }
  __syncthreads();
  const float r = part[0];
  __syncthreads();
  return r;
}

inline al4_stream_t stream_of(uintptr_t s) { return reinterpret_cast<al4_stream_t>(s); }

}  // namespace al4::gpu
