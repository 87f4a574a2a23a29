// Host-side argument checks and output allocation shared by the CPU and CUDA topk_kd_fwd.
#pragma once

#include <ATen/ATen.h>
#include <adkernels/host_checks.h>

#include <optional>
#include <tuple>

namespace adkernels {

// Checks the topk_kd_fwd contract (csrc/ops.cpp); returns (loss [N], grad_student or empty).
inline std::tuple<at::Tensor, at::Tensor> topk_kd_fwd_prepare(
    const at::Tensor& student, const at::Tensor& ids, const at::Tensor& teacher_logprobs,
    const std::optional<at::Tensor>& target, double temperature, int64_t tail, bool grad_student) {
  TORCH_CHECK(student.dim() == 2, "topk_kd_fwd: student must be [N, V], got ", student.sizes());
  check_float_dtype(student, "topk_kd_fwd");
  const int64_t N = student.size(0), V = student.size(1);
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == N && ids.scalar_type() == at::kLong,
              "topk_kd_fwd: ids must be int64 [N, K] with N = ", N, ", got ", ids.sizes(), " ", ids.scalar_type());
  const int64_t K = ids.size(1);
  TORCH_CHECK(K <= V, "topk_kd_fwd: k = ", K, " exceeds the vocabulary V = ", V);
  const auto acc = loss_dtype(student);
  TORCH_CHECK(teacher_logprobs.sizes() == ids.sizes() && teacher_logprobs.scalar_type() == acc,
              "topk_kd_fwd: teacher_logprobs must be [N, K] like ids in ", acc, ", got ",
              teacher_logprobs.sizes(), " ", teacher_logprobs.scalar_type());
  TORCH_CHECK(student.is_contiguous() && ids.is_contiguous() && teacher_logprobs.is_contiguous(),
              "topk_kd_fwd: inputs must be contiguous");
  TORCH_CHECK(ids.device() == student.device() && teacher_logprobs.device() == student.device(),
              "topk_kd_fwd: all inputs must be on ", student.device());
  TORCH_CHECK(temperature > 0, "topk_kd_fwd: temperature must be > 0");
  TORCH_CHECK(tail == 0 || tail == 1, "topk_kd_fwd: tail must be 0 (renorm) or 1 (bucket)");
  if (target.has_value()) {
    TORCH_CHECK(target->dim() == 1 && target->size(0) == N && target->scalar_type() == at::kLong &&
                    target->is_contiguous(),
                "topk_kd_fwd: target must be a contiguous int64 tensor of shape [N]");
    TORCH_CHECK(target->device() == student.device(), "topk_kd_fwd: target is on ", target->device(),
                " but the logits are on ", student.device());
  }
  auto loss = at::empty({N}, student.options().dtype(acc));
  auto gs = grad_student ? at::empty_like(student) : at::empty({0}, student.options());
  if (N == 0 || V == 0) loss.zero_();
  return {loss, gs};
}

}  // namespace adkernels
