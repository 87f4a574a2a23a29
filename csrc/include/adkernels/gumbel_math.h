// Gumbel-Softmax math shared by the CPU and CUDA kernels (Triton: adkernels/triton/gumbel.py).
//
//   g_e = -log(-log u_e)            u_e from the Philox stream (philox.h), strictly inside (0, 1)
//   z_e = (x_e + g_e) * (1 / tau)   noisy logits of a row
//   y   = softmax(z)                forward (hard: one-hot of the first argmax of z)
//   dx  = y * (dy - sum(dy * y)) / tau   backward from the saved soft y
//
// gumbel_noise(seed, offset, e) is the per-element noise function any kernel can call (a
// fused loss that samples Gumbel-Softmax inside it): the same (seed, offset, e) gives the same
// u on every backend, and g to rounding of log.
#pragma once

#include <adkernels/math.h>
#include <adkernels/philox.h>

namespace adkernels {
inline namespace ADK_ISA {

// -log(-log u) for u in (0, 1): finite (within [-3.1, 16.7] for the stream's u).
template <typename V>
C10_HOST_DEVICE inline V gumbel_of_uniform(V u) {
  return V(0) - ad_log(V(0) - ad_log(u));
}

// The Gumbel noise of element e of the stream (seed, offset), in T (float or double).
template <typename T = float>
C10_HOST_DEVICE inline T gumbel_noise(uint64_t seed, uint64_t offset, uint64_t e) {
  return gumbel_of_uniform(static_cast<T>(philox_uniform_at(seed, offset, e)));
}

// Noisy logit z = (x + g) * inv_tau.
template <typename V>
C10_HOST_DEVICE inline V gumbel_logit(V x, V g, V inv_tau) {
  return (x + g) * inv_tau;
}

// Backward of one element: y * (dy - dot) * inv_tau, dot = sum(dy * y) over the row.
template <typename V>
C10_HOST_DEVICE inline V gumbel_softmax_grad(V y, V dy, V dot, V inv_tau) {
  return y * (dy - dot) * inv_tau;
}

}  // namespace ADK_ISA
}  // namespace adkernels
