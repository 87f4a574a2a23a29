// CPU registration of soft_ce_fwd and ada_lab_targets: argument checks, output allocation, the
// per-ISA kernel choice and the parallel loop over rows. Arithmetic: soft_ce_kernels.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <adkernels/soft_ce_host.h>

#include "isa.h"
#include "soft_ce_args.h"

namespace adkernels::cpu {

ADK_DECLARE_ISA_KERNELS(void soft_ce_rows(const SoftCeArgs&, int64_t, int64_t));
ADK_DECLARE_ISA_KERNELS(void ada_lab_rows(const AdaLabArgs&, int64_t, int64_t));

static DType soft_ce_dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return DType::Double;
    case at::kHalf: return DType::Half;
    case at::kBFloat16: return DType::BFloat16;
    default: return DType::Float;  // checked by soft_ce_check_pair
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_ce_fwd_cpu(const at::Tensor& logits, const at::Tensor& targets,
                                                               bool grad_logits, bool grad_targets,
                                                               double grad_scale) {
  auto [loss, gz, gq] = soft_ce_fwd_prepare(logits, targets, grad_logits, grad_targets);
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0 || V == 0) return {loss, gz, gq};
  SoftCeArgs a{logits.data_ptr(), targets.data_ptr(), loss.data_ptr(), grad_logits ? gz.data_ptr() : nullptr,
               grad_targets ? gq.data_ptr() : nullptr, N, V, soft_ce_dtype_of(logits), grad_scale};
  SoftCeRowsFn fn = ADK_PICK_ISA_KERNEL(soft_ce_rows);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1));
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) { fn(a, b, e); });
  return {loss, gz, gq};
}

std::tuple<at::Tensor, at::Tensor> ada_lab_targets_cpu(const at::Tensor& logits_adv, const at::Tensor& logits_aa,
                                                       const at::Tensor& target, double max_weight, double gamma,
                                                       double bias, double temperature) {
  auto [out, weight] = ada_lab_prepare(logits_adv, logits_aa, target, temperature);
  const int64_t N = logits_adv.size(0), V = logits_adv.size(1);
  const int64_t* tgt = target.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    TORCH_CHECK(tgt[n] >= 0 && tgt[n] < V, "ada_lab_targets: target[", n, "] = ", tgt[n], " is out of range [0, ",
                V, ")");
  }
  if (N == 0 || V == 0) return {out, weight};
  AdaLabArgs a{logits_adv.data_ptr(), logits_aa.data_ptr(), tgt, out.data_ptr(), weight.data_ptr(), N, V,
               max_weight, gamma, bias, temperature, soft_ce_dtype_of(logits_adv)};
  AdaLabRowsFn fn = ADK_PICK_ISA_KERNEL(ada_lab_rows);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1));
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) { fn(a, b, e); });
  return {out, weight};
}

TORCH_LIBRARY_IMPL(adkernels, CPU, m) {
  m.impl("soft_ce_fwd", &soft_ce_fwd_cpu);
  m.impl("ada_lab_targets", &ada_lab_targets_cpu);
}

}  // namespace adkernels::cpu
