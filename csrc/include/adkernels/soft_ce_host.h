// Host-side argument checks and output allocation shared by the CPU and CUDA soft_ce_fwd and
// ada_lab_targets kernels.
#pragma once

#include <ATen/ATen.h>
#include <adkernels/host_checks.h>

#include <tuple>

namespace adkernels {

inline void soft_ce_check_pair(const char* op, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && a.sizes() == b.sizes(), op, ": both inputs must be [N, V] of the same shape, got ",
              a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": input dtypes differ");
  TORCH_CHECK(a.device() == b.device(), op, ": inputs are on ", a.device(), " and ", b.device());
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), op, ": inputs must be contiguous");
  check_float_dtype(a, op);
}

// (loss [N], grad_logits or empty, grad_targets or empty)
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_ce_fwd_prepare(
    const at::Tensor& logits, const at::Tensor& targets, bool grad_logits, bool grad_targets) {
  soft_ce_check_pair("soft_ce_fwd", logits, targets);
  const auto acc = loss_dtype(logits);
  auto loss = at::empty({logits.size(0)}, logits.options().dtype(acc));
  auto gz = grad_logits ? at::empty_like(logits) : at::empty({0}, logits.options());
  auto gq = grad_targets ? at::empty_like(targets) : at::empty({0}, targets.options());
  if (logits.size(0) == 0 || logits.size(1) == 0) loss.zero_();
  return {loss, gz, gq};
}

// (refined targets [N, V] in the input dtype, weight [N] fp32 / fp64)
inline std::tuple<at::Tensor, at::Tensor> ada_lab_prepare(const at::Tensor& logits_adv, const at::Tensor& logits_aa,
                                                          const at::Tensor& target, double temperature) {
  soft_ce_check_pair("ada_lab_targets", logits_adv, logits_aa);
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits_adv.size(0) && target.scalar_type() == at::kLong &&
                  target.is_contiguous() && target.device() == logits_adv.device(),
              "ada_lab_targets: target must be a contiguous int64 [N] tensor on the logits' device");
  TORCH_CHECK(temperature > 0, "ada_lab_targets: temperature must be > 0");
  const auto acc = loss_dtype(logits_adv);
  return {at::empty_like(logits_adv), at::empty({logits_adv.size(0)}, logits_adv.options().dtype(acc))};
}

}  // namespace adkernels
