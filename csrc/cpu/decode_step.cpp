// The CPU decode step (decode_step.h): the eager model's op sequence for R one-token rows, same
// kernels, same intermediate roundings (x + residual, silu, RoPE, QK norm and the temperature are
// rounded to the activation dtype where the torch model rounds them), so tokens match the eager path.
#include "decode_step.h"

#include <cmath>
#include <cstring>
#include <string>

#include "fp8_gemm.h"
#include "int4_ops.h"

namespace al4::cpu {

namespace {

enum Slot { kX, kHn, kCat, kPart, kQ, kK, kV, kAtt, kO, kLogits, kTW, kTID, kGU, kAct, kSh, kRt, kFf, kRope, kHead, kXq, kXs, kSlots };

int64_t dtype_size(int dt) { return dt == kF32 || dt == kI32 ? 4 : dt == kI64 ? 8 : dt == kU8 ? 1 : 2; }

constexpr size_t kNoLayer = ~size_t(0);

bool dense(const StepWeight& w) { return !w.int4 && !w.fp8; }

enum Phase { kPhEmbed, kPhQkv, kPhRopeKv, kPhAttn, kPhO, kPhNorm, kPhShared, kPhRouter, kPhExperts, kPhHead, kPhases };
const char* kPhaseNames[kPhases] = {"embed+rope table", "qkv proj", "rope/qk-norm/kv write", "attention", "o proj",
                                    "norms+residual", "shared expert / mlp", "router+topk", "routed experts",
                                    "lm head"};

std::string where(size_t layer, const char* field) {
  if (layer == kNoLayer) return std::string("decode step: ") + field;
  return "decode step: layers[" + std::to_string(layer) + "]." + field;
}

void check_weight(const StepWeight& w, int64_t K, int dtype, size_t layer, const char* field) {
  check(w.K == K, where(layer, field) + " takes " + std::to_string(w.K) + " inputs, expected " + std::to_string(K));
  if (w.fp8) {
    check(w.q.ptr && w.s.ptr && (w.q.dtype == kF8E4M3FN || w.q.dtype == kF8E4M3FNUZ) && w.s.dtype == kF32 &&
              w.q.contiguous() && w.s.contiguous() && w.q.shape == std::vector<int64_t>{w.N, w.K},
          where(layer, field) + ": fp8 weight must be contiguous [N, K] fp8 with fp32 scales");
  } else if (w.int4) {
    check(w.q.ptr && w.s.ptr && w.G > 0, where(layer, field) + ": int4 weight without qweight/scales/group size");
    check(w.q.contiguous() && w.s.contiguous() && (!w.z.ptr || w.z.contiguous()),
          where(layer, field) + ": int4 tensors must be contiguous");
  } else {
    check(w.w.ptr && w.w.dtype == dtype, where(layer, field) + " must be a dense weight of the activation dtype " +
                                             dtype_name(dtype) + ", got " + dtype_name(w.w.dtype));
    check(w.w.contiguous() && w.w.shape == std::vector<int64_t>{w.N, w.K},
          where(layer, field) + " must be a contiguous [N, K] weight, got " + shape_str(w.w));
  }
}

}  // namespace

DecodeStep::DecodeStep(TensorRef embed, TensorRef final_norm, TensorRef inv_freq, double eps, int64_t n_heads,
                       int64_t n_kv_heads, int64_t head_dim, int64_t max_rows, std::vector<StepLayer> layers)
    : embed_(std::move(embed)), final_norm_(std::move(final_norm)), inv_freq_(std::move(inv_freq)), eps_(eps),
      Hq_(n_heads), Hkv_(n_kv_heads), D_(head_dim), max_rows_(max_rows), layers_(std::move(layers)),
      scratch_(kSlots) {
  check(embed_.dim() == 2 && embed_.contiguous(), "decode step: embed_tokens must be a contiguous [V, H] weight");
  H_ = embed_.size(1);
  dtype_ = embed_.dtype;
  check(dtype_ == kF32 || dtype_ == kBF16, std::string("decode step: activation dtype ") + dtype_name(dtype_) +
                                               " (CPU path: float32, bfloat16)");
  check(final_norm_.dtype == dtype_ && final_norm_.numel() == H_, "decode step: final norm must be [H] of " +
                                                                      std::string(dtype_name(dtype_)));
  check(inv_freq_.dtype == kF32 && inv_freq_.numel() == D_ / 2 && inv_freq_.contiguous(),
        "decode step: inv_freq must be contiguous fp32 [head_dim / 2]");
  check(max_rows_ >= 1 && Hq_ % Hkv_ == 0 && D_ % 2 == 0, "decode step: bad rows / heads / head_dim");
  check(!layers_.empty(), "decode step: no layers");
  for (size_t l = 0; l < layers_.size(); ++l) {
    const StepLayer& L = layers_[l];
    check(L.in_norm.dtype == dtype_ && L.in_norm.numel() == H_ && L.post_norm.dtype == dtype_ &&
              L.post_norm.numel() == H_,
          where(l, "norms") + " must be [H] of the activation dtype");
    check(L.qkv.size() == 3, where(l, "qkv") + " must hold the q, k and v projections");
    const int64_t want[3] = {Hq_ * D_, Hkv_ * D_, Hkv_ * D_};
    for (int i = 0; i < 3; ++i) {
      check_weight(L.qkv[i], H_, dtype_, l, "qkv");
      check(L.qkv[i].N == want[i], where(l, "qkv") + " output widths must be Hq*D, Hkv*D, Hkv*D");
    }
    check_weight(L.o, Hq_ * D_, dtype_, l, "o");
    check(L.o.N == H_, where(l, "o") + " must output hidden_size");
    for (const TensorRef* c : {&L.k_cache, &L.v_cache})
      check(c->dtype == dtype_ && c->dim() == 4 && c->size(2) == Hkv_ && c->size(3) == D_ && c->contiguous(),
            where(l, "kv cache") + " must be contiguous [blocks, block_size, Hkv, D] of the activation dtype "
                                   "(fp8 KV caches run the eager step)");
    check(L.gate_up.size() == 2, where(l, "gate_up") + " must hold the gate and up projections");
    for (const StepWeight& w : L.gate_up) check_weight(w, H_, dtype_, l, "gate_up");
    check(L.gate_up[0].N == L.gate_up[1].N, where(l, "gate_up") + ": gate and up widths differ");
    check_weight(L.down, L.gate_up[0].N, dtype_, l, "down");
    check(L.down.N == H_, where(l, "down") + " must output hidden_size");
    if (L.moe) {
      check_weight(L.router, H_, dtype_, l, "router");
      check(L.top_k >= 1 && L.top_k <= L.router.N && L.top_k <= 64, where(l, "top_k") + " out of range");
      const StepExperts& e = L.experts;
      if (e.int4)
        check(e.w13_q.ptr && e.w2_q.ptr && e.G > 0 && e.w13_q.size(0) == L.router.N,
              where(l, "experts") + ": int4 experts incomplete or not one per router output");
      else if (e.gate_up_scale.ptr)
        check((e.gate_up.dtype == kF8E4M3FN || e.gate_up.dtype == kF8E4M3FNUZ) && e.down.dtype == e.gate_up.dtype &&
                  e.gate_up.contiguous() && e.down.contiguous() && e.gate_up.dim() == 3 &&
                  e.gate_up.size(0) == L.router.N && e.gate_up.size(1) == H_ && e.gate_up_scale.dtype == kF32 &&
                  e.down_scale.ptr && e.down_scale.dtype == kF32,
              where(l, "experts") + ": fp8 experts must be contiguous [E, H, 2I] / [E, I, H] fp8 with fp32 "
                                    "per-channel scales");
      else  // input-major, or output-major as a CPU model stores them (fused_moe reads both)
        check(e.gate_up.dtype == dtype_ && e.down.dtype == dtype_ && e.gate_up.dim() == 3 &&
                  ((e.gate_up.contiguous() && e.down.contiguous()) ||
                   (last_two_transposed(e.gate_up) && last_two_transposed(e.down))) &&
                  e.gate_up.size(0) == L.router.N && e.gate_up.size(1) == H_,
              where(l, "experts") + " must be [E, H, 2I] / [E, I, H] of the activation dtype, both contiguous or "
                                    "both transposed views of contiguous [E, 2I, H] / [E, H, I]");
    }
  }
}

TensorRef DecodeStep::buf(int slot, std::vector<int64_t> shape, int dtype, const char* name) {
  TensorRef t;
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.strides.assign(t.shape.size(), 1);
  for (int d = t.dim() - 2; d >= 0; --d) t.strides[d] = t.strides[d + 1] * t.shape[d + 1];
  const size_t bytes = size_t(t.numel() * dtype_size(dtype));
  auto& s = scratch_[slot];
  if (s.size() < bytes + 64) s.resize(bytes + 64);  // grows on the first steps only
  t.ptr = (reinterpret_cast<uintptr_t>(s.data()) + 63) & ~uintptr_t(63);
  t.name = name;
  return t;
}

// Whether weights ws[0..n) are int4 with one group size (one int4_linear_multi call covers them).
bool DecodeStep::int4_group(const StepWeight* ws, int n) {
  for (int i = 0; i < n; ++i)
    if (!ws[i].int4 || ws[i].G != ws[0].G) return false;
  return true;
}

// out [R, sum N] = x [R, K] @ [W_0; ...; W_n-1]^T for int4_group weights.
void DecodeStep::int4_multi(const StepWeight* ws, int n, const TensorRef& x, const TensorRef& out) {
  std::vector<Int4Part> parts;
  for (int i = 0; i < n; ++i) parts.push_back({&ws[i].q, &ws[i].s, ws[i].z.ptr ? &ws[i].z : nullptr});
  int4_linear_multi(x, parts, ws[0].G, out);
}

// out [R, N] = x [R, K] @ W^T.
void DecodeStep::project(const StepWeight& w, const TensorRef& x, const TensorRef& out) {
  if (w.fp8) {  // quantise x per row (or per 1 x bk block) to the weight's format, then w8a8
    const int64_t R = x.size(0), K = x.size(1), bk = w.block_k > 0 ? w.block_k : K, SC = (K + bk - 1) / bk;
    TensorRef x3 = x, xq = buf(kXq, {1, R, K}, w.q.dtype, "x_q"), xs = buf(kXs, {1, R, SC}, kF32, "x_scale");
    x3.shape = {1, R, K};
    x3.strides = {R * K, K, 1};
    quantize_fp8(x3, xq, xs, 1, bk, true);
    xq.shape = {R, K}, xq.strides = {K, 1};
    xs.shape = {R, SC}, xs.strides = {SC, 1};
    fp8_gemm(xq, xs, w.q, w.s, w.block_n, w.block_k, out);
  } else if (w.int4) {
    int4_linear(x, w.q, w.s, w.z.ptr ? &w.z : nullptr, w.G, out);
  } else {
    linear(x, {w.w}, {nullptr}, out);
  }
}

void DecodeStep::tick(int phase) {
  if (!profile_) return;
  const auto now = std::chrono::steady_clock::now();
  if (phase >= 0) prof_[phase] += std::chrono::duration<double>(now - last_).count();
  last_ = now;
}

std::vector<std::pair<std::string, double>> DecodeStep::take_profile() {
  std::vector<std::pair<std::string, double>> out;
  out.emplace_back("steps", double(prof_steps_));
  for (int p = 0; p < kPhases; ++p) out.emplace_back(kPhaseNames[p], prof_.empty() ? 0.0 : prof_[p]);
  prof_.assign(kPhases, 0.0);
  prof_steps_ = 0;
  return out;
}

void DecodeStep::set_lm_head(StepWeight lm_head) {
  check_weight(lm_head, H_, dtype_, kNoLayer, "lm_head");
  lm_head_ = std::move(lm_head);
  has_lm_head_ = true;
}

void DecodeStep::run(const StepTensors& in, const TensorRef& out, const TensorRef* logits) {
  const int64_t R = in.ids.numel();
  check(R >= 1 && R <= max_rows_, "decode step: " + std::to_string(R) + " rows, the step holds 1.." +
                                      std::to_string(max_rows_));
  check(out.dtype == dtype_ && out.contiguous() && out.shape == std::vector<int64_t>{R, H_},
        "decode step: out must be contiguous [rows, hidden] of the activation dtype");
  check(in.ids.dtype == kI64 && in.q_pos.dtype == kI32 && in.cu_seqlens.numel() == R + 1,
        "decode step: ids int64 [R], q_pos int32 [R], cu_seqlens [R+1] (one token per row)");
  for (size_t k = 0; k < in.slots.size(); ++k)
    check(in.slots[k].dtype == kI64 && in.slots[k].numel() == R && in.tables[k].dim() == 2 &&
              in.tables[k].size(0) == R,
          "decode step: kind " + std::to_string(k) + ": slots int64 [R] and tables [R, W]");
  for (const StepLayer& L : layers_)
    check(size_t(L.kind) < in.slots.size(), "decode step: a layer reads KV kind " + std::to_string(L.kind) +
                                                 " but the step has " + std::to_string(in.slots.size()));
  if (logits)
    check(has_lm_head_ && logits->dtype == kF32 && logits->contiguous() &&
              logits->shape == std::vector<int64_t>{R, lm_head_.N},
          "decode step: logits must be contiguous fp32 [rows, vocab] and the step needs an lm_head");
  if (profile_) {
    if (prof_.empty()) prof_.assign(kPhases, 0.0);
    ++prof_steps_;
  }
  tick(-1);
  if (dtype_ == kF32)
    run_typed<float>(in, out);
  else
    run_typed<bf16_t>(in, out);
  if (!logits) return;
  TensorRef head = buf(kHead, {R, lm_head_.N}, dtype_, "lm_head out");
  project(lm_head_, out, head);
  tick(kPhHead);
  float* lp = logits->data<float>();
  const int64_t n = R * lm_head_.N;
  if (dtype_ == kF32)
    std::memcpy(lp, head.data<float>(), size_t(n) * sizeof(float));
  else
    for (int64_t i = 0; i < n; ++i) lp[i] = load_f32(head.data<bf16_t>(), i);
}

template <typename T>
void DecodeStep::run_typed(const StepTensors& in, const TensorRef& out) {
  const int64_t R = in.ids.numel(), H = H_;
  TensorRef x = buf(kX, {R, H}, dtype_, "x"), hn = buf(kHn, {R, H}, dtype_, "h");
  const int64_t* ids = in.ids.data<int64_t>();
  const int64_t V = embed_.size(0);
  for (int64_t r = 0; r < R; ++r) {
    check(ids[r] >= 0 && ids[r] < V, "decode step: token id " + std::to_string(ids[r]) + " outside the vocabulary");
    std::memcpy(x.data<T>() + r * H, embed_.data<T>() + ids[r] * H, size_t(H) * sizeof(T));
  }
  // cos | sin of every row's angles, shared by the RoPE layers (torch.polar of fp32 angles).
  TensorRef rope = buf(kRope, {R, D_}, kF32, "rope");
  const int32_t* pos = in.q_pos.data<int32_t>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = 0; i < D_ / 2; ++i) {
      const float ang = float(pos[r]) * inv_freq_.data<float>()[i];
      rope.data<float>()[r * D_ + i] = std::cos(ang);
      rope.data<float>()[r * D_ + D_ / 2 + i] = std::sin(ang);
    }
  tick(kPhEmbed);
  rms_norm(x, &layers_[0].in_norm, eps_, nullptr, hn, nullptr);
  tick(kPhNorm);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const StepLayer& L = layers_[l];
    attention<T>(L, in, R);
    TensorRef o = buf(kO, {R, H}, dtype_, "o");
    project(L.o, buf(kAtt, {R, Hq_ * D_}, dtype_, "attn"), o);
    tick(kPhO);
    rms_norm(o, &L.post_norm, eps_, &x, hn, &x);  // x += attn; h = norm(x)
    tick(kPhNorm);
    // FFN: the shared expert (or the dense MLP) ...
    const int64_t I = L.gate_up[0].N;
    TensorRef gu = buf(kGU, {R, 2 * I}, dtype_, "gate_up");
    if (dense(L.gate_up[0]) && dense(L.gate_up[1])) {
      linear(hn, {L.gate_up[0].w, L.gate_up[1].w}, {nullptr, nullptr}, gu);
    } else if (int4_group(L.gate_up.data(), 2)) {
      int4_multi(L.gate_up.data(), 2, hn, gu);
    } else {  // fp8: each half into a row buffer, then side by side (silu_and_mul reads [gate | up])
      for (int p = 0; p < 2; ++p) {
        TensorRef part = buf(kPart, {R, I}, dtype_, "gate_up part");
        project(L.gate_up[p], hn, part);
        for (int64_t r = 0; r < R; ++r)
          std::memcpy(gu.data<T>() + r * 2 * I + p * I, part.data<T>() + r * I, size_t(I) * sizeof(T));
      }
    }
    TensorRef act = buf(kAct, {R, I}, dtype_, "act"), ff = buf(kFf, {R, H}, dtype_, "ffn");
    silu_and_mul(gu, act);
    project(L.down, act, ff);
    tick(kPhShared);
    if (L.moe) {  // ... plus the routed experts (sigmoid top-k, weight on the input)
      const int64_t E = L.router.N, k = L.top_k;
      TensorRef logits = buf(kLogits, {R, E}, dtype_, "router_logits");
      TensorRef tw = buf(kTW, {R, k}, kF32, "topk_weights"), tid = buf(kTID, {R, k}, kI32, "topk_ids");
      TensorRef rt = buf(kRt, {R, H}, dtype_, "routed");
      project(L.router, hn, logits);
      moe_topk_sigmoid(logits, int(k), tw, tid);
      tick(kPhRouter);
      const StepExperts& e = L.experts;
      if (e.int4)
        fused_moe_int4(hn, e.w13_q, e.w13_s, e.w13_z.ptr ? &e.w13_z : nullptr, e.w2_q, e.w2_s,
                       e.w2_z.ptr ? &e.w2_z : nullptr, tw, tid, e.G, rt);
      else if (e.gate_up_scale.ptr)
        fused_moe(hn, e.gate_up, e.down, tw, tid, &e.gate_up_scale, &e.down_scale, rt);
      else
        fused_moe(hn, e.gate_up, e.down, tw, tid, nullptr, nullptr, rt);
      T* f = ff.data<T>();
      const T* q = rt.data<T>();
      for (int64_t i = 0; i < R * H; ++i) store_f32(f, i, load_f32(f, i) + load_f32(q, i));
      tick(kPhExperts);
    }
    // x += ffn; h = the next layer's input norm of x (the final norm after the last layer)
    if (l + 1 < layers_.size())
      rms_norm(ff, &layers_[l + 1].in_norm, eps_, &x, hn, &x);
    else
      rms_norm(ff, &final_norm_, eps_, &x, out, &x);
    tick(kPhNorm);
  }
}

template <typename T>
void DecodeStep::attention(const StepLayer& L, const StepTensors& in, int64_t R) {
  const int64_t D = D_, nq = Hq_ * D, nkv = Hkv_ * D;
  TensorRef hn = buf(kHn, {R, H_}, dtype_, "h");
  // q | k | v of each row: one fused call for dense or int4 weights, one call each otherwise (fp8).
  const T* src[3];
  int64_t ld[3];
  const bool all_dense = dense(L.qkv[0]) && dense(L.qkv[1]) && dense(L.qkv[2]);
  if (all_dense || int4_group(L.qkv.data(), 3)) {
    TensorRef cat = buf(kCat, {R, nq + 2 * nkv}, dtype_, "qkv");
    if (all_dense)
      linear(hn, {L.qkv[0].w, L.qkv[1].w, L.qkv[2].w}, {nullptr, nullptr, nullptr}, cat);
    else
      int4_multi(L.qkv.data(), 3, hn, cat);
    src[0] = cat.data<T>(), src[1] = src[0] + nq, src[2] = src[1] + nkv;
    ld[0] = ld[1] = ld[2] = nq + 2 * nkv;
  } else {
    TensorRef cat = buf(kCat, {R, nq + 2 * nkv}, dtype_, "qkv");
    int64_t col = 0;
    for (int p = 0; p < 3; ++p) {  // contiguous [R, N_p] blocks one after another
      const int64_t n = L.qkv[p].N;
      TensorRef part = cat;
      part.ptr = reinterpret_cast<uintptr_t>(cat.data<T>() + R * col);
      part.shape = {R, n};
      part.strides = {n, 1};
      project(L.qkv[p], hn, part);
      src[p] = part.data<T>(), ld[p] = n;
      col += n;
    }
  }
  tick(kPhQkv);
  TensorRef q = buf(kQ, {R, Hq_, D}, dtype_, "q"), k = buf(kK, {R, Hkv_, D}, dtype_, "k");
  const float* cs = buf(kRope, {R, D}, kF32, "rope").data<float>();
  const int32_t* pos = in.q_pos.data<int32_t>();
  // RoPE (pairs (2i, 2i+1) as complex numbers, fp32, rounded once), else a plain copy.
  auto place = [&](const T* s, int64_t lds, int64_t heads, T* dst) {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t h = 0; h < heads; ++h) {
        const T* a = s + r * lds + h * D;
        T* o = dst + (r * heads + h) * D;
        if (!L.rope) {
          std::memcpy(o, a, size_t(D) * sizeof(T));
          continue;
        }
        const float* c = cs + r * D;
        for (int64_t i = 0; i < D / 2; ++i) {
          const float re = load_f32(a, 2 * i), im = load_f32(a, 2 * i + 1), cr = c[i], si = c[D / 2 + i];
          store_f32(o, 2 * i, re * cr - im * si);
          store_f32(o, 2 * i + 1, re * si + im * cr);
        }
      }
  };
  place(src[0], ld[0], Hq_, q.data<T>());
  place(src[1], ld[1], Hkv_, k.data<T>());
  if (L.qk_norm_eps > 0) {  // weightless, per head: [R * heads, D] rows
    for (TensorRef* t : {&q, &k}) {
      TensorRef rows = *t;
      rows.shape = {t->size(0) * t->size(1), D};
      rows.strides = {D, 1};
      rms_norm(rows, nullptr, L.qk_norm_eps, nullptr, rows, nullptr);
    }
  }
  if (L.floor_scale > 0) {  // NoPE temperature: q * (log1p(floor((p + 1) / floor_scale)) * attn_scale + 1)
    T* qp = q.data<T>();
    for (int64_t r = 0; r < R; ++r) {
      const float s = std::log1p(std::floor((float(pos[r]) + 1.0f) / float(L.floor_scale))) *
                          float(L.attn_scale) + 1.0f;
      for (int64_t i = r * nq; i < (r + 1) * nq; ++i) store_f32(qp, i, load_f32(qp, i) * s);
    }
  }
  // K/V of the new tokens into their cache slots, then attention through the block tables.
  const TensorRef& slots = in.slots[L.kind];
  const int64_t n_slots = L.k_cache.size(0) * L.k_cache.size(1);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t slot = slots.data<int64_t>()[r];
    check(slot >= 0 && slot < n_slots, "decode step: cache slot " + std::to_string(slot) + " out of range");
    std::memcpy(L.k_cache.data<T>() + slot * nkv, k.data<T>() + r * nkv, size_t(nkv) * sizeof(T));
    std::memcpy(L.v_cache.data<T>() + slot * nkv, src[2] + r * ld[2], size_t(nkv) * sizeof(T));
  }
  tick(kPhRopeKv);
  paged_attention(q, L.k_cache, L.v_cache, in.tables[L.kind], in.cu_seqlens, in.seq_lens[L.kind],
                  in.first_pos[L.kind], in.q_pos, L.scale, L.chunk, nullptr, nullptr,
                  buf(kAtt, {R, Hq_, D}, dtype_, "attn"));
  tick(kPhAttn);
}

}  // namespace al4::cpu
