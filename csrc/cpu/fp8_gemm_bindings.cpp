// Launcher of the CPU fp8_gemm (w8a8), registered into amd_llama4._C by bindings.cpp. It checks
// shapes, dtypes, contiguity and device again (amd_llama4/ops/native.py did the same through
// ops/fp8_gemm.py's check; this is the C++ side's own guard) with errors naming the tensor at fault.
#include <string>

#include <pybind11/pybind11.h>

#include "cpu_ops.h"
#include "fp8_gemm.h"

namespace py = pybind11;

namespace al4::cpu {

namespace {

std::string dims2(int64_t a, int64_t b) { return "[" + std::to_string(a) + ", " + std::to_string(b) + "]"; }

void fp8_gemm_launch(const TensorRef& a_q, const TensorRef& a_scale, const TensorRef& b_q, const TensorRef& b_scale,
                     int64_t block_n, int64_t block_k, const TensorRef& out) {
  const char* op = "fp8_gemm";
  check_dim(a_q, 2, op);
  check_dim(b_q, 2, op);
  check_dtype(a_q, {kF8E4M3FN, kF8E4M3FNUZ}, op);
  check_dtype(b_q, {kF8E4M3FN, kF8E4M3FNUZ}, op);
  const int64_t M = a_q.size(0), K = a_q.size(1), N = b_q.size(0);
  check(b_q.size(1) == K, "fp8_gemm: " + b_q.name + " must be [N, K=" + std::to_string(K) + "] for " + a_q.name +
                              " " + shape_str(a_q) + ", got " + shape_str(b_q));
  check_dtype(a_scale, {kF32}, op);
  check_dtype(b_scale, {kF32}, op);
  check(block_n >= 0 && block_k >= 0 && (block_n == 0) == (block_k == 0),
        "fp8_gemm: block (" + std::to_string(block_n) + ", " + std::to_string(block_k) +
            ") must be two sizes >= 1, or (0, 0) for per-token/channel/tensor scales");
  if (block_k == 0) {
    check(a_scale.dim() == 2 && a_scale.size(1) == 1 && (a_scale.size(0) == M || a_scale.size(0) == 1),
          "fp8_gemm: " + a_scale.name + " must be " + dims2(M, 1) + " or [1, 1], got " + shape_str(a_scale));
    check(b_scale.dim() == 2 && b_scale.size(1) == 1 && (b_scale.size(0) == N || b_scale.size(0) == 1),
          "fp8_gemm: " + b_scale.name + " must be " + dims2(N, 1) + " or [1, 1], got " + shape_str(b_scale));
  } else {
    const int64_t kb = ceil_div(K, block_k), nb = ceil_div(N, block_n);
    check(a_scale.dim() == 2 && a_scale.size(0) == M && a_scale.size(1) == kb,
          "fp8_gemm: " + a_scale.name + " must be " + dims2(M, kb) + " (M, ceil(K/block_k)), got " +
              shape_str(a_scale));
    check(b_scale.dim() == 2 && b_scale.size(0) == nb && b_scale.size(1) == kb,
          "fp8_gemm: " + b_scale.name + " must be " + dims2(nb, kb) + " (ceil(N/block_n), ceil(K/block_k)), got " +
              shape_str(b_scale));
  }
  check_shape(out, {M, N}, op);
  check_dtype(out, {kF32, kBF16}, op);
  for (const TensorRef* t : {&a_q, &a_scale, &b_q, &b_scale, &out}) {
    check(t->device == 0, "fp8_gemm: " + t->name + " is a GPU tensor; the native fp8_gemm is CPU only");
    check_contiguous(*t, op);
  }
  fp8_gemm(a_q, a_scale, b_q, b_scale, block_n, block_k, out);
}

}  // namespace

void register_fp8_gemm(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("fp8_gemm", &fp8_gemm_launch, py::arg("a_q"), py::arg("a_scale"), py::arg("b_q"), py::arg("b_scale"),
        py::arg("block_n"), py::arg("block_k"), py::arg("out"), nogil);
  m.def("fp8_gemm_isa", &fp8_gemm_isa);
}

}  // namespace al4::cpu
