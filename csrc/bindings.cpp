// The single pybind11 module amd_llama4._C. Tensors arrive as TensorRef (pointer, dtype, shape,
// strides, device, stream) built by amd_llama4/ops/native.py; no libtorch link. Each launcher here
// checks shapes/dtypes/contiguity (errors name the tensor), then runs the CPU or GPU kernel.
#include <optional>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "al4_tensor.h"
#include "cpu/cpu_ops.h"
#ifdef AL4_WITH_GPU
#include "hip/gpu_ops.h"
#endif
#ifdef AL4_WITH_CK
#include "ck/ck_ops.h"
#endif

namespace py = pybind11;
namespace al4::cpu {
void register_int4_ops(py::module_& m);  // int4_linear, dequantize_int4, fused_moe_int4 (cpu/int4_bindings.cpp)
void register_decode_step(py::module_& m);  // DecodeStep and its model description (cpu/decode_step_bindings.cpp)
void register_fp8_gemm(py::module_& m);  // fp8_gemm (w8a8), fp8_gemm_isa (cpu/fp8_gemm_bindings.cpp)
}
using al4::TensorRef;

namespace {

#ifndef AL4_BACKEND
#define AL4_BACKEND "cpu"
#endif
#ifndef AL4_GPU_ARCHS
#define AL4_GPU_ARCHS ""
#endif

bool on_gpu(const TensorRef& t, const char* op) {
  if (t.device == 0) return false;
#ifdef AL4_WITH_GPU
  return true;
#else
  al4::fail(std::string(op) + ": " + t.name + " is a GPU tensor but amd_llama4._C was built for CPU only");
#endif
}

#ifdef AL4_WITH_GPU
#define AL4_RUN(op, ...) (on_gpu(first, #op) ? al4::gpu::op(__VA_ARGS__) : al4::cpu::op(__VA_ARGS__))
#else
#define AL4_RUN(op, ...) (on_gpu(first, #op), al4::cpu::op(__VA_ARGS__))
#endif

void same_device(std::initializer_list<const TensorRef*> ts, const char* op) {
  const TensorRef* a = *ts.begin();
  for (const TensorRef* t : ts)
    if (t) al4::check(t->device == a->device, std::string(op) + ": " + t->name + " is on another device than " + a->name);
}

void contiguous(std::initializer_list<const TensorRef*> ts, const char* op) {
  for (const TensorRef* t : ts)
    if (t) al4::check_contiguous(*t, op);
}

void silu_and_mul(const TensorRef& x, const TensorRef& out) {
  const char* op = "silu_and_mul";
  al4::check_dim(x, 2, op);
  al4::check(x.size(1) % 2 == 0, "silu_and_mul: x's last dim must be even ([gate | up])");
  al4::check_shape(out, {x.size(0), x.size(1) / 2}, op);
  al4::check(out.dtype == x.dtype, "silu_and_mul: out must have x's dtype");
  contiguous({&x, &out}, op);
  same_device({&x, &out}, op);
  const TensorRef& first = x;
  AL4_RUN(silu_and_mul, x, out);
}

void rms_norm(const TensorRef& x, const TensorRef* weight, double eps, const TensorRef* residual, const TensorRef& out,
              const TensorRef* residual_out) {
  const char* op = "rms_norm";
  al4::check_dim(x, 2, op);
  if (weight) {
    al4::check_shape(*weight, {x.size(1)}, op);
    al4::check(weight->dtype == x.dtype, "rms_norm: weight must have x's dtype");
  }
  al4::check((residual == nullptr) == (residual_out == nullptr), "rms_norm: residual and residual_out go together");
  for (const TensorRef* t : {residual, &out, residual_out})
    if (t) {
      al4::check_shape(*t, x.shape, op);
      al4::check(t->dtype == x.dtype, "rms_norm: " + t->name + " must have x's dtype");
    }
  contiguous({&x, weight, residual, &out, residual_out}, op);
  same_device({&x, weight, residual, &out, residual_out}, op);
  const TensorRef& first = x;
  AL4_RUN(rms_norm, x, weight, eps, residual, out, residual_out);
}

void moe_topk_sigmoid(const TensorRef& logits, int top_k, const TensorRef& weights, const TensorRef& ids) {
  const char* op = "moe_topk_sigmoid";
  al4::check_dim(logits, 2, op);
  al4::check(top_k >= 1 && top_k <= logits.size(1) && top_k <= 64,
             "moe_topk_sigmoid: top_k=" + std::to_string(top_k) + " must be in [1, min(E, 64)]");
  al4::check_shape(weights, {logits.size(0), top_k}, op);
  al4::check_shape(ids, {logits.size(0), top_k}, op);
  al4::check_dtype(weights, {al4::kF32}, op);
  al4::check_dtype(ids, {al4::kI32}, op);
  contiguous({&logits, &weights, &ids}, op);
  same_device({&logits, &weights, &ids}, op);
  const TensorRef& first = logits;
  AL4_RUN(moe_topk_sigmoid, logits, top_k, weights, ids);
}

// CPU: returns the used rows. GPU: writes them to `total` (int32 [1], device) and returns -1, so the
// host never waits for the count.
int64_t moe_align_block_size(const TensorRef& topk_ids, int num_experts, int block_size, const TensorRef& sorted_ids,
                             const TensorRef& expert_ids, const TensorRef* total) {
  const char* op = "moe_align_block_size";
  al4::check(num_experts >= 1 && block_size >= 1, "moe_align_block_size: num_experts and block_size must be >= 1");
  al4::check_dtype(topk_ids, {al4::kI32, al4::kI64}, op);
  al4::check_dtype(sorted_ids, {al4::kI32}, op);
  al4::check_dtype(expert_ids, {al4::kI32}, op);
  contiguous({&topk_ids, &sorted_ids, &expert_ids, total}, op);
  same_device({&topk_ids, &sorted_ids, &expert_ids, total}, op);
  if (on_gpu(topk_ids, op)) {
#ifdef AL4_WITH_GPU
    al4::check(total != nullptr, "moe_align_block_size: a GPU call needs total (int32 [1] on the device)");
    al4::check_dtype(*total, {al4::kI32}, op);
    al4::gpu::moe_align_block_size(topk_ids, num_experts, block_size, sorted_ids, expert_ids, *total);
#endif
    return -1;
  }
  return al4::cpu::moe_align_block_size(topk_ids, num_experts, block_size, sorted_ids, expert_ids);
}

void quantize_fp8(const TensorRef& x, const TensorRef& q, const TensorRef& scale, int64_t br, int64_t bc,
                  bool compute_scale) {
  const char* op = "quantize_fp8";
  al4::check_dim(x, 3, op);
  al4::check_shape(q, x.shape, op);
  al4::check_dtype(q, {al4::kF8E4M3FN, al4::kF8E4M3FNUZ}, op);
  al4::check_dtype(scale, {al4::kF32}, op);
  al4::check(br >= 1 && bc >= 1, "quantize_fp8: block sizes must be >= 1");
  al4::check_shape(scale, {x.size(0), al4::ceil_div(x.size(1), br), al4::ceil_div(x.size(2), bc)}, op);
  contiguous({&x, &q, &scale}, op);
  same_device({&x, &q, &scale}, op);
  const TensorRef& first = x;
  AL4_RUN(quantize_fp8, x, q, scale, br, bc, compute_scale);
}

void dequantize_fp8(const TensorRef& q, const TensorRef& scale, int64_t br, int64_t bc, const TensorRef& out) {
  const char* op = "dequantize_fp8";
  al4::check_dim(q, 3, op);
  al4::check_dtype(q, {al4::kF8E4M3FN, al4::kF8E4M3FNUZ}, op);
  al4::check_shape(out, q.shape, op);
  al4::check_dtype(scale, {al4::kF32}, op);
  al4::check(br >= 1 && bc >= 1, "dequantize_fp8: block sizes must be >= 1");
  al4::check_shape(scale, {q.size(0), al4::ceil_div(q.size(1), br), al4::ceil_div(q.size(2), bc)}, op);
  contiguous({&q, &scale, &out}, op);
  al4::check(q.device == 0, "dequantize_fp8: native path is CPU only");
  al4::cpu::dequantize_fp8(q, scale, br, bc, out);
}

void fn_to_fnuz(const TensorRef& q, const TensorRef& out) {
  const char* op = "fn_to_fnuz";
  al4::check_dtype(q, {al4::kF8E4M3FN}, op);
  al4::check_dtype(out, {al4::kF8E4M3FNUZ}, op);
  al4::check_shape(out, q.shape, op);
  contiguous({&q, &out}, op);
  al4::check(q.device == 0, "fn_to_fnuz: native path is CPU only");
  al4::cpu::fn_to_fnuz(q, out);
}

void fused_moe(const TensorRef& x, const TensorRef& w1, const TensorRef& w2, const TensorRef& tw, const TensorRef& ids,
               const TensorRef* s1, const TensorRef* s2, const TensorRef& out, const TensorRef* workspace) {
  const char* op = "fused_moe";
  al4::check_dim(x, 2, op);
  al4::check_dim(w1, 3, op);
  al4::check_dim(w2, 3, op);
  const int64_t T = x.size(0), H = x.size(1), E = w1.size(0);
  al4::check(w1.size(1) == H && w1.size(2) % 2 == 0,
             "fused_moe: w_gate_up must be [E, H=" + std::to_string(H) + ", 2I], got " + al4::shape_str(w1));
  const int64_t I = w1.size(2) / 2;
  al4::check_shape(w2, {E, I, H}, op);
  al4::check_dim(ids, 2, op);
  al4::check(ids.size(0) == T, "fused_moe: topk_ids must be [T=" + std::to_string(T) + ", k]");
  al4::check_shape(tw, ids.shape, op);
  al4::check_dtype(tw, {al4::kF32}, op);
  al4::check_dtype(ids, {al4::kI32}, op);
  al4::check_shape(out, x.shape, op);
  al4::check(out.dtype == x.dtype, "fused_moe: out must have x's dtype");
  al4::check((s1 == nullptr) == (s2 == nullptr), "fused_moe: w1_scale and w2_scale go together");
  if (s1) {
    al4::check_dtype(w1, {al4::kF8E4M3FN, al4::kF8E4M3FNUZ}, op);
    al4::check(w2.dtype == w1.dtype, "fused_moe: w_down must have w_gate_up's fp8 dtype");
    al4::check_shape(*s1, {E, 2 * I}, op);
    al4::check_shape(*s2, {E, H}, op);
    al4::check_dtype(*s1, {al4::kF32}, op);
    al4::check_dtype(*s2, {al4::kF32}, op);
  } else {
    al4::check(w1.dtype == x.dtype && w2.dtype == x.dtype, "fused_moe: w_gate_up and w_down must have x's dtype");
  }
  contiguous({&x, &tw, &ids, s1, s2, &out, workspace}, op);
  // Expert weights contiguous, or on CPU (fp32|bf16) both output-major: transposed views of contiguous
  // [E, 2I, H] / [E, H, I] tensors, the layout a CPU model keeps (model/loader.py).
  const bool om = !w1.contiguous() || !w2.contiguous();
  if (om)
    al4::check(al4::last_two_transposed(w1) && al4::last_two_transposed(w2) && x.device == 0 && !s1,
               "fused_moe: w_gate_up (strides " + al4::shape_str_of(w1.strides) + ") and w_down (strides " +
                   al4::shape_str_of(w2.strides) + ") must both be contiguous, or on CPU with fp32|bf16 weights "
                   "both transposed views of contiguous [E, 2I, H] / [E, H, I] tensors");
  same_device({&x, &w1, &w2, &tw, &ids, s1, s2, &out, workspace}, op);
  if (on_gpu(x, op)) {
#ifdef AL4_WITH_GPU
    al4::check(workspace != nullptr, "fused_moe: a GPU call needs workspace (uint8, fused_moe_workspace_bytes)");
    al4::gpu::fused_moe(x, w1, w2, tw, ids, s1, s2, out, *workspace);
#endif
    return;
  }
  al4::cpu::fused_moe(x, w1, w2, tw, ids, s1, s2, out);  // CPU scratch is its own (per-thread buffers)
}

// CPU only: on a GPU, torch's BLAS (hipBLASLt / cuBLAS) is the right linear. Several weights that
// share x (q/k/v; gate/up) in one call: out = [x w_0^T + b_0 | x w_1^T + b_1 | ...].
void linear(const TensorRef& x, const std::vector<TensorRef>& ws, const std::vector<std::optional<TensorRef>>& bs,
            const TensorRef& out) {
  const char* op = "linear";
  al4::check_dim(x, 2, op);
  al4::check_dtype(x, {al4::kF32, al4::kBF16}, op);
  al4::check(!ws.empty(), "linear: no weights");
  al4::check(bs.size() == ws.size(), "linear: " + std::to_string(ws.size()) + " weights but " +
                                         std::to_string(bs.size()) + " biases (None for none)");
  std::vector<const TensorRef*> biases;
  int64_t n = 0;
  for (size_t p = 0; p < ws.size(); ++p) {
    const TensorRef& w = ws[p];
    const TensorRef* bias = bs[p] ? &*bs[p] : nullptr;
    al4::check_dim(w, 2, op);
    al4::check(w.size(1) == x.size(1), "linear: " + w.name + " must be [N, K=" + std::to_string(x.size(1)) +
                                            "], got " + al4::shape_str(w));
    al4::check(w.dtype == x.dtype, "linear: " + w.name + " must have x's dtype");
    if (bias) {
      al4::check_shape(*bias, {w.size(0)}, op);
      al4::check(bias->dtype == x.dtype, "linear: " + bias->name + " must have x's dtype");
    }
    biases.push_back(bias);
    n += w.size(0);
  }
  al4::check_shape(out, {x.size(0), n}, op);
  al4::check(out.dtype == x.dtype, "linear: out must have x's dtype");
  std::vector<const TensorRef*> all = {&x, &out};
  for (size_t p = 0; p < ws.size(); ++p) all.insert(all.end(), {&ws[p], biases[p]});
  for (const TensorRef* t : all) {
    if (!t) continue;
    al4::check_contiguous(*t, op);
    al4::check(t->device == 0, "linear: " + t->name + " is a GPU tensor; the native linear is CPU only");
  }
  al4::cpu::linear(x, ws, biases, out);
}

// CPU only (GPUs run the Triton kernels). Contract: amd_llama4/ops/paged_attention.py `paged_attention`.
void paged_attention(const TensorRef& q, const TensorRef& k_cache, const TensorRef& v_cache,
                     const TensorRef& block_tables, const TensorRef& cu_seqlens_q, const TensorRef& seq_lens,
                     const TensorRef& first_pos, const TensorRef& q_pos, double scale, int64_t chunk_size,
                     const TensorRef* k_scale, const TensorRef* v_scale, const TensorRef& out) {
  const char* op = "paged_attention";
  al4::check_dim(q, 3, op);
  al4::check_dtype(q, {al4::kF32, al4::kBF16}, op);
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2);
  al4::check_dim(k_cache, 4, op);
  al4::check(k_cache.shape == v_cache.shape && k_cache.size(3) == D,
             "paged_attention: k_cache and v_cache must both be [num_blocks, block_size, Hkv, D=" + std::to_string(D) +
                 "], got " + al4::shape_str(k_cache) + " and " + al4::shape_str(v_cache));
  const int64_t Hkv = k_cache.size(2);
  al4::check(Hkv > 0 && Hq % Hkv == 0, "paged_attention: q's Hq=" + std::to_string(Hq) +
                                           " is not a multiple of the caches' Hkv=" + std::to_string(Hkv));
  const bool fp8 = k_cache.dtype == al4::kF8E4M3FN || k_cache.dtype == al4::kF8E4M3FNUZ;
  al4::check(k_cache.dtype == v_cache.dtype && (fp8 || k_cache.dtype == q.dtype),
             std::string("paged_attention: k_cache/v_cache must both have q's dtype or one fp8 dtype, got ") +
                 al4::dtype_name(k_cache.dtype) + " and " + al4::dtype_name(v_cache.dtype));
  al4::check_dim(block_tables, 2, op);
  const int64_t B = block_tables.size(0);
  al4::check_shape(cu_seqlens_q, {B + 1}, op);
  al4::check_shape(seq_lens, {B}, op);
  al4::check_shape(first_pos, {B}, op);
  al4::check_shape(q_pos, {T}, op);
  al4::check_shape(out, q.shape, op);
  al4::check(out.dtype == q.dtype, "paged_attention: out must have q's dtype");
  for (const TensorRef* t : {&block_tables, &cu_seqlens_q, &seq_lens, &first_pos, &q_pos})
    al4::check_dtype(*t, {al4::kI32}, op);
  contiguous({&cu_seqlens_q, &seq_lens, &first_pos, &q_pos, &out}, op);
  for (const TensorRef* t : {&q, &k_cache, &v_cache, &block_tables})
    al4::check(t->strides.back() == 1 || t->shape.back() == 1,
               "paged_attention: " + t->name + "'s last dim must be contiguous");
  al4::check(!fp8 || (k_scale && v_scale), "paged_attention: an fp8 KV cache needs k_scale and v_scale");
  for (const TensorRef* s : {k_scale, v_scale}) {
    if (!s) continue;
    al4::check_dtype(*s, {al4::kF32}, op);
    const bool ok = s->numel() == 1 || s->shape == std::vector<int64_t>{Hkv} ||
                    (s->dim() == 3 && s->shape == std::vector<int64_t>(k_cache.shape.begin(), k_cache.shape.end() - 1));
    al4::check(ok, "paged_attention: " + s->name + " must be a scalar, [Hkv] or [num_blocks, block_size, Hkv], " +
                       "got " + al4::shape_str(*s));
  }
  for (const TensorRef* t : {&q, &k_cache, &v_cache, &block_tables, &cu_seqlens_q, &seq_lens, &first_pos, &q_pos,
                             k_scale, v_scale, &out}) {
    if (!t) continue;
    al4::check(t->device == 0, "paged_attention: " + t->name + " is a GPU tensor; the native kernel is CPU only");
  }
  al4::cpu::paged_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, first_pos, q_pos, scale,
                            chunk_size, fp8 ? k_scale : nullptr, fp8 ? v_scale : nullptr, out);
}

py::dict build_info() {
  py::dict d;
  d["backend"] = AL4_BACKEND;
  d["gpu_archs"] = std::string(AL4_GPU_ARCHS);
  d["cpu_isa"] = std::string(al4::cpu::gemm_isa());
  d["openmp_threads"] = omp_get_max_threads();
#ifdef AL4_WITH_CK
  d["ck"] = true;
#else
  d["ck"] = false;
#endif
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#endif
  d["ops"] = std::vector<std::string>{"silu_and_mul", "rms_norm", "moe_topk_sigmoid", "moe_align_block_size",
                                      "fused_moe", "quantize_fp8", "dequantize_fp8", "fn_to_fnuz", "linear",
                                      "paged_attention"};
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "amd_llama4 native kernels (CPU; HIP/CUDA when built for a GPU). Call through amd_llama4.ops.";
  py::class_<TensorRef>(m, "TensorRef", py::dynamic_attr())
      .def(py::init([](uintptr_t ptr, int dtype, std::vector<int64_t> shape, std::vector<int64_t> strides, int device,
                       uintptr_t stream, std::string name) {
             TensorRef t;
             t.ptr = ptr, t.dtype = dtype, t.shape = std::move(shape), t.strides = std::move(strides);
             t.device = device, t.stream = stream, t.name = std::move(name);
             return t;
           }),
           py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"), py::arg("device") = 0,
           py::arg("stream") = 0, py::arg("name") = "tensor")
      .def_readonly("shape", &TensorRef::shape)
      .def_readonly("name", &TensorRef::name);
  // Keyword names match the Python launchers; the GIL is released while kernels run.
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("silu_and_mul", &silu_and_mul, nogil);
  m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("weight").none(true), py::arg("eps"),
        py::arg("residual").none(true), py::arg("out"), py::arg("residual_out").none(true), nogil);
  m.def("moe_topk_sigmoid", &moe_topk_sigmoid, nogil);
  m.def("moe_align_block_size", &moe_align_block_size, py::arg("topk_ids"), py::arg("num_experts"),
        py::arg("block_size"), py::arg("sorted_ids"), py::arg("expert_ids"), py::arg("total").none(true) = py::none(),
        nogil);
  m.def("quantize_fp8", &quantize_fp8, nogil);
  m.def("dequantize_fp8", &dequantize_fp8, nogil);
  m.def("fn_to_fnuz", &fn_to_fnuz, nogil);
  m.def("fused_moe", &fused_moe, py::arg("x"), py::arg("w_gate_up"), py::arg("w_down"), py::arg("topk_weights"),
        py::arg("topk_ids"), py::arg("w1_scale").none(true), py::arg("w2_scale").none(true), py::arg("out"),
        py::arg("workspace").none(true) = py::none(), nogil);
#ifdef AL4_WITH_GPU
  m.def("fused_moe_workspace_bytes", &al4::gpu::fused_moe_workspace_bytes, py::arg("T"), py::arg("k"), py::arg("H"),
        py::arg("I"), py::arg("E"));
#endif
  m.def("linear", &linear, py::arg("x"), py::arg("weights"), py::arg("biases"), py::arg("out"), nogil);
  m.def("paged_attention", &paged_attention, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"),
        py::arg("block_tables"), py::arg("cu_seqlens_q"), py::arg("seq_lens"), py::arg("first_pos"), py::arg("q_pos"),
        py::arg("scale"), py::arg("chunk_size"), py::arg("k_scale").none(true), py::arg("v_scale").none(true),
        py::arg("out"), nogil);
  al4::cpu::register_int4_ops(m);
  al4::cpu::register_decode_step(m);
  al4::cpu::register_fp8_gemm(m);
  m.def("build_info", &build_info);
#ifdef AL4_WITH_CK
  al4::ck_backend::register_ops(m);  // ck_fused_moe*: chosen over fused_moe in amd_llama4/ops/native.py
#endif
}
