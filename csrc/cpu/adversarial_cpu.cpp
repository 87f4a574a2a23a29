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

#include <adkernels/adv_host.h>

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
  at::Tensor rows, grad;
  std::tie(rows, grad) = adv_source_prepare(logits, source, parameterization, mode, need_grad);
  const AdvDType dt = adv_dtype(logits, "adv_source_fwd");
  const int64_t N = logits.size(0), K = logits.size(1);
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
  auto p = adv_binary_prepare(real, fake, kind, side, per_element, grad_real, grad_fake, kAdvChunk);
  if (p.M == 0) return {p.out, p.grad_real, p.grad_fake};
  AdvBinaryArgs a{p.uses_real ? real->data_ptr() : nullptr, fake.data_ptr(), p.out.data_ptr(),
                  grad_real ? p.grad_real.data_ptr() : nullptr, grad_fake ? p.grad_fake.data_ptr() : nullptr,
                  p.Mr, p.Mf, p.M, kind, side, real_label, real_scale, fake_scale, per_element,
                  adv_dtype(fake, "adv_binary_fwd")};
  AdvBinaryFn fn = ADK_PICK_ISA_KERNEL(adv_binary_chunks);
  at::parallel_for(0, p.chunks, 1, [&](int64_t b, int64_t e) { fn(a, b, e); });
  return {p.out, p.grad_real, p.grad_fake};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adv_distill_fwd_cpu(
    const at::Tensor& gen, const at::Tensor& other, const at::Tensor& d, const at::Tensor& source,
    const at::Tensor& tau, const at::Tensor& seed_offset, bool hard, double w_real, double w_student,
    double w_teacher, int64_t parameterization, int64_t mode, bool per_source_mean, double kd_weight,
    double temperature, int64_t divergence, bool grad_gen, bool grad_other, bool grad_d) {
  at::Tensor rows, gg, go, gd;
  std::tie(rows, gg, go, gd) = adv_distill_prepare(gen, other, d, source, tau, seed_offset, parameterization, mode,
                                                   kd_weight, temperature, divergence, grad_gen, grad_other, grad_d);
  const int64_t N = gen.size(0), C = gen.size(1), K = d.size(2);
  if (N == 0) return {rows, gg, go, gd};
  AdvDistillArgs a{};
  a.dtype = adv_dtype(gen, "adv_distill_fwd");
  a.tau = tau.item<double>();
  TORCH_CHECK(std::isfinite(a.tau) && a.tau > 0, "adv_distill_fwd: tau must be finite and > 0, got ", a.tau);
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
