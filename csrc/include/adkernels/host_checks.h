// Host-side helpers shared by the ops' *_host.h argument checks (CPU and CUDA). Host only:
// includes ATen tensor headers.
#pragma once

#include <ATen/ATen.h>

namespace adkernels {

// Every op computes in float32 (float64 for float64 inputs) and takes these four dtypes.
inline void check_float_dtype(const at::Tensor& t, const char* op) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, op,
              ": unsupported dtype ", d, " (use float32, float64, float16 or bfloat16)");
}

// The dtype of an op's losses and other accumulated outputs: float64 for float64 inputs, else float32.
inline at::ScalarType loss_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace adkernels
