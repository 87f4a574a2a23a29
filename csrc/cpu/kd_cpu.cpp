// CPU registration of kd_fwd: argument checks, output allocation, the per-ISA kernel choice
// and the parallel loop over rows. The arithmetic is in kd_kernels.cpp / kd_math.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include <adkernels/kd_host.h>

#include "isa.h"
#include "kd_args.h"

namespace adkernels::cpu {

ADK_DECLARE_ISA_KERNELS(void kd_rows(const KdArgs&, int64_t, int64_t));

static DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return DType::Double;
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    default: return DType::Float;  // dtypes are checked by kd_fwd_prepare
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_fwd_cpu(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& target,
    double temperature, double alpha, int64_t divergence, double beta, int64_t ignore_index,
    double label_smoothing, bool grad_student, bool grad_teacher) {
  auto [loss, gs, gt] = kd_fwd_prepare(student, teacher, target, temperature, divergence, grad_student, grad_teacher);
  const int64_t N = student.size(0), V = student.size(1);
  const int64_t* tgt = nullptr;
  if (target.has_value()) {
    tgt = target->data_ptr<int64_t>();
    for (int64_t n = 0; n < N; ++n) {
      TORCH_CHECK(tgt[n] == ignore_index || (tgt[n] >= 0 && tgt[n] < V), "kd_loss: target[", n, "] = ", tgt[n],
                  " is out of range [0, ", V, "); mark rows to skip with ignore_index=", ignore_index);
    }
  }
  if (N == 0 || V == 0) return {loss, gs, gt};
  KdArgs a{student.data_ptr(), teacher.data_ptr(), tgt, loss.data_ptr(),
           grad_student ? gs.data_ptr() : nullptr, grad_teacher ? gt.data_ptr() : nullptr,
           N, V, temperature, alpha, beta, label_smoothing, divergence, ignore_index, dtype_of(student)};
  KdRowsFn fn = ADK_PICK_ISA_KERNEL(kd_rows);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1));
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) { fn(a, b, e); });
  return {loss, gs, gt};
}

TORCH_LIBRARY_IMPL(adkernels, CPU, m) { m.impl("kd_fwd", &kd_fwd_cpu); }

}  // namespace adkernels::cpu
