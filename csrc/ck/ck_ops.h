// What csrc/bindings.cpp sees of the Composable Kernel bindings (built with AL4_WITH_CK only).
#pragma once

#include <pybind11/pybind11.h>

#include "ck/ck_moe.h"

namespace al4::ck_backend {

// Adds ck_fused_moe, ck_fused_moe_supported and ck_fused_moe_workspace_bytes to the module.
void register_ops(pybind11::module_& m);

}  // namespace al4::ck_backend
