// Plain arguments of the CPU soft-target cross-entropy and ADA-Lab target kernels, shared by the
// dispatch file and the per-ISA kernels.
#pragma once
#include <cstdint>

#include "kd_args.h"  // DType

namespace adkernels::cpu {

struct SoftCeArgs {
  const void* logits;   // [N, V] input dtype
  const void* targets;  // [N, V] input dtype, non-negative
  void* loss;           // [N] float (double for Double)
  void* grad_logits;    // [N, V] input dtype, nullptr: not asked
  void* grad_targets;   // [N, V] input dtype, nullptr: not asked
  int64_t N, V;
  DType dtype;
  double grad_scale;    // multiplies both gradients
};

struct AdaLabArgs {
  const void* logits_adv;  // [N, V] input dtype
  const void* logits_aa;   // [N, V] input dtype
  const int64_t* target;   // [N] in [0, V)
  void* out;               // [N, V] input dtype: refined targets
  void* weight;            // [N] float (double for Double): max_weight * w per row
  int64_t N, V;
  double max_weight, gamma, bias, temperature;
  DType dtype;
};

using SoftCeRowsFn = void (*)(const SoftCeArgs&, int64_t begin, int64_t end);
using AdaLabRowsFn = void (*)(const AdaLabArgs&, int64_t begin, int64_t end);

}  // namespace adkernels::cpu
