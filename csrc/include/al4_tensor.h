// A borrowed tensor: pointer + dtype + shape + strides (elements) + device + stream. The Python
// launcher builds it from a torch tensor (no libtorch link, no torch ABI lock-in) and keeps the
// tensor alive for the call. Checks raise std::invalid_argument naming the tensor and the problem.
#pragma once

#include <stdint.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "al4_common.h"

namespace al4 {

struct TensorRef {
  uintptr_t ptr = 0;
  int dtype = kF32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  int device = 0;        // 0 = CPU, 1 = GPU (HIP or CUDA)
  uintptr_t stream = 0;  // hipStream_t / cudaStream_t for GPU tensors, 0 = default stream
  std::string name = "tensor";

  int dim() const { return int(shape.size()); }
  int64_t size(int d) const { return shape[d < 0 ? d + dim() : d]; }
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  template <typename T>
  T* data() const { return reinterpret_cast<T*>(ptr); }

  bool contiguous() const {
    int64_t expect = 1;
    for (int d = dim() - 1; d >= 0; --d) {
      if (shape[d] != 1 && strides[d] != expect) return false;
      expect *= shape[d];
    }
    return true;
  }
};

inline const char* dtype_name(int d) {
  static const char* names[] = {"float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e4m3fnuz",
                                "int32", "int64", "uint8"};
  return (d >= 0 && d < 8) ? names[d] : "unknown";
}

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

inline void check(bool ok, const std::string& msg) {
  if (!ok) fail(msg);
}

inline void check_contiguous(const TensorRef& t, const char* op) {
  check(t.contiguous(), std::string(op) + ": " + t.name + " must be contiguous");
}

inline void check_dtype(const TensorRef& t, std::initializer_list<int> ok, const char* op) {
  for (int d : ok)
    if (t.dtype == d) return;
  fail(std::string(op) + ": " + t.name + " has unsupported dtype " + dtype_name(t.dtype));
}

inline void check_dim(const TensorRef& t, int nd, const char* op) {
  check(t.dim() == nd, std::string(op) + ": " + t.name + " must have " + std::to_string(nd) + " dims, got " +
                           std::to_string(t.dim()));
}

// A 3-d tensor stored with its last two dims swapped: a transposed view of a contiguous
// [d0, d2, d1] (the output-major expert weights of a CPU model).
inline bool last_two_transposed(const TensorRef& t) {
  return t.dim() == 3 && t.strides[0] == t.size(1) * t.size(2) && t.strides[1] == 1 && t.strides[2] == t.size(1);
}

inline std::string shape_str_of(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}
inline std::string shape_str(const TensorRef& t) { return shape_str_of(t.shape); }

inline void check_shape(const TensorRef& t, std::vector<int64_t> want, const char* op) {
  check(t.shape == want, std::string(op) + ": " + t.name + " has shape " + shape_str(t) + ", expected [" +
                             [&] {
                               std::string s;
                               for (size_t i = 0; i < want.size(); ++i) s += (i ? ", " : "") + std::to_string(want[i]);
                               return s;
                             }() + "]");
}

}  // namespace al4
