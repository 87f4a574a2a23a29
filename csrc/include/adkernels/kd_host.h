// Host-side argument checks and output allocation shared by every kd_fwd implementation
// (CPU and CUDA). Host only: includes ATen tensor headers.
#pragma once

#include <ATen/ATen.h>
#include <adkernels/host_checks.h>

#include <optional>
#include <tuple>

namespace adkernels {

// Checks the kd_fwd contract (csrc/ops.cpp) and allocates (loss [N], grad_student, grad_teacher);
// a gradient that is not asked for is an empty tensor.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_fwd_prepare(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& target,
    double temperature, int64_t divergence, bool grad_student, bool grad_teacher) {
  TORCH_CHECK(student.dim() == 2 && student.sizes() == teacher.sizes(),
              "kd_fwd: student and teacher must be [N, V] of the same shape, got ", student.sizes(), " and ",
              teacher.sizes());
  TORCH_CHECK(student.scalar_type() == teacher.scalar_type(), "kd_fwd: student and teacher dtypes differ");
  TORCH_CHECK(teacher.device() == student.device(), "kd_fwd: student is on ", student.device(),
              " but teacher is on ", teacher.device());
  TORCH_CHECK(student.is_contiguous() && teacher.is_contiguous(), "kd_fwd: inputs must be contiguous");
  TORCH_CHECK(temperature > 0, "kd_fwd: temperature must be > 0");
  TORCH_CHECK(divergence >= 0 && divergence <= 2, "kd_fwd: divergence must be 0 (kl), 1 (reverse_kl) or 2 (jsd)");
  check_float_dtype(student, "kd_fwd");
  const int64_t N = student.size(0);
  if (target.has_value()) {
    TORCH_CHECK(target->dim() == 1 && target->size(0) == N && target->scalar_type() == at::kLong &&
                    target->is_contiguous(),
                "kd_fwd: target must be a contiguous int64 tensor of shape [N]");
    TORCH_CHECK(target->device() == student.device(), "kd_fwd: target is on ", target->device(),
                " but the logits are on ", student.device());
  }
  auto loss = at::empty({N}, student.options().dtype(loss_dtype(student)));
  auto gs = grad_student ? at::empty_like(student) : at::empty({0}, student.options());
  auto gt = grad_teacher ? at::empty_like(teacher) : at::empty({0}, teacher.options());
  if (N == 0 || student.size(1) == 0) loss.zero_();
  return {loss, gs, gt};
}

}  // namespace adkernels
