// Plain arguments of the CPU Gumbel-Softmax kernels, shared by the registration file and the
// per-ISA kernels (which include no ATen tensor headers).
#pragma once
#include <cstdint>

namespace adkernels::cpu {

enum class GumbelDType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

// x, y, y_soft: contiguous [N, V] in `dtype`. Forward: y = softmax((x + g) / tau) per row, or,
// with hard, the one-hot of the row's first argmax of (x + g) / tau; y_soft (when not nullptr)
// receives the soft y as well. Noise of element (n, j): index n * V + j of the stream
// (seed, offset) (philox.h).
struct GumbelFwdArgs {
  const void* x;
  void* y;
  void* y_soft;
  int64_t N, V;
  double tau;
  uint64_t seed, offset;
  bool hard;
  GumbelDType dtype;
};

// dx = y * (dy - sum(dy * y)) / tau per row; y, dy, dx contiguous [N, V] in `dtype`.
struct GumbelBwdArgs {
  const void* y;
  const void* dy;
  void* dx;
  int64_t N, V;
  double tau;
  GumbelDType dtype;
};

// Rows [begin, end).
using GumbelFwdFn = void (*)(const GumbelFwdArgs&, int64_t begin, int64_t end);
using GumbelBwdFn = void (*)(const GumbelBwdArgs&, int64_t begin, int64_t end);

}  // namespace adkernels::cpu
