// pybind11 registration of the Composable Kernel ops (AL4_WITH_CK builds only); called once from
// csrc/bindings.cpp. The launcher checks shapes/dtypes/devices (errors name the tensor), then runs
// the CK fused MoE in ck_fused_moe.hip. Plain C++: no CK or HIP headers here.
#include <pybind11/pybind11.h>

#include "ck/ck_ops.h"

namespace py = pybind11;

namespace al4::ck_backend {

namespace {

// x: [T, H] bf16; w_gate_up: [E, H, 2I]; w_down: [E, I, H] bf16; topk_*: [T, k] fp32 / int32;
// workspace: uint8 [>= ck_fused_moe_workspace_bytes]; out: [T, H] bf16. All contiguous, on the GPU.
void ck_fused_moe(const TensorRef& x, const TensorRef& w1, const TensorRef& w2, const TensorRef& tw,
                  const TensorRef& ids, const TensorRef& workspace, const TensorRef& out) {
  const char* op = "ck_fused_moe";
  check_dim(x, 2, op);
  check_dim(w1, 3, op);
  check_dim(w2, 3, op);
  check_dim(ids, 2, op);
  const int64_t T = x.size(0), H = x.size(1), E = w1.size(0);
  check(w1.size(1) == H && w1.size(2) % 2 == 0,
        "ck_fused_moe: w_gate_up must be [E, H=" + std::to_string(H) + ", 2I], got " + shape_str(w1));
  const int64_t I = w1.size(2) / 2;
  check_shape(w2, {E, I, H}, op);
  check(ids.size(0) == T, "ck_fused_moe: topk_ids must be [T=" + std::to_string(T) + ", k], got " + shape_str(ids));
  check_shape(tw, ids.shape, op);
  check_shape(out, x.shape, op);
  for (const TensorRef* t : {&x, &w1, &w2, &out}) check_dtype(*t, {kBF16}, op);
  check_dtype(tw, {kF32}, op);
  check_dtype(ids, {kI32}, op);
  check_dtype(workspace, {kU8}, op);
  for (const TensorRef* t : {&x, &w1, &w2, &tw, &ids, &workspace, &out}) {
    check_contiguous(*t, op);
    check(t->device != 0, std::string(op) + ": " + t->name + " must be a GPU tensor (CK has no CPU path)");
  }
  const size_t need = fused_moe_workspace_bytes(T, ids.size(1), H, I, E);
  check(size_t(workspace.numel()) >= need, std::string(op) + ": workspace has " + std::to_string(workspace.numel()) +
                                               " bytes, needs " + std::to_string(need));
  fused_moe(x, w1, w2, tw, ids, workspace, out);
}

}  // namespace

void register_ops(py::module_& m) {
  m.def("ck_fused_moe", &ck_fused_moe, py::arg("x"), py::arg("w_gate_up"), py::arg("w_down"), py::arg("topk_weights"),
        py::arg("topk_ids"), py::arg("workspace"), py::arg("out"), py::call_guard<py::gil_scoped_release>());
  m.def("ck_fused_moe_supported", &fused_moe_supported, py::arg("hidden"), py::arg("intermediate"),
        "whether CK's grouped GEMM instance takes these sizes on the current GPU");
  m.def("ck_fused_moe_workspace_bytes", &fused_moe_workspace_bytes, py::arg("tokens"), py::arg("top_k"),
        py::arg("hidden"), py::arg("intermediate"), py::arg("experts"));
}

}  // namespace al4::ck_backend
