// CPU registration of sign_step / pgd_step (functional and in-place): argument checks, output
// allocation, the per-ISA kernel choice and the parallel loop. The arithmetic is in
// attack_kernels.cpp / attack_math.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "attack_args.h"
#include "isa.h"

namespace adkernels::cpu {

ADK_DECLARE_ISA_KERNELS(void attack_range(const AttackArgs&, int64_t, int64_t));

namespace {

AttackDType attack_dtype(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return AttackDType::Float;
    case at::kDouble: return AttackDType::Double;
    case at::kHalf: return AttackDType::Half;
    case at::kBFloat16: return AttackDType::BFloat16;
    default: TORCH_CHECK(false, op, ": ", name, " has unsupported dtype ", t.scalar_type());
  }
}

// Checks shared by every attack op; fills everything in AttackArgs but out / kind.
AttackArgs prepare(const char* op, const at::Tensor& x, const at::Tensor& grad, const at::Tensor* x_nat,
                   const at::Tensor& step, const at::Tensor* eps, const std::optional<at::Tensor>& lo,
                   const std::optional<at::Tensor>& hi, int64_t bound_inner) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64 (keep the adversarial state in fp32), got ", x.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad must have x's shape ", x.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(x.is_contiguous() && grad.is_contiguous(), op, ": x and grad must be contiguous");
  TORCH_CHECK(x.device().is_cpu() && grad.device().is_cpu(), op, ": expected CPU tensors");
  const int64_t N = x.size(0), D = N > 0 ? x.numel() / N : 0;
  auto check_vec = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == N && t.scalar_type() == x.scalar_type() && t.is_contiguous() &&
                    t.device().is_cpu(),
                op, ": ", name, " must be a contiguous [", N, "] CPU tensor of x's dtype, got ", t.sizes(), " ",
                t.scalar_type());
  };
  check_vec(step, "step");
  if (eps) check_vec(*eps, "eps");
  if (x_nat) {
    TORCH_CHECK(x_nat->sizes() == x.sizes() && x_nat->scalar_type() == x.scalar_type() && x_nat->is_contiguous() &&
                    x_nat->device().is_cpu(),
                op, ": x_nat must be a contiguous CPU tensor of x_adv's shape and dtype");
  }
  TORCH_CHECK(lo.has_value() == hi.has_value(), op, ": pass both lo and hi or neither (use +-inf for a missing side)");
  int64_t B = 1;
  if (lo.has_value()) {
    TORCH_CHECK(lo->dim() == 1 && lo->sizes() == hi->sizes() && lo->numel() >= 1 &&
                    lo->scalar_type() == x.scalar_type() && hi->scalar_type() == x.scalar_type() &&
                    lo->is_contiguous() && hi->is_contiguous() && lo->device().is_cpu() && hi->device().is_cpu(),
                op, ": lo and hi must be contiguous 1-d CPU tensors [B] of x's dtype");
    B = lo->size(0);
    TORCH_CHECK(bound_inner >= 1, op, ": bound_inner must be >= 1, got ", bound_inner);
    TORCH_CHECK(x.numel() % (B * bound_inner) == 0, op, ": bounds of ", B, " values repeated every ", bound_inner,
                " elements do not tile x (", x.numel(), " elements)");
  }
  return AttackArgs{x.data_ptr(), grad.data_ptr(), x_nat ? x_nat->data_ptr() : nullptr, nullptr, step.data_ptr(),
                    eps ? eps->data_ptr() : nullptr, lo ? lo->data_ptr() : nullptr, hi ? hi->data_ptr() : nullptr,
                    N, D, B, std::max<int64_t>(bound_inner, 1), AttackKind::Sign,
                    attack_dtype(x, op, "x"), attack_dtype(grad, op, "grad")};
}

void launch(AttackArgs& a, const at::Tensor& out) {
  a.out = out.data_ptr();
  if (a.N == 0 || a.D == 0) return;
  AttackRangeFn fn = ADK_PICK_ISA_KERNEL(attack_range);
  if (a.kind == AttackKind::PgdL2 || a.kind == AttackKind::RandL2) {
    at::parallel_for(0, a.N, 1, [&](int64_t b, int64_t e) { fn(a, b, e); });
  } else {
    at::parallel_for(0, a.N * a.D, 32768, [&](int64_t b, int64_t e) { fn(a, b, e); });
  }
}

AttackKind pgd_kind(const char* op, int64_t norm) {
  TORCH_CHECK(norm == 0 || norm == 1, op, ": norm must be 0 (linf) or 1 (l2), got ", norm);
  return norm == 0 ? AttackKind::PgdLinf : AttackKind::PgdL2;
}

at::Tensor sign_step_cpu(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& step,
                         const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                         int64_t bound_inner) {
  AttackArgs a = prepare("sign_step", x, grad, nullptr, step, nullptr, lo, hi, bound_inner);
  a.kind = AttackKind::Sign;
  auto out = at::empty_like(x);
  launch(a, out);
  return out;
}

void sign_step_inplace_cpu(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& step,
                           const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                           int64_t bound_inner) {
  AttackArgs a = prepare("sign_step_", x, grad, nullptr, step, nullptr, lo, hi, bound_inner);
  a.kind = AttackKind::Sign;
  launch(a, x);
}

at::Tensor pgd_step_cpu(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                        const at::Tensor& step, const at::Tensor& eps, int64_t norm,
                        const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                        int64_t bound_inner) {
  AttackArgs a = prepare("pgd_step", x_adv, grad, &x_nat, step, &eps, lo, hi, bound_inner);
  a.kind = pgd_kind("pgd_step", norm);
  auto out = at::empty_like(x_adv);
  launch(a, out);
  return out;
}

void pgd_step_inplace_cpu(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                          const at::Tensor& step, const at::Tensor& eps, int64_t norm,
                          const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                          int64_t bound_inner) {
  AttackArgs a = prepare("pgd_step_", x_adv, grad, &x_nat, step, &eps, lo, hi, bound_inner);
  a.kind = pgd_kind("pgd_step_", norm);
  launch(a, x_adv);
}

// random_start: x is [N, ...] float32/float64 contiguous, eps [N] of x's dtype, seed_offset int64[2].
AttackArgs prepare_random(const char* op, const at::Tensor& x, const at::Tensor& eps, const at::Tensor& seed_offset,
                          int64_t norm, const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                          int64_t bound_inner) {
  TORCH_CHECK(norm == 0 || norm == 1, op, ": norm must be 0 (linf) or 1 (l2), got ", norm);
  TORCH_CHECK(x.dim() >= 1, op, ": x must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(eps.dim() == 1 && eps.size(0) == x.size(0) && eps.scalar_type() == x.scalar_type() &&
                  eps.is_contiguous() && eps.device().is_cpu(),
              op, ": eps must be a contiguous [", x.size(0), "] CPU tensor of x's dtype, got ", eps.sizes(), " ",
              eps.scalar_type());
  TORCH_CHECK(seed_offset.numel() == 2 && seed_offset.scalar_type() == at::kLong && seed_offset.device().is_cpu(), op,
              ": seed_offset must be an int64 CPU tensor of 2 elements (seed, offset), got ", seed_offset.sizes(), " ",
              seed_offset.scalar_type());
  // x stands in for grad and eps for step: the shared checks then cover x, eps and the bounds.
  AttackArgs a = prepare(op, x, x, nullptr, eps, &eps, lo, hi, bound_inner);
  a.grad = nullptr;
  a.step = nullptr;
  a.kind = norm == 0 ? AttackKind::RandLinf : AttackKind::RandL2;
  const auto so = seed_offset.contiguous();
  a.seed = static_cast<uint64_t>(so.data_ptr<int64_t>()[0]);
  a.offset = static_cast<uint64_t>(so.data_ptr<int64_t>()[1]);
  return a;
}

at::Tensor random_start_cpu(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& seed_offset, int64_t norm,
                            const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                            int64_t bound_inner) {
  AttackArgs a = prepare_random("random_start", x, eps, seed_offset, norm, lo, hi, bound_inner);
  auto out = at::empty_like(x);
  launch(a, out);
  return out;
}

void random_start_inplace_cpu(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& seed_offset, int64_t norm,
                              const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                              int64_t bound_inner) {
  AttackArgs a = prepare_random("random_start_", x, eps, seed_offset, norm, lo, hi, bound_inner);
  launch(a, x);
}

}  // namespace

TORCH_LIBRARY_IMPL(adkernels, CPU, m) {
  m.impl("sign_step", &sign_step_cpu);
  m.impl("sign_step_", &sign_step_inplace_cpu);
  m.impl("pgd_step", &pgd_step_cpu);
  m.impl("pgd_step_", &pgd_step_inplace_cpu);
  m.impl("random_start", &random_start_cpu);
  m.impl("random_start_", &random_start_inplace_cpu);
}

}  // namespace adkernels::cpu
