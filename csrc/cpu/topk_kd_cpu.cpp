// CPU registration of topk_kd_fwd: argument checks, output allocation, the per-ISA kernel choice
// and the parallel loop over rows. The arithmetic is in topk_kd_kernels.cpp / kd_math.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <adkernels/topk_kd_host.h>

#include "isa.h"
#include "topk_kd_args.h"

namespace adkernels::cpu {

ADK_DECLARE_ISA_KERNELS(void topk_kd_rows(const TopkKdArgs&, int64_t, int64_t));

static DType topk_dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return DType::Double;
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    default: return DType::Float;  // checked by topk_kd_fwd_prepare
  }
}

std::tuple<at::Tensor, at::Tensor> topk_kd_fwd_cpu(const at::Tensor& student, const at::Tensor& ids,
                                                   const at::Tensor& teacher_logprobs,
                                                   const std::optional<at::Tensor>& target, double temperature,
                                                   double alpha, int64_t ignore_index, double label_smoothing,
                                                   int64_t tail, bool grad_student) {
  auto [loss, gs] = topk_kd_fwd_prepare(student, ids, teacher_logprobs, target, temperature, tail, grad_student);
  const int64_t N = student.size(0), V = student.size(1), K = ids.size(1);
  const int64_t* tgt = nullptr;
  if (target.has_value()) {
    tgt = target->data_ptr<int64_t>();
    for (int64_t n = 0; n < N; ++n) {
      TORCH_CHECK(tgt[n] == ignore_index || (tgt[n] >= 0 && tgt[n] < V), "topk_kd_loss: target[", n, "] = ", tgt[n],
                  " is out of range [0, ", V, "); mark rows to skip with ignore_index=", ignore_index);
    }
  }
  const int64_t* id = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < N * K; ++i) {
    TORCH_CHECK(id[i] >= 0 && id[i] < V, "topk_kd_loss: teacher_topk_ids[", i / K, ", ", i % K, "] = ", id[i],
                " is out of range [0, ", V, ")");
  }
  if (N == 0 || V == 0) return {loss, gs};
  TopkKdArgs a{student.data_ptr(), id, teacher_logprobs.data_ptr(), tgt, loss.data_ptr(),
               grad_student ? gs.data_ptr() : nullptr, N, V, K, temperature, alpha, label_smoothing,
               ignore_index, tail, topk_dtype_of(student)};
  TopkKdRowsFn fn = ADK_PICK_ISA_KERNEL(topk_kd_rows);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1));
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) { fn(a, b, e); });
  return {loss, gs};
}

TORCH_LIBRARY_IMPL(adkernels, CPU, m) { m.impl("topk_kd_fwd", &topk_kd_fwd_cpu); }

}  // namespace adkernels::cpu
