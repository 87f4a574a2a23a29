// Plain arguments of the CPU KD kernel, shared by the dispatch file and the per-ISA kernels
// (which include no ATen tensor headers, so nothing but at::vec is compiled per ISA).
#pragma once
#include <cstdint>

namespace adkernels::cpu {

enum class DType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

struct KdArgs {
  const void* student;
  const void* teacher;
  const int64_t* target;  // nullptr: no target
  void* loss;             // [N] float (double for Double)
  void* grad_student;     // [N, V] input dtype, nullptr: not asked
  void* grad_teacher;     // [N, V] input dtype, nullptr: not asked
  int64_t N, V;
  double temperature, alpha, beta, label_smoothing;
  int64_t divergence, ignore_index;
  DType dtype;
};

using KdRowsFn = void (*)(const KdArgs&, int64_t begin, int64_t end);

}  // namespace adkernels::cpu
