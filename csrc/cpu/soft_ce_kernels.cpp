// CPU soft-target cross entropy (soft_ce_fwd) and ADA-Lab target (ada_lab_targets) kernels,
// compiled once per instruction set like kd_kernels.cpp. Formulas: kd_math.h (soft_ce_*,
// ada_lab_*). Contracts: csrc/ops.cpp, adkernels/reference/soft_ce.py.
//
// soft_ce_fwd, per row (logits and targets read from memory once; row buffers in cache):
//   A  load (bf16/fp16 converted once into fp32), max m of z
//   B  e = exp(z - m) stored and summed; Q = sum q, sum q z (0 where q = 0)
//   C  loss Q lse - sum q z; gradients e Q / S - q and lse - z times grad_scale, written in the
//      input dtype
// ada_lab_targets, per row:
//   A  max of z_adv (and of z_adv without column y), sum exp(z_adv - max); max of z_aa
//   B  exp((z_aa - max) / T) stored and summed
//   C  margin, weight, target (1 - w) onehot(y) + w q written in the input dtype
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <adkernels/vec_math.h>  // before kd_math.h: its templates must see these overloads
#include <adkernels/kd_math.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <memory>
#include <type_traits>

#include "soft_ce_args.h"

namespace adkernels::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename acc_t>
inline acc_t row_max(const acc_t* x, int64_t size) {
  using Vec = Vectorized<acc_t>;
  if (size <= 0) return -INFINITY;
  return at::vec::reduce_all<acc_t>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x, size);
}

template <typename acc_t>
inline acc_t row_sum(const acc_t* x, int64_t size) {
  using Vec = Vectorized<acc_t>;
  if (size <= 0) return 0;
  return at::vec::reduce_all<acc_t>([](Vec& a, Vec& b) { return a + b; }, x, size);
}

template <typename scalar_t>
void soft_ce_rows_impl(const SoftCeArgs& a, int64_t begin, int64_t end) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Vec = Vectorized<acc_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t V = a.V;
  const acc_t gscale = static_cast<acc_t>(a.grad_scale);
  std::unique_ptr<acc_t[]> buffer(new acc_t[V * (kConvert ? 5 : 1)]);
  acc_t* e = buffer.get();
  acc_t* z_buf = kConvert ? e + V : nullptr;
  acc_t* q_buf = kConvert ? e + 2 * V : nullptr;
  acc_t* gz_buf = kConvert ? e + 3 * V : nullptr;
  acc_t* gq_buf = kConvert ? e + 4 * V : nullptr;
  auto* loss = static_cast<acc_t*>(a.loss);
  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* z_in = static_cast<const scalar_t*>(a.logits) + n * V;
    const scalar_t* q_in = static_cast<const scalar_t*>(a.targets) + n * V;
    scalar_t* gz_out = a.grad_logits ? static_cast<scalar_t*>(a.grad_logits) + n * V : nullptr;
    scalar_t* gq_out = a.grad_targets ? static_cast<scalar_t*>(a.grad_targets) + n * V : nullptr;
    const acc_t* z;
    const acc_t* q;
    if constexpr (kConvert) {
      at::vec::convert(z_in, z_buf, V);
      at::vec::convert(q_in, q_buf, V);
      z = z_buf;
      q = q_buf;
    } else {
      z = z_in;
      q = q_in;
    }
    const acc_t m = row_max(z, V);
    const acc_t m_ref = m == -INFINITY ? acc_t(0) : m;
    at::vec::map([m_ref](Vec x) { return ad_exp(x - Vec(m_ref)); }, e, z, V);
    const acc_t S = row_sum(e, V);
    const acc_t Q = row_sum(q, V);
    const acc_t QZ = at::vec::map2_reduce_all<acc_t>([](Vec qq, Vec zz) { return soft_ce_qz(qq, zz); },
                                                     [](Vec x, Vec y) { return x + y; }, q, z, V);
    const acc_t lse = m + ad_log(S);
    loss[n] = soft_ce_value(lse, Q, QZ);
    if (gz_out) {
      acc_t* gz = kConvert ? gz_buf : reinterpret_cast<acc_t*>(gz_out);
      const acc_t invS = acc_t(1) / S;
      at::vec::map2([invS, Q, gscale](Vec ee, Vec qq) {
        return Vec(gscale) * soft_ce_grad_logit(ee * Vec(invS), Vec(Q), qq);
      }, gz, e, q, V);
      if constexpr (kConvert) at::vec::convert(gz, gz_out, V);
    }
    if (gq_out) {
      acc_t* gq = kConvert ? gq_buf : reinterpret_cast<acc_t*>(gq_out);
      at::vec::map2([lse, gscale](Vec qq, Vec zz) { return Vec(gscale) * soft_ce_grad_target(qq, zz, Vec(lse)); },
                    gq, q, z, V);
      if constexpr (kConvert) at::vec::convert(gq, gq_out, V);
    }
  }
}

template <typename scalar_t>
void ada_lab_rows_impl(const AdaLabArgs& a, int64_t begin, int64_t end) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Vec = Vectorized<acc_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t V = a.V;
  const acc_t invT = acc_t(1) / static_cast<acc_t>(a.temperature);
  const acc_t gamma = static_cast<acc_t>(a.gamma), bias = static_cast<acc_t>(a.bias);
  const acc_t max_weight = static_cast<acc_t>(a.max_weight);
  std::unique_ptr<acc_t[]> buffer(new acc_t[V * (kConvert ? 3 : 1)]);
  acc_t* e = buffer.get();
  acc_t* za_buf = kConvert ? e + V : nullptr;
  acc_t* zb_buf = kConvert ? e + 2 * V : nullptr;
  auto* weight = static_cast<acc_t*>(a.weight);
  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* za_in = static_cast<const scalar_t*>(a.logits_adv) + n * V;
    const scalar_t* zb_in = static_cast<const scalar_t*>(a.logits_aa) + n * V;
    scalar_t* out = static_cast<scalar_t*>(a.out) + n * V;
    const int64_t y = a.target[n];
    const acc_t* za;
    const acc_t* zb;
    if constexpr (kConvert) {
      at::vec::convert(za_in, za_buf, V);
      at::vec::convert(zb_in, zb_buf, V);
      za = za_buf;
      zb = zb_buf;
    } else {
      za = za_in;
      zb = zb_in;
    }
    // margin at x_adv: p_y - max_{k != y} p_k
    const acc_t ma = row_max(za, V);
    const acc_t ma_ref = ma == -INFINITY ? acc_t(0) : ma;
    const acc_t Sa = at::vec::map_reduce_all<acc_t>([ma_ref](Vec x) { return ad_exp(x - Vec(ma_ref)); },
                                                    [](Vec x, Vec y2) { return x + y2; }, za, V);
    const acc_t lse_a = ma + ad_log(Sa);
    const acc_t other = ad_max(row_max(za, y), row_max(za + y + 1, V - y - 1));
    const acc_t margin = ad_exp(za[y] - lse_a) - ad_exp(other - lse_a);
    const acc_t w = ada_lab_weight(margin, gamma, bias, max_weight);
    // q = softmax(z_aa / T)
    const acc_t mb = row_max(zb, V);
    const acc_t mb_ref = mb == -INFINITY ? acc_t(0) : mb;
    at::vec::map([mb_ref, invT](Vec x) { return ad_exp((x - Vec(mb_ref)) * Vec(invT)); }, e, zb, V);
    const acc_t Sb = row_sum(e, V);
    const acc_t scale = acc_t(1) / Sb;
    acc_t* o = kConvert ? e : nullptr;  // low precision: the targets overwrite e in fp32, then convert
    acc_t* dst = kConvert ? o : reinterpret_cast<acc_t*>(out);
    const acc_t q_y = e[y] * scale;
    at::vec::map([w, scale](Vec x) { return ada_lab_target(Vec(0), Vec(w), x * Vec(scale), Vec(1)); }, dst, e, V);
    dst[y] = ada_lab_target(acc_t(1), w, q_y, acc_t(1));
    if constexpr (kConvert) at::vec::convert(dst, out, V);
    weight[n] = w;
  }
}

void soft_ce_rows(const SoftCeArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::Float: return soft_ce_rows_impl<float>(a, begin, end);
    case DType::Double: return soft_ce_rows_impl<double>(a, begin, end);
    case DType::Half: return soft_ce_rows_impl<c10::Half>(a, begin, end);
    case DType::BFloat16: return soft_ce_rows_impl<c10::BFloat16>(a, begin, end);
  }
}

void ada_lab_rows(const AdaLabArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::Float: return ada_lab_rows_impl<float>(a, begin, end);
    case DType::Double: return ada_lab_rows_impl<double>(a, begin, end);
    case DType::Half: return ada_lab_rows_impl<c10::Half>(a, begin, end);
    case DType::BFloat16: return ada_lab_rows_impl<c10::BFloat16>(a, begin, end);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace adkernels::cpu
