// CPU registration of adv_source_fwd and adv_binary_fwd: argument checks, source counts,
// output allocation, the per-ISA kernel choice and the parallel loops. Arithmetic:
// adversarial_kernels.cpp / adversarial_math.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "adversarial_args.h"
#include "isa.h"

namespace adkernels::cpu {

ADK_DECLARE_ISA_KERNELS(void adv_source_rows(const AdvSourceArgs&, int64_t, int64_t));
ADK_DECLARE_ISA_KERNELS(void adv_binary_chunks(const AdvBinaryArgs&, int64_t, int64_t));
ADK_DECLARE_ISA_KERNELS(void adv_distill_rows(const AdvDistillArgs&, int64_t, int64_t));

namespace {

AdvDType adv_dtype(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return AdvDType::Float;
    case at::kDouble: return AdvDType::Double;
    case at::kHalf: return AdvDType::Half;
    case at::kBFloat16: return AdvDType::BFloat16;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", t.scalar_type(), " (use float32, float64, float16 or bfloat16)");
  }
}

at::ScalarType loss_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Per-source row factors: w_i / max(1, count_i) when per_source_mean, else w_i. Counts and the
// first bad source id (outside {0, 1, 2}, or 0 for generator modes) in one parallel pass; bad
// ids raise ValueError (as the Python checks of the other backends do).
void source_scales(const int64_t* src, int64_t N, int64_t mode, const double (&w)[3], bool per_source_mean,
                   double (&scale)[3]) {
  const int64_t lo = mode == 0 ? 0 : 1;
  std::atomic<int64_t> counts[3] = {0, 0, 0};
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  at::parallel_for(0, N, 1 << 16, [&](int64_t b, int64_t e) {
    int64_t c[3] = {0, 0, 0};
    for (int64_t n = b; n < e; ++n) {
      const int64_t s = src[n];
      if (s < lo || s > 2) {
        int64_t cur = first_bad.load();
        while (n < cur && !first_bad.compare_exchange_weak(cur, n)) {
        }
        break;
      }
      ++c[s];
    }
    for (int k = 0; k < 3; ++k) counts[k] += c[k];
  });
  if (first_bad.load() != std::numeric_limits<int64_t>::max()) {
    const int64_t n = first_bad.load();
    if (mode == 0 || src[n] < 0 || src[n] > 2) {
      TORCH_CHECK_VALUE(false, "source[", n, "] = ", src[n], " is not a source: use 0 (REAL), 1 (STUDENT) or 2 (TEACHER)");
    }
    TORCH_CHECK_VALUE(false, "generator_loss: source[", n, "] = 0 (REAL): generator rows must be 1 (STUDENT) or ",
                "2 (TEACHER); real rows belong in discriminator_loss");
  }
  for (int k = 0; k < 3; ++k) {
    scale[k] = per_source_mean ? w[k] / static_cast<double>(std::max<int64_t>(1, counts[k].load())) : w[k];
  }
}


}  // namespace

std::tuple<at::Tensor, at::Tensor> adv_source_fwd_cpu(const at::Tensor& logits, const at::Tensor& source,
                                                     double w_real, double w_student, double w_teacher,
                                                     int64_t parameterization, int64_t mode, bool per_source_mean,
                                                     bool need_grad) {
  const char* op = "adv_source_fwd";
  TORCH_CHECK(parameterization == 0 || parameterization == 1, op,
              ": parameterization must be 0 (softmax) or 1 (binary_tree), got ", parameterization);
  TORCH_CHECK(mode >= 0 && mode <= 2, op, ": mode must be 0 (discriminator), 1 (minimax) or 2 (nonsat), got ", mode);
  const int64_t K = parameterization == 0 ? 3 : 2;
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) == K, op, ": d_logits must be [N, ", K, "] for ",
              parameterization == 0 ? "softmax" : "binary_tree", ", got ", logits.sizes());
  TORCH_CHECK(logits.is_contiguous() && logits.device().is_cpu(), op, ": d_logits must be a contiguous CPU tensor");
  const AdvDType dt = adv_dtype(logits, op);
  const int64_t N = logits.size(0);
  TORCH_CHECK(source.dim() == 1 && source.size(0) == N && source.scalar_type() == at::kLong &&
                  source.is_contiguous() && source.device().is_cpu(),
              op, ": source must be a contiguous int64 CPU tensor of shape [", N, "], got ", source.sizes(), " ",
              source.scalar_type());
  auto rows = at::empty({N}, logits.options().dtype(loss_type(logits)));
  auto grad = need_grad ? at::empty_like(logits) : at::empty({0}, logits.options());
  if (N == 0) return {rows, grad};

  const int64_t* src = source.data_ptr<int64_t>();
  AdvSourceArgs a{logits.data_ptr(), src, rows.data_ptr(), need_grad ? grad.data_ptr() : nullptr, N, K,
                  parameterization, mode, {0, 0, 0}, dt};
  source_scales(src, N, mode, {w_real, w_student, w_teacher}, per_source_mean, a.scale);
  AdvSourceFn fn = ADK_PICK_ISA_KERNEL(adv_source_rows);
  at::parallel_for(0, N, 4096, [&](int64_t b, int64_t e) { fn(a, b, e); });
  return {rows, grad};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adv_binary_fwd_cpu(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, int64_t side, double real_label,
    double real_scale, double fake_scale, bool per_element, bool grad_real, bool grad_fake) {
  const char* op = "adv_binary_fwd";
  TORCH_CHECK(kind >= 0 && kind <= 4, op, ": kind must be 0 bce, 1 hinge, 2 lsgan, 3 wgan or 4 relativistic, got ",
              kind);
  TORCH_CHECK(side >= 0 && side <= 2, op, ": side must be 0 (discriminator), 1 (generator) or 2 (generator_nonsat)");
  TORCH_CHECK(side != 2 || kind == 0, op, ": side 2 (generator_nonsat) exists for kind 0 (bce) only");
  TORCH_CHECK(fake.dim() == 1 && fake.is_contiguous() && fake.device().is_cpu(), op,
              ": fake must be a contiguous 1-d CPU tensor");
  const AdvDType dt = adv_dtype(fake, op);
  const bool rel = kind == 4;
  const bool has_real = real.has_value() && (side == 0 || rel);
  TORCH_CHECK(!((side == 0 || rel) && !real.has_value()), op, ": real scores are needed for this kind and side");
  const int64_t Mf = fake.size(0);
  int64_t Mr = 0;
  if (has_real) {
    TORCH_CHECK(real->dim() == 1 && real->is_contiguous() && real->device().is_cpu() &&
                    real->scalar_type() == fake.scalar_type(),
                op, ": real must be a contiguous 1-d CPU tensor of fake's dtype");
    Mr = real->size(0);
    TORCH_CHECK(!rel || Mr == Mf, op, ": relativistic pairs real and fake: sizes ", Mr, " and ", Mf, " differ");
    TORCH_CHECK(!per_element || Mr == Mf, op, ": per-element terms need real and fake of one size, got ", Mr,
                " and ", Mf);
  }
  TORCH_CHECK(!grad_real || has_real, op, ": grad_real asked without real scores");
  const int64_t M = rel ? Mf : std::max(Mr, Mf);
  const int64_t chunks = (M + kAdvChunk - 1) / kAdvChunk;
  auto out = at::empty({per_element ? M : chunks}, fake.options().dtype(loss_type(fake)));
  auto gr = grad_real ? at::empty_like(*real) : at::empty({0}, fake.options());
  auto gf = grad_fake ? at::empty_like(fake) : at::empty({0}, fake.options());
  if (M == 0) return {out, gr, gf};
  AdvBinaryArgs a{has_real ? real->data_ptr() : nullptr, fake.data_ptr(), out.data_ptr(),
                  grad_real ? gr.data_ptr() : nullptr, grad_fake ? gf.data_ptr() : nullptr,
                  Mr, Mf, M, kind, side, real_label, real_scale, fake_scale, per_element, dt};
  AdvBinaryFn fn = ADK_PICK_ISA_KERNEL(adv_binary_chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) { fn(a, b, e); });
  return {out, gr, gf};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adv_distill_fwd_cpu(
    const at::Tensor& gen, const at::Tensor& other, const at::Tensor& d, const at::Tensor& source,
    const at::Tensor& tau, const at::Tensor& seed_offset, bool hard, double w_real, double w_student,
    double w_teacher, int64_t parameterization, int64_t mode, bool per_source_mean, double kd_weight,
    double temperature, int64_t divergence, bool grad_gen, bool grad_other, bool grad_d) {
  const char* op = "adv_distill_fwd";
  TORCH_CHECK(parameterization == 0 || parameterization == 1, op,
              ": parameterization must be 0 (softmax) or 1 (binary_tree), got ", parameterization);
  TORCH_CHECK(mode == 1 || mode == 2, op, ": mode must be 1 (minimax) or 2 (nonsat), got ", mode);
  TORCH_CHECK(divergence >= 0 && divergence <= 2, op, ": divergence must be 0 (kl), 1 (reverse_kl) or 2 (jsd)");
  TORCH_CHECK(std::isfinite(kd_weight) && kd_weight >= 0, op, ": kd_weight must be finite and >= 0, got ", kd_weight);
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, op, ": temperature must be finite and > 0, got ",
              temperature);
  const int64_t K = parameterization == 0 ? 3 : 2;
  TORCH_CHECK(gen.dim() == 2 && gen.is_contiguous() && gen.device().is_cpu(), op,
              ": gen must be a contiguous [N, C] CPU tensor, got ", gen.sizes());
  const int64_t N = gen.size(0), C = gen.size(1);
  TORCH_CHECK(other.sizes() == gen.sizes() && other.scalar_type() == gen.scalar_type() && other.is_contiguous() &&
                  other.device().is_cpu(),
              op, ": other must be a contiguous CPU tensor of gen's shape ", gen.sizes(), " and dtype");
  TORCH_CHECK(d.dim() == 3 && d.size(0) == N && d.size(1) == C && d.size(2) == K &&
                  d.scalar_type() == gen.scalar_type() && d.is_contiguous() && d.device().is_cpu(),
              op, ": d must be a contiguous CPU tensor [", N, ", ", C, ", ", K, "] of gen's dtype, got ", d.sizes());
  TORCH_CHECK(source.dim() == 1 && source.size(0) == N && source.scalar_type() == at::kLong &&
                  source.is_contiguous() && source.device().is_cpu(),
              op, ": source must be a contiguous int64 CPU tensor of shape [", N, "]");
  TORCH_CHECK(seed_offset.numel() == 2 && seed_offset.scalar_type() == at::kLong && seed_offset.device().is_cpu(), op,
              ": seed_offset must be an int64 CPU tensor of 2 elements (seed, offset)");
  TORCH_CHECK(tau.numel() == 1 && tau.is_floating_point() && tau.device().is_cpu(), op,
              ": tau must be a one-element floating CPU tensor");
  AdvDistillArgs a{};
  a.dtype = adv_dtype(gen, op);
  a.tau = tau.item<double>();
  TORCH_CHECK(std::isfinite(a.tau) && a.tau > 0, op, ": tau must be finite and > 0, got ", a.tau);
  auto rows = at::empty({N}, gen.options().dtype(loss_type(gen)));
  auto gg = grad_gen ? at::empty_like(gen) : at::empty({0}, gen.options());
  auto go = grad_other ? at::empty_like(other) : at::empty({0}, gen.options());
  auto gd = grad_d ? at::empty_like(d) : at::empty({0}, gen.options());
  if (N == 0) return {rows, gg, go, gd};
  TORCH_CHECK(C > 0, op, ": gen has no labels (C = 0): a Gumbel-Softmax sample needs C >= 1");
  const int64_t* src = source.data_ptr<int64_t>();
  source_scales(src, N, mode, {w_real, w_student, w_teacher}, per_source_mean, a.scale);
  const auto so = seed_offset.contiguous();
  a.seed = static_cast<uint64_t>(so.data_ptr<int64_t>()[0]);
  a.offset = static_cast<uint64_t>(so.data_ptr<int64_t>()[1]);
  a.gen = gen.data_ptr();
  a.other = other.data_ptr();
  a.d = d.data_ptr();
  a.source = src;
  a.rows = rows.data_ptr();
  a.grad_gen = grad_gen ? gg.data_ptr() : nullptr;
  a.grad_other = grad_other ? go.data_ptr() : nullptr;
  a.grad_d = grad_d ? gd.data_ptr() : nullptr;
  a.N = N;
  a.C = C;
  a.K = K;
  a.param = parameterization;
  a.mode = mode;
  a.divergence = divergence;
  a.kd_scale = kd_weight / static_cast<double>(N);
  a.temperature = temperature;
  a.hard = hard;
  if (grad_other && kd_weight == 0) go.zero_();
  if (kd_weight == 0) a.grad_other = nullptr;
  AdvDistillFn fn = ADK_PICK_ISA_KERNEL(adv_distill_rows);
  const int64_t grain = std::max<int64_t>(1, 16384 / (C * (K + 2)));
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) { fn(a, b, e); });
  return {rows, gg, go, gd};
}

TORCH_LIBRARY_IMPL(adkernels, CPU, m) {
  m.impl("adv_source_fwd", &adv_source_fwd_cpu);
  m.impl("adv_binary_fwd", &adv_binary_fwd_cpu);
  m.impl("adv_distill_fwd", &adv_distill_fwd_cpu);
}

}  // namespace adkernels::cpu
