// One CK device grouped GEMM instance: bf16 x bf16 -> bf16, fp32 accumulation, A/B/E row-major
// (MK_KN_MN: our expert weights [E, K, N] are input-major, i.e. B row-major [K, N] per expert, no
// transpose). CK's tile-loop variant reads each group's M from device memory, so MoE groups whose
// sizes are only known on the GPU need no host sync. M, N and K are padded (MNKPadding).
#include "ck/ck.hpp"
#include "ck/tensor_operation/gpu/device/gemm_specialization.hpp"
#include "ck/tensor_operation/gpu/device/impl/device_grouped_gemm_multiple_d_xdl_cshuffle_tile_loop.hpp"
#include "ck/tensor_operation/gpu/device/tensor_layout.hpp"
#include "ck/tensor_operation/gpu/element/element_wise_operation.hpp"

#include <stdexcept>
#include <string>
#include <vector>

#include "al4_common.h"
#include "ck/ck_grouped_gemm.h"

namespace al4::ck_backend {

namespace {

namespace ckd = ::ck::tensor_operation::device;
using BF16 = ::ck::bhalf_t;
using F32 = float;
using Row = ::ck::tensor_layout::gemm::RowMajor;
using PassThrough = ::ck::tensor_operation::element_wise::PassThrough;
template <::ck::index_t... Is>
using S = ::ck::Sequence<Is...>;

// Epilogue fp32 -> bf16 with round-to-nearest-even: CK's PassThrough truncates (type_convert<bhalf_t>
// drops the low bits), the torch reference rounds to nearest even. Same helper as our HIP kernels.
struct StoreBf16Rne {
  __host__ __device__ void operator()(BF16& e, const F32& c) const { e = BF16(al4::f32_to_bf16(c)); }
};

// Tile parameters: a 256-thread 128x128x32 tile, 2x2 32x32 XDL per wave, 8-wide bf16 loads of A
// along K, 2-wide loads of B along N, 8-wide stores of E (CK's irregular-tile MK_KN_MN set).
// Vector widths need K % 8 == 0 and N % 8 == 0; IsSupportedArgument checks that.
using Op = ckd::DeviceGroupedGemmMultipleDXdlCShuffleTileLoop<
    Row, Row, ::ck::Tuple<>, Row,                      // A, B, Ds, E layouts
    BF16, BF16, F32, F32, ::ck::Tuple<>, BF16,         // A, B, accumulator, C-shuffle, Ds, E types
    PassThrough, PassThrough, StoreBf16Rne,            // A, B, CDE element ops
    ckd::GemmSpecialization::MNKPadding,
    1,                                                 // K prefetch stages
    256, 128, 128, 32,                                 // block size, M/N/K per block
    8, 8,                                              // AK1, BK1
    32, 32, 2, 2,                                      // M/N per XDL, XDL per wave (M, N)
    S<4, 64, 1>, S<1, 0, 2>, S<1, 0, 2>, 2, 8, 8, 1,   // A block transfer
    S<4, 64, 1>, S<0, 2, 1>, S<0, 2, 1>, 1, 2, 8, 1,   // B block transfer
    1, 1, S<1, 32, 1, 8>, S<8>,                        // C shuffle
    ::ck::BlockGemmPipelineScheduler::Intrawave,
    ::ck::BlockGemmPipelineVersion::v1>;               // v1: the only one with a K-loop-free path

static_assert(sizeof(typename Op::KernelArguments) == sizeof(GroupArgs), "CK kernel argument type changed");

// Host-side descriptors, one per group: CK checks strides/vector widths on them (M stands for any
// group size: M is padded) and counts tiles. The real M of each group is read on the device.
std::vector<ckd::GemmDesc> host_descs(int groups, int64_t N, int64_t K) {
  const auto n = ::ck::index_t(N), k = ::ck::index_t(K);
  return std::vector<ckd::GemmDesc>(size_t(groups), ckd::GemmDesc{1, n, k, k, n, n, {}});
}

typename Op::Argument make_argument(const std::vector<ckd::GemmDesc>& descs) {
  // Pointers come from the device-side GroupArgs; the host vectors only carry the group count.
  // Occupancy and CU count are recomputed by the invoker at launch, so 0 here is not used.
  std::vector<const void*> a, b;
  std::vector<std::array<const void*, 0>> ds;
  std::vector<void*> e;
  return typename Op::Argument(a, b, ds, e, descs, PassThrough{}, PassThrough{}, StoreBf16Rne{}, 0, 0);
}

}  // namespace

bool grouped_gemm_bf16_supported(int64_t N, int64_t K) {
  if (N <= 0 || K <= 0 || N > INT32_MAX || K > INT32_MAX) return false;
  const auto descs = host_descs(1, N, K);
  return Op::IsSupportedArgument(make_argument(descs));
}

void grouped_gemm_bf16(const GroupArgs* dev_args, int groups, int64_t N, int64_t K, hipStream_t stream) {
  if (groups == 0) return;
  const auto descs = host_descs(groups, N, K);  // the Argument keeps a reference: alive until Run returns
  auto arg = make_argument(descs);
  if (!Op::IsSupportedArgument(arg))
    throw std::runtime_error("ck grouped_gemm_bf16: CK rejects N=" + std::to_string(N) + ", K=" + std::to_string(K) +
                             " on this device (needs N, K multiples of 8 and an XDL GPU)");
  Op op;
  op.SetDeviceKernelArgs(arg, const_cast<GroupArgs*>(dev_args));
  typename Op::Invoker invoker;
  invoker.Run(arg, StreamConfig{stream, false});  // launch only; CK checks hipGetLastError
}

}  // namespace al4::ck_backend
