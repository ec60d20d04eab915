// Python bindings of the CPU decode step (decode_step.h), registered into amd_llama4._C by
// bindings.cpp. The model description is built once by amd_llama4/engine/cpu_decode.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "decode_step.h"

namespace py = pybind11;

namespace al4::cpu {

void register_decode_step(py::module_& m) {
  py::class_<StepWeight>(m, "StepWeight")
      .def(py::init<>())
      .def_readwrite("int4", &StepWeight::int4)
      .def_readwrite("fp8", &StepWeight::fp8)
      .def_readwrite("block_n", &StepWeight::block_n)
      .def_readwrite("block_k", &StepWeight::block_k)
      .def_readwrite("w", &StepWeight::w)
      .def_readwrite("q", &StepWeight::q)
      .def_readwrite("s", &StepWeight::s)
      .def_readwrite("z", &StepWeight::z)
      .def_readwrite("G", &StepWeight::G)
      .def_readwrite("N", &StepWeight::N)
      .def_readwrite("K", &StepWeight::K);
  py::class_<StepExperts>(m, "StepExperts")
      .def(py::init<>())
      .def_readwrite("int4", &StepExperts::int4)
      .def_readwrite("gate_up", &StepExperts::gate_up)
      .def_readwrite("down", &StepExperts::down)
      .def_readwrite("gate_up_scale", &StepExperts::gate_up_scale)
      .def_readwrite("down_scale", &StepExperts::down_scale)
      .def_readwrite("w13_q", &StepExperts::w13_q)
      .def_readwrite("w13_s", &StepExperts::w13_s)
      .def_readwrite("w13_z", &StepExperts::w13_z)
      .def_readwrite("w2_q", &StepExperts::w2_q)
      .def_readwrite("w2_s", &StepExperts::w2_s)
      .def_readwrite("w2_z", &StepExperts::w2_z)
      .def_readwrite("G", &StepExperts::G);
  py::class_<StepLayer>(m, "StepLayer")
      .def(py::init<>())
      .def_readwrite("in_norm", &StepLayer::in_norm)
      .def_readwrite("post_norm", &StepLayer::post_norm)
      .def_readwrite("qkv", &StepLayer::qkv)
      .def_readwrite("o", &StepLayer::o)
      .def_readwrite("rope", &StepLayer::rope)
      .def_readwrite("qk_norm_eps", &StepLayer::qk_norm_eps)
      .def_readwrite("floor_scale", &StepLayer::floor_scale)
      .def_readwrite("attn_scale", &StepLayer::attn_scale)
      .def_readwrite("chunk", &StepLayer::chunk)
      .def_readwrite("scale", &StepLayer::scale)
      .def_readwrite("kind", &StepLayer::kind)
      .def_readwrite("k_cache", &StepLayer::k_cache)
      .def_readwrite("v_cache", &StepLayer::v_cache)
      .def_readwrite("moe", &StepLayer::moe)
      .def_readwrite("router", &StepLayer::router)
      .def_readwrite("top_k", &StepLayer::top_k)
      .def_readwrite("gate_up", &StepLayer::gate_up)
      .def_readwrite("down", &StepLayer::down)
      .def_readwrite("experts", &StepLayer::experts);
  py::class_<StepTensors>(m, "StepTensors")
      .def(py::init<>())
      .def_readwrite("ids", &StepTensors::ids)
      .def_readwrite("q_pos", &StepTensors::q_pos)
      .def_readwrite("cu_seqlens", &StepTensors::cu_seqlens)
      .def_readwrite("tables", &StepTensors::tables)
      .def_readwrite("seq_lens", &StepTensors::seq_lens)
      .def_readwrite("first_pos", &StepTensors::first_pos)
      .def_readwrite("slots", &StepTensors::slots);
  py::class_<DecodeStep>(m, "DecodeStep")
      .def(py::init<TensorRef, TensorRef, TensorRef, double, int64_t, int64_t, int64_t, int64_t,
                    std::vector<StepLayer>>(),
           py::arg("embed"), py::arg("final_norm"), py::arg("inv_freq"), py::arg("eps"), py::arg("n_heads"),
           py::arg("n_kv_heads"), py::arg("head_dim"), py::arg("max_rows"), py::arg("layers"))
      .def("run", &DecodeStep::run, py::arg("inputs"), py::arg("out"), py::arg("logits").none(true) = nullptr,
           py::call_guard<py::gil_scoped_release>())
      .def("set_lm_head", &DecodeStep::set_lm_head, py::arg("lm_head"))
      .def("set_profile", &DecodeStep::set_profile, py::arg("on"))
      .def("take_profile", &DecodeStep::take_profile)
      .def_property_readonly("max_rows", &DecodeStep::max_rows);
}

}  // namespace al4::cpu
