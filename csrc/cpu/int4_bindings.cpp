// Launchers of the int4 (w4a16) CPU ops, registered into amd_llama4._C by bindings.cpp. Each checks
// shapes, dtypes, contiguity and device again (the Python launcher in amd_llama4/ops/native.py did
// the same; this is the C++ side's own guard) with errors that name the tensor at fault.
#include <optional>
#include <string>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu_ops.h"
#include "int4_ops.h"

namespace py = pybind11;

namespace al4::cpu {

namespace {

std::string dims(std::initializer_list<int64_t> v) {
  std::string s = "[";
  for (auto it = v.begin(); it != v.end(); ++it) s += (it == v.begin() ? "" : ", ") + std::to_string(*it);
  return s + "]";
}

void cpu_contig(const char* op, std::initializer_list<const TensorRef*> ts) {
  for (const TensorRef* t : ts) {
    if (!t) continue;
    check(t->device == 0, std::string(op) + ": " + t->name + " is a GPU tensor; the native int4 kernels are CPU only");
    check_contiguous(*t, op);
  }
}

// One int4 weight [lead..., N, K/2] with its scales / zeros [lead..., N, K/G]; -> K.
int64_t check_weight(const char* op, const TensorRef& q, const TensorRef& s, const TensorRef* z, int64_t G) {
  check(q.dtype == kU8, std::string(op) + ": " + q.name + " must be uint8, got " + dtype_name(q.dtype));
  check(G == 32 || G == 64 || G == 128,
        std::string(op) + ": group_size " + std::to_string(G) + " not in (32, 64, 128)");
  const int64_t K = q.size(-1) * 2;
  check(K % G == 0, std::string(op) + ": " + q.name + "'s input width " + std::to_string(K) +
                        " is not a multiple of group_size " + std::to_string(G));
  std::vector<int64_t> want(q.shape);
  want.back() = K / G;
  check(s.dtype == kF32 || s.dtype == kBF16 || s.dtype == kF16,
        std::string(op) + ": " + s.name + " must be float32, bfloat16 or float16, got " + dtype_name(s.dtype));
  check_shape(s, want, op);
  if (z) {
    check(z->dtype == kU8, std::string(op) + ": " + z->name + " must be uint8, got " + dtype_name(z->dtype));
    check_shape(*z, want, op);
  }
  return K;
}

void linear_launch(const TensorRef& x, const TensorRef& q, const TensorRef& s, std::optional<TensorRef> z,
                   int64_t G, const TensorRef& out) {
  const char* op = "int4_linear";
  check_dim(x, 2, op);
  check_dim(q, 2, op);
  check_dtype(x, {kF32, kBF16}, op);
  const TensorRef* zp = z ? &*z : nullptr;
  const int64_t K = check_weight(op, q, s, zp, G);
  check(x.size(1) == K, std::string(op) + ": x must be [M, K=" + std::to_string(K) + "] for " + q.name + " " +
                            shape_str(q) + ", got " + shape_str(x));
  check_shape(out, {x.size(0), q.size(0)}, op);
  check(out.dtype == x.dtype, std::string(op) + ": out must have x's dtype");
  cpu_contig(op, {&x, &q, &s, zp, &out});
  int4_linear(x, q, s, zp, G, out);
}

void dequantize_launch(const TensorRef& q, const TensorRef& s, std::optional<TensorRef> z, int64_t G,
                       const TensorRef& out) {
  const char* op = "dequantize_int4";
  check_dim(q, 2, op);
  const TensorRef* zp = z ? &*z : nullptr;
  const int64_t K = check_weight(op, q, s, zp, G);
  check_shape(out, {q.size(0), K}, op);
  check_dtype(out, {kF32, kBF16}, op);
  cpu_contig(op, {&q, &s, zp, &out});
  int4_dequantize(q, s, zp, G, out);
}

void moe_launch(const TensorRef& x, const TensorRef& w13_q, const TensorRef& w13_s, std::optional<TensorRef> w13_z,
                const TensorRef& w2_q, const TensorRef& w2_s, std::optional<TensorRef> w2_z, const TensorRef& tw,
                const TensorRef& ids, int64_t G, const TensorRef& out) {
  const char* op = "fused_moe_int4";
  check_dim(x, 2, op);
  check_dim(w13_q, 3, op);
  check_dim(w2_q, 3, op);
  check_dtype(x, {kF32, kBF16}, op);
  check(w13_z.has_value() == w2_z.has_value(), "fused_moe_int4: w13_z and w2_z must both be given or both be None");
  const TensorRef *z1 = w13_z ? &*w13_z : nullptr, *z2 = w2_z ? &*w2_z : nullptr;
  const int64_t T = x.size(0), H = x.size(1), E = w13_q.size(0);
  check(check_weight(op, w13_q, w13_s, z1, G) == H && w13_q.size(1) % 2 == 0,
        "fused_moe_int4: " + w13_q.name + " must be [E, 2I, H/2 = " + std::to_string(H / 2) + "], got " +
            shape_str(w13_q));
  const int64_t I = w13_q.size(1) / 2;
  check_weight(op, w2_q, w2_s, z2, G);
  check(w2_q.shape == std::vector<int64_t>{E, H, I / 2},
        "fused_moe_int4: " + w2_q.name + " must be " + dims({E, H, I / 2}) + ", got " + shape_str(w2_q));
  check(I % 32 == 0, "fused_moe_int4: intermediate size " + std::to_string(I) + " must be a multiple of 32");
  check_dim(ids, 2, op);
  check(ids.size(0) == T,
        "fused_moe_int4: " + ids.name + " must be [T=" + std::to_string(T) + ", k], got " + shape_str(ids));
  check_shape(tw, ids.shape, op);
  check_dtype(tw, {kF32}, op);
  check_dtype(ids, {kI32}, op);
  check_shape(out, {T, H}, op);
  check(out.dtype == x.dtype, "fused_moe_int4: out must have x's dtype");
  cpu_contig(op, {&x, &w13_q, &w13_s, z1, &w2_q, &w2_s, z2, &tw, &ids, &out});
  fused_moe_int4(x, w13_q, w13_s, z1, w2_q, w2_s, z2, tw, ids, G, out);
}

}  // namespace

void register_int4_ops(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("int4_linear", &linear_launch, py::arg("x"), py::arg("qweight"), py::arg("scales"),
        py::arg("zeros").none(true), py::arg("group_size"), py::arg("out"), nogil);
  m.def("dequantize_int4", &dequantize_launch, py::arg("qweight"), py::arg("scales"), py::arg("zeros").none(true),
        py::arg("group_size"), py::arg("out"), nogil);
  m.def("fused_moe_int4", &moe_launch, py::arg("x"), py::arg("w13_q"), py::arg("w13_s"), py::arg("w13_z").none(true),
        py::arg("w2_q"), py::arg("w2_s"), py::arg("w2_z").none(true), py::arg("topk_weights"), py::arg("topk_ids"),
        py::arg("group_size"), py::arg("out"), nogil);
  m.def("int4_isa", &int4_isa);
}

}  // namespace al4::cpu
