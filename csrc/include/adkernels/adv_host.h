// Host-side argument checks and output allocation of adv_source_fwd, adv_binary_fwd and
// adv_distill_fwd (schemas: csrc/ops.cpp), shared by the CPU and CUDA implementations, so both
// reject the same inputs with the same messages. Host only: includes ATen tensor headers.
#pragma once

#include <ATen/ATen.h>
#include <adkernels/host_checks.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

namespace adkernels {

// Checks the adv_source_fwd contract and allocates (rows [N] in the loss dtype, grad: like
// logits when need_grad, else empty).
inline std::tuple<at::Tensor, at::Tensor> adv_source_prepare(const at::Tensor& logits, const at::Tensor& source,
                                                             int64_t parameterization, int64_t mode, bool need_grad) {
  const char* op = "adv_source_fwd";
  TORCH_CHECK(parameterization == 0 || parameterization == 1, op,
              ": parameterization must be 0 (softmax) or 1 (binary_tree), got ", parameterization);
  TORCH_CHECK(mode >= 0 && mode <= 2, op, ": mode must be 0 (discriminator), 1 (minimax) or 2 (nonsat), got ", mode);
  const int64_t K = parameterization == 0 ? 3 : 2;
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) == K, op, ": d_logits must be [N, ", K, "] for ",
              parameterization == 0 ? "softmax" : "binary_tree", ", got ", logits.sizes());
  TORCH_CHECK(logits.is_contiguous(), op, ": d_logits must be contiguous");
  check_float_dtype(logits, op);
  const int64_t N = logits.size(0);
  TORCH_CHECK(source.dim() == 1 && source.size(0) == N && source.scalar_type() == at::kLong &&
                  source.is_contiguous() && source.device() == logits.device(),
              op, ": source must be a contiguous int64 tensor of shape [", N, "] on d_logits' device, got ",
              source.sizes(), " ", source.scalar_type(), " on ", source.device());
  auto rows = at::empty({N}, logits.options().dtype(loss_dtype(logits)));
  auto grad = need_grad ? at::empty_like(logits) : at::empty({0}, logits.options());
  return {rows, grad};
}

// adv_binary_fwd's sizes and outputs: Mr / Mf real / fake scores (Mr = 0 when real is not
// used), M terms, out = [M] per-element terms or [ceil(M / chunk)] partial sums.
struct AdvBinaryPrep {
  bool uses_real;
  int64_t Mr, Mf, M, chunks;
  at::Tensor out, grad_real, grad_fake;
};

inline AdvBinaryPrep adv_binary_prepare(const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind,
                                        int64_t side, bool per_element, bool grad_real, bool grad_fake,
                                        int64_t chunk) {
  const char* op = "adv_binary_fwd";
  TORCH_CHECK(kind >= 0 && kind <= 4, op, ": kind must be 0 bce, 1 hinge, 2 lsgan, 3 wgan or 4 relativistic, got ",
              kind);
  TORCH_CHECK(side >= 0 && side <= 2, op, ": side must be 0 (discriminator), 1 (generator) or 2 (generator_nonsat)");
  TORCH_CHECK(side != 2 || kind == 0, op, ": side 2 (generator_nonsat) exists for kind 0 (bce) only");
  TORCH_CHECK(fake.dim() == 1 && fake.is_contiguous(), op, ": fake must be a contiguous 1-d tensor");
  check_float_dtype(fake, op);
  const bool rel = kind == 4;
  AdvBinaryPrep p{};
  p.uses_real = side == 0 || rel;
  TORCH_CHECK(!p.uses_real || real.has_value(), op, ": real scores are needed for this kind and side");
  p.Mf = fake.size(0);
  if (p.uses_real) {
    TORCH_CHECK(real->dim() == 1 && real->is_contiguous() && real->scalar_type() == fake.scalar_type() &&
                    real->device() == fake.device(),
                op, ": real must be a contiguous 1-d tensor of fake's dtype and device");
    p.Mr = real->size(0);
    TORCH_CHECK(!rel || p.Mr == p.Mf, op, ": relativistic pairs real and fake: sizes ", p.Mr, " and ", p.Mf,
                " differ");
    TORCH_CHECK(!per_element || p.Mr == p.Mf, op, ": per-element terms need real and fake of one size, got ", p.Mr,
                " and ", p.Mf);
  }
  TORCH_CHECK(!grad_real || p.uses_real, op, ": grad_real asked without real scores");
  p.M = rel ? p.Mf : std::max(p.Mr, p.Mf);
  p.chunks = (p.M + chunk - 1) / chunk;
  p.out = at::empty({per_element ? p.M : p.chunks}, fake.options().dtype(loss_dtype(fake)));
  p.grad_real = grad_real ? at::empty_like(*real) : at::empty({0}, fake.options());
  p.grad_fake = grad_fake ? at::empty_like(fake) : at::empty({0}, fake.options());
  return p;
}

// Checks the adv_distill_fwd contract (every tensor on gen's device) and allocates
// (rows [N], grad_gen, grad_other, grad_d); a gradient that is not asked for is empty.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adv_distill_prepare(
    const at::Tensor& gen, const at::Tensor& other, const at::Tensor& d, const at::Tensor& source,
    const at::Tensor& tau, const at::Tensor& seed_offset, int64_t parameterization, int64_t mode, double kd_weight,
    double temperature, int64_t divergence, bool grad_gen, bool grad_other, bool grad_d) {
  const char* op = "adv_distill_fwd";
  TORCH_CHECK(parameterization == 0 || parameterization == 1, op,
              ": parameterization must be 0 (softmax) or 1 (binary_tree), got ", parameterization);
  TORCH_CHECK(mode == 1 || mode == 2, op, ": mode must be 1 (minimax) or 2 (nonsat), got ", mode);
  TORCH_CHECK(divergence >= 0 && divergence <= 2, op, ": divergence must be 0 (kl), 1 (reverse_kl) or 2 (jsd), got ",
              divergence);
  TORCH_CHECK(std::isfinite(kd_weight) && kd_weight >= 0, op, ": kd_weight must be finite and >= 0, got ", kd_weight);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, op, ": temperature must be finite and > 0, got ",
              temperature);
  check_float_dtype(gen, op);
  const auto dtype = gen.scalar_type();
  const int64_t K = parameterization == 0 ? 3 : 2;
  TORCH_CHECK(gen.dim() == 2 && gen.is_contiguous(), op, ": gen must be a contiguous [N, C] tensor, got ",
              gen.sizes());
  const int64_t N = gen.size(0), C = gen.size(1);
  TORCH_CHECK(other.sizes() == gen.sizes() && other.scalar_type() == dtype && other.is_contiguous() &&
                  other.device() == gen.device(),
              op, ": other must be a contiguous tensor of gen's shape ", gen.sizes(), ", dtype and device");
  TORCH_CHECK(d.dim() == 3 && d.size(0) == N && d.size(1) == C && d.size(2) == K && d.scalar_type() == dtype &&
                  d.is_contiguous() && d.device() == gen.device(),
              op, ": d must be a contiguous [", N, ", ", C, ", ", K, "] tensor of gen's dtype and device, got ",
              d.sizes());
  TORCH_CHECK(source.dim() == 1 && source.size(0) == N && source.scalar_type() == at::kLong &&
                  source.is_contiguous() && source.device() == gen.device(),
              op, ": source must be a contiguous int64 [", N, "] tensor on gen's device");
  TORCH_CHECK(seed_offset.numel() == 2 && seed_offset.scalar_type() == at::kLong &&
                  seed_offset.device() == gen.device(),
              op, ": seed_offset must be an int64 tensor of 2 elements (seed, offset) on gen's device");
  TORCH_CHECK(tau.numel() == 1 && tau.is_floating_point() && tau.device() == gen.device(), op,
              ": tau must be a one-element floating tensor on gen's device, got ", tau.sizes(), " ",
              tau.scalar_type(), " on ", tau.device());
  TORCH_CHECK(N == 0 || C > 0, op, ": gen has no labels (C = 0): a Gumbel-Softmax sample needs C >= 1");
  auto rows = at::empty({N}, gen.options().dtype(loss_dtype(gen)));
  auto gg = grad_gen ? at::empty_like(gen) : at::empty({0}, gen.options());
  auto go = grad_other ? at::empty_like(other) : at::empty({0}, gen.options());
  auto gd = grad_d ? at::empty_like(d) : at::empty({0}, gen.options());
  return {rows, gg, go, gd};
}

}  // namespace adkernels
