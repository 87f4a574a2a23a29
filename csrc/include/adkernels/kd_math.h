// The KD-loss formulas, written once for float, double and at::vec::Vectorized.
//
// Per row, with s = z_s / T, t = z_t / T, log p = x - lse(x):
//   kl          D = sum p_t (log p_t - log p_s)
//   reverse_kl  D = sum p_s (log p_s - log p_t)
//   jsd         D = beta KL(p_t || M) + (1 - beta) KL(p_s || M),  M = beta p_t + (1-beta) p_s
// Each divergence is reduced into two sums, acc_t (the p_t-weighted one) and acc_s, and
// its gradients w.r.t. s and t are functions of the element and of (acc_t, acc_s):
//   kl:  ds = p_s - p_t                         dt = p_t ((lpt - lps) - acc_t)
//   rkl: ds = p_s ((lps - lpt) - acc_s)         dt = p_t - p_s
//   jsd: ds = (1-b) p_s ((lps - lm) - acc_s)    dt = b p_t ((lpt - lm) - acc_t)
// The loss row is  alpha T^2 D + (1 - alpha) CE_ls  and d/dz = (1/T) d/ds, so the
// divergence gradient w.r.t. logits is alpha * T * ds.
#pragma once

#include <adkernels/math.h>

namespace adkernels {
inline namespace ADK_ISA {

enum Divergence : int64_t { KL = 0, REVERSE_KL = 1, JSD = 2 };

// Per-element contributions to (acc_t, acc_s).
template <typename V>
C10_HOST_DEVICE inline void kd_div_terms(int64_t div, V ps, V pt, V lps, V lpt, V beta,
                                         V one, V& acc_t, V& acc_s) {
  if (div == KL) {
    acc_t = acc_t + where_pos(pt, pt * (lpt - lps));
  } else if (div == REVERSE_KL) {
    acc_s = acc_s + where_pos(ps, ps * (lps - lpt));
  } else {
    // Where M underflows to 0 (p of order 1e-45) the terms are dropped: log M would be -inf.
    V mix = beta * pt + (one - beta) * ps;
    V lm = ad_log(mix);
    acc_t = acc_t + where_pos(mix, where_pos(pt, pt * (lpt - lm)));
    acc_s = acc_s + where_pos(mix, where_pos(ps, ps * (lps - lm)));
  }
}

// Divergence value from the two sums.
template <typename T>
C10_HOST_DEVICE inline T kd_div_value(int64_t div, T acc_t, T acc_s, T beta) {
  if (div == KL) return acc_t;
  if (div == REVERSE_KL) return acc_s;
  return beta * acc_t + (T(1) - beta) * acc_s;
}

// Gradients of D w.r.t. the scaled logits s (ds) and t (dt) of one element.
template <typename V>
C10_HOST_DEVICE inline void kd_div_grads(int64_t div, V ps, V pt, V lps, V lpt, V beta, V one,
                                         V acc_t, V acc_s, V& ds, V& dt) {
  if (div == KL) {
    ds = ps - pt;
    dt = where_pos(pt, pt * ((lpt - lps) - acc_t));
  } else if (div == REVERSE_KL) {
    ds = where_pos(ps, ps * ((lps - lpt) - acc_s));
    dt = pt - ps;
  } else {
    V mix = beta * pt + (one - beta) * ps;
    V lm = ad_log(mix);
    ds = (one - beta) * where_pos(ps, ps * (where_pos(mix, lps - lm) - acc_s));
    dt = beta * where_pos(pt, pt * (where_pos(mix, lpt - lm) - acc_t));
  }
}

// Label-smoothed cross entropy at temperature 1 from lse(z), z_y and sum(z):
//   CE = lse - (1 - ls) z_y - ls * sum(z) / V
template <typename T>
C10_HOST_DEVICE inline T ce_value(T lse, T z_target, T z_sum, T ls, int64_t V) {
  T v = lse - (T(1) - ls) * z_target;
  if (ls > T(0)) v = v - ls * z_sum / T(V);
  return v;
}

}  // namespace ADK_ISA
}  // namespace adkernels
