// CPU sparse-teacher KD kernel (topk_kd_fwd), compiled once per instruction set like
// kd_kernels.cpp. Formulas: kd_math.h (kl_term, topk_teacher_tail, topk_student_tail_log,
// ce_value). Contract: csrc/ops.cpp, adkernels/reference/topk_kd.py.
//
// Per row (row buffers stay in cache; the logits are read from memory once):
//   A  load (bf16/fp16 converted once into fp32), max m of z (sum of z for label smoothing)
//   B  e_j = exp(z_j - m) stored, S = sum e (the CE's lse and the bucket's tail)
//      (skipped when neither the CE nor the bucket needs the full row: renorm with alpha = 1)
//   C  the k support columns: S_supp, the bins' maxima and sums of exp((x - max) / T) (student
//      z_i, teacher lt); bucket: the support entries of e are zeroed and the rest summed, so the student's tail
//      mass is a sum of the tail's own terms (no total - support cancellation)
//   D  dense gradient: CE part and the tail bin's share e_j / S_tail, then the k support
//      columns overwritten with their bin gradient alpha T (u - q) + CE part, with the KL sum
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <adkernels/vec_math.h>  // before kd_math.h: its templates must see these overloads
#include <adkernels/kd_math.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <memory>
#include <type_traits>

#include "topk_kd_args.h"

namespace adkernels::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename scalar_t>
void topk_kd_rows_impl(const TopkKdArgs& a, int64_t begin, int64_t end) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Vec = Vectorized<acc_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t V = a.V, K = a.K;
  const acc_t T = static_cast<acc_t>(a.temperature), invT = acc_t(1) / T;
  const acc_t alpha = static_cast<acc_t>(a.alpha), ls = static_cast<acc_t>(a.label_smoothing);
  const bool need_div = alpha > acc_t(0) && K > 0;
  const bool need_ce = alpha < acc_t(1) && a.target != nullptr;
  const bool bucket = need_div && a.tail == 1 && K < V;
  const bool need_full = need_ce || bucket;  // passes A and B over the whole row
  const acc_t kce = need_ce ? acc_t(1) - alpha : acc_t(0), kdiv = alpha * T;
  const acc_t smooth = ls / acc_t(V);

  std::unique_ptr<acc_t[]> buffer(new acc_t[V + (kConvert ? 2 * V : 0) + K]);
  acc_t* e = buffer.get();
  acc_t* z_buf = kConvert ? e + V : nullptr;
  acc_t* g_buf = kConvert ? z_buf + V : nullptr;
  acc_t* e_support = e + V + (kConvert ? 2 * V : 0);  // e at the support, before zeroing

  auto* loss = static_cast<acc_t*>(a.loss);
  const auto* lt_all = static_cast<const acc_t*>(a.teacher_logprobs);
  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* z_in = static_cast<const scalar_t*>(a.student) + n * V;
    scalar_t* g_out = a.grad_student ? static_cast<scalar_t*>(a.grad_student) + n * V : nullptr;
    const int64_t* ids = a.ids + n * K;
    const acc_t* lt = lt_all + n * K;
    const int64_t y = a.target ? a.target[n] : -1;
    if (a.target && y == a.ignore_index) {
      loss[n] = acc_t(0);
      if (g_out) std::memset(static_cast<void*>(g_out), 0, sizeof(scalar_t) * V);
      continue;
    }
    const acc_t* z;
    if constexpr (kConvert) {
      at::vec::convert(z_in, z_buf, V);
      z = z_buf;
    } else {
      z = z_in;
    }
    acc_t* g = !g_out ? nullptr : kConvert ? g_buf : reinterpret_cast<acc_t*>(g_out);

    // A, B
    acc_t m = 0, S = 0, zsum = 0;
    if (need_full) {
      m = at::vec::reduce_all<acc_t>([](Vec& x, Vec& y2) { return at::vec::maximum(x, y2); }, z, V);
      const acc_t m_ref = m == -INFINITY ? acc_t(0) : m;
      at::vec::map([m_ref](Vec x) { return ad_exp(x - Vec(m_ref)); }, e, z, V);
      S = at::vec::reduce_all<acc_t>([](Vec& x, Vec& y2) { return x + y2; }, e, V);
      if (need_ce && ls > acc_t(0)) zsum = at::vec::reduce_all<acc_t>([](Vec& x, Vec& y2) { return x + y2; }, z, V);
    }
    const acc_t lse1 = m + ad_log(S);

    // C: support bins. Bin log-probabilities at T are ((x - max) / T) - log sum exp((. - max) / T),
    // scaled after subtracting the max, so that large logits keep their differences exact.
    acc_t mu = -INFINITY, mq = -INFINITY, su = 0, sq = 0, q_mass = 0, tail_log = -INFINITY, lq_tail = -INFINITY;
    acc_t s_tail = 0;  // sum of e over the columns outside the support (bucket)
    if (need_div) {
      acc_t s_supp = 0;
      for (int64_t k = 0; k < K; ++k) {
        mu = ad_max(mu, z[ids[k]]);
        mq = ad_max(mq, lt[k]);
        q_mass += ad_exp(lt[k]);
        if (need_full) {
          e_support[k] = e[ids[k]];
          s_supp += e_support[k];
        }
      }
      if (bucket) {
        for (int64_t k = 0; k < K; ++k) e[ids[k]] = acc_t(0);
        s_tail = at::vec::reduce_all<acc_t>([](Vec& x, Vec& y2) { return x + y2; }, e, V);
        tail_log = topk_student_tail_log(m, s_tail, acc_t(0));
        lq_tail = ad_log(topk_teacher_tail(q_mass));
        mu = ad_max(mu, tail_log);
        mq = ad_max(mq, lq_tail);
      }
      if (mu == -INFINITY) mu = 0;
      if (mq == -INFINITY) mq = 0;
      for (int64_t k = 0; k < K; ++k) {
        su += ad_exp((z[ids[k]] - mu) * invT);
        sq += ad_exp((lt[k] - mq) * invT);
      }
      if (bucket) {
        su += ad_exp((tail_log - mu) * invT);
        sq += ad_exp((lq_tail - mq) * invT);
      }
    }
    const acc_t log_su = ad_log(su), log_sq = ad_log(sq);

    // D: dense gradient (CE and the tail bin), then the support columns
    acc_t kl = 0;
    acc_t tail_coef = 0;  // d loss / d z_j = tail_coef * e_j on tail columns
    if (bucket) {
      const acc_t lu = (tail_log - mu) * invT - log_su, lq = (lq_tail - mq) * invT - log_sq;
      const acc_t q = ad_exp(lq);
      kl += kl_term(q, lq, lu);
      if (s_tail > acc_t(0)) tail_coef = kdiv * (ad_exp(lu) - q) / s_tail;
    }
    if (g) {
      if (need_full) {
        const acc_t c = kce / S + tail_coef, d = kce * smooth;
        at::vec::map([c, d](Vec x) { return Vec(c) * x - Vec(d); }, g, e, V);
      } else {
        std::memset(static_cast<void*>(g), 0, sizeof(acc_t) * V);
      }
    }
    if (need_div) {
      for (int64_t k = 0; k < K; ++k) {
        const acc_t lu = (z[ids[k]] - mu) * invT - log_su, lq = (lt[k] - mq) * invT - log_sq;
        const acc_t q = ad_exp(lq);
        kl += kl_term(q, lq, lu);
        if (g) {
          acc_t gk = kdiv * (ad_exp(lu) - q);
          if (need_ce) gk += kce * (e_support[k] / S - smooth);
          g[ids[k]] = gk;
        }
      }
    }
    if (g && need_ce) g[y] -= kce * (acc_t(1) - ls);
    if constexpr (kConvert) {
      if (g) at::vec::convert(g, g_out, V);
    }

    acc_t row = 0;
    if (need_div) row += alpha * T * T * kl;
    if (need_ce) row += kce * ce_value(lse1, z[y], zsum, ls, V);
    loss[n] = row;
  }
}

void topk_kd_rows(const TopkKdArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::Float: return topk_kd_rows_impl<float>(a, begin, end);
    case DType::Double: return topk_kd_rows_impl<double>(a, begin, end);
    case DType::Half: return topk_kd_rows_impl<c10::Half>(a, begin, end);
    case DType::BFloat16: return topk_kd_rows_impl<c10::BFloat16>(a, begin, end);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace adkernels::cpu
