// Grouped GEMM on Composable Kernel (CK): E_g = A_g @ B_g for G groups, bf16 in and out, fp32
// accumulation, all row-major (A [M_g, K], B [K, N] = our input-major expert weights, E [M_g, N]).
// The per-group arguments live in device memory (CK's tile-loop kernel reads M_g there), so a
// kernel can write them and nothing syncs with the host. Compiled only with AMD_LLAMA4_WITH_CK.
#pragma once

#include <stdint.h>

#include "ck/ck.hpp"
#include "ck/utility/common_header.hpp"  // index_t etc.: the CK header below is not self-contained
#include "ck/tensor_operation/gpu/device/device_grouped_gemm_tile_loop.hpp"

namespace al4::ck_backend {

// One group's pointers, sizes and leading dimensions (elements), as CK's kernel reads them.
// Build it on the device with its __host__ __device__ constructor; M may be 0 (group skipped).
using GroupArgs = ::ck::tensor_operation::device::GroupedGemmTileLoopKernelArguments<0>;

// Whether the compiled CK instance takes N and K (vector widths, padding) on the current device
// (false on GPUs without XDL/MFMA support in this CK version, e.g. gfx950 with an older CK).
bool grouped_gemm_bf16_supported(int64_t N, int64_t K);

// Runs G groups that share N and K. dev_args: [G] GroupArgs in device memory, already written
// in stream order. Throws std::runtime_error when CK rejects the shapes.
void grouped_gemm_bf16(const GroupArgs* dev_args, int groups, int64_t N, int64_t K, hipStream_t stream);

}  // namespace al4::ck_backend
