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

// ---- soft-target cross entropy (soft_ce family) -------------------------------------------
// L = -sum_k q_k log p_k = Q lse - sum_k q_k z_k, with Q = sum_k q_k and p = softmax(z); the
// q_k z_k terms use 0 * z = 0 where q_k = 0 (also for z_k = -inf).
//   dL/dz_k = p_k Q - q_k        dL/dq_k = lse - z_k = -log p_k (0 where q_k = 0 and z_k = -inf)
template <typename V>
C10_HOST_DEVICE inline V soft_ce_qz(V q, V z) { return where_pos(q, q * z); }
template <typename T>
C10_HOST_DEVICE inline T soft_ce_value(T lse, T q_sum, T qz_sum) { return q_sum * lse - qz_sum; }
template <typename V>
C10_HOST_DEVICE inline V soft_ce_grad_logit(V p, V q_sum, V q) { return p * q_sum - q; }
// dL/dq_k = lse - z_k; where z_k = -inf it is inf for q_k > 0 and 0 for q_k = 0 (the 0 log 0
// convention, as the reference's autograd gives).
template <typename V>
C10_HOST_DEVICE inline V soft_ce_grad_target(V q, V z, V lse) {
  V d = lse - z;
  return where_live(z, d, where_pos(q, d));
}

// ---- ADA-Lab-style label refinement --------------------------------------------------------
// margin m = p_y - max_{k != y} p_k; weight w = max_weight * sigmoid(-gamma (m - bias)),
// written 1 / (1 + exp(gamma (m - bias))) (no overflow: exp -> inf gives w = 0).
template <typename T>
C10_HOST_DEVICE inline T ada_lab_weight(T margin, T gamma, T bias, T max_weight) {
  return max_weight / (T(1) + ad_exp(gamma * (margin - bias)));
}
// Refined target entry: (1 - w) onehot_k + w q_k.
template <typename V>
C10_HOST_DEVICE inline V ada_lab_target(V onehot, V w, V q, V one) {
  return (one - w) * onehot + w * q;
}

// ---- KL over a teacher's top-k support (topk_kd family) -------------------------------------
// One term of KL(q || u) = sum q (log q - log u), with 0 log 0 = 0.
template <typename V>
C10_HOST_DEVICE inline V kl_term(V q, V lq, V lu) { return where_pos(q, q * (lq - lu)); }
// The teacher's mass outside its top-k (clamped at 0: rounding can make sum exp(lt) exceed 1).
template <typename T>
C10_HOST_DEVICE inline T topk_teacher_tail(T support_mass) {
  T r = T(1) - support_mass;
  return r > T(0) ? r : T(0);
}
// log of the student's tail sum exp(z_j - m) over columns outside the support: total - support
// (clamped at 0, then log 0 = -inf: an empty tail).
template <typename T>
C10_HOST_DEVICE inline T topk_student_tail_log(T m, T sum_all, T sum_support) {
  T r = sum_all - sum_support;
  return r > T(0) ? m + ad_log(r) : T(-INFINITY);
}

}  // namespace ADK_ISA
}  // namespace adkernels
