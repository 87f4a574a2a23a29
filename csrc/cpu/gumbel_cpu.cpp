// CPU registration of gumbel_softmax_fwd / gumbel_softmax_bwd: argument checks, outputs, the
// per-ISA kernel choice and the parallel loop over rows. Arithmetic: gumbel_kernels.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "gumbel_args.h"
#include "isa.h"

namespace adkernels::cpu {

ADK_DECLARE_ISA_KERNELS(void gumbel_fwd_rows(const GumbelFwdArgs&, int64_t, int64_t));
ADK_DECLARE_ISA_KERNELS(void gumbel_bwd_rows(const GumbelBwdArgs&, int64_t, int64_t));

namespace {

GumbelDType gumbel_dtype(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return GumbelDType::Float;
    case at::kDouble: return GumbelDType::Double;
    case at::kHalf: return GumbelDType::Half;
    case at::kBFloat16: return GumbelDType::BFloat16;
    default: TORCH_CHECK(false, op, ": expected float32, float64, float16 or bfloat16, got ", t.scalar_type());
  }
}

double tau_value(const at::Tensor& tau, const char* op) {
  TORCH_CHECK(tau.numel() == 1 && tau.is_floating_point() && tau.device().is_cpu(), op,
              ": tau must be a one-element floating CPU tensor, got ", tau.sizes(), " ", tau.scalar_type());
  const double t = tau.item<double>();
  TORCH_CHECK(std::isfinite(t) && t > 0, op, ": tau must be finite and > 0, got ", t);
  return t;
}

int64_t grain(int64_t V) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(V, 1)); }

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_fwd_cpu(const at::Tensor& logits, const at::Tensor& tau,
                                                          const at::Tensor& seed_offset, bool hard, bool save_soft) {
  const char* op = "gumbel_softmax_fwd";
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.device().is_cpu(), op,
              ": logits must be a contiguous [N, V] CPU tensor, got ", logits.sizes());
  TORCH_CHECK(seed_offset.numel() == 2 && seed_offset.scalar_type() == at::kLong && seed_offset.device().is_cpu(), op,
              ": seed_offset must be an int64 CPU tensor of 2 elements (seed, offset)");
  GumbelFwdArgs a{};
  a.dtype = gumbel_dtype(logits, op);
  a.tau = tau_value(tau, op);
  const auto so = seed_offset.contiguous();
  a.seed = static_cast<uint64_t>(so.data_ptr<int64_t>()[0]);
  a.offset = static_cast<uint64_t>(so.data_ptr<int64_t>()[1]);
  a.N = logits.size(0);
  a.V = logits.size(1);
  a.hard = hard;
  auto y = at::empty_like(logits);
  auto y_soft = hard && save_soft ? at::empty_like(logits) : logits.new_empty({0});
  a.x = logits.data_ptr();
  a.y = y.data_ptr();
  a.y_soft = hard && save_soft ? y_soft.data_ptr() : nullptr;
  if (a.N > 0 && a.V > 0) {
    GumbelFwdFn fn = ADK_PICK_ISA_KERNEL(gumbel_fwd_rows);
    at::parallel_for(0, a.N, grain(a.V), [&](int64_t b, int64_t e) { fn(a, b, e); });
  }
  return {y, y_soft};
}

at::Tensor gumbel_softmax_bwd_cpu(const at::Tensor& y, const at::Tensor& grad_y, const at::Tensor& tau) {
  const char* op = "gumbel_softmax_bwd";
  TORCH_CHECK(y.dim() == 2 && y.is_contiguous() && y.device().is_cpu(), op,
              ": y must be a contiguous [N, V] CPU tensor, got ", y.sizes());
  TORCH_CHECK(grad_y.sizes() == y.sizes() && grad_y.scalar_type() == y.scalar_type() && grad_y.is_contiguous() &&
                  grad_y.device().is_cpu(),
              op, ": grad_y must be a contiguous CPU tensor of y's shape and dtype");
  GumbelBwdArgs a{};
  a.dtype = gumbel_dtype(y, op);
  a.tau = tau_value(tau, op);
  a.N = y.size(0);
  a.V = y.size(1);
  auto dx = at::empty_like(y);
  a.y = y.data_ptr();
  a.dy = grad_y.data_ptr();
  a.dx = dx.data_ptr();
  if (a.N > 0 && a.V > 0) {
    GumbelBwdFn fn = ADK_PICK_ISA_KERNEL(gumbel_bwd_rows);
    at::parallel_for(0, a.N, grain(a.V), [&](int64_t b, int64_t e) { fn(a, b, e); });
  }
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(adkernels, CPU, m) {
  m.impl("gumbel_softmax_fwd", &gumbel_softmax_fwd_cpu);
  m.impl("gumbel_softmax_bwd", &gumbel_softmax_bwd_cpu);
}

}  // namespace adkernels::cpu
