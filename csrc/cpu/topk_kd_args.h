// Plain arguments of the CPU sparse-teacher KD kernel (topk_kd_fwd), shared by the dispatch file
// and the per-ISA kernels.
#pragma once
#include <cstdint>

#include "kd_args.h"  // DType

namespace adkernels::cpu {

struct TopkKdArgs {
  const void* student;             // [N, V] input dtype
  const int64_t* ids;              // [N, K] distinct column ids in [0, V)
  const void* teacher_logprobs;    // [N, K] float (double for Double)
  const int64_t* target;           // nullptr: no target
  void* loss;                      // [N] float (double for Double)
  void* grad_student;              // [N, V] input dtype, nullptr: not asked
  int64_t N, V, K;
  double temperature, alpha, label_smoothing;
  int64_t ignore_index, tail;      // tail: 0 renorm, 1 bucket
  DType dtype;
};

using TopkKdRowsFn = void (*)(const TopkKdArgs&, int64_t begin, int64_t end);

}  // namespace adkernels::cpu
