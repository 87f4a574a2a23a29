// Discriminator / generator loss formulas (adversarial distillation, GAN loss zoo), written once
// for float, double (CPU and CUDA) and, through the adv_* overloads that
// csrc/cpu/adversarial_kernels.cpp declares before including this header, at::vec::Vectorized.
//
// Three-way discriminator over sources REAL = 0, STUDENT = 1, TEACHER = 2. A row holds logits z
// and a one-hot source indicator m (m_j = 1 for the row's source). The leaves' log-probabilities:
//   softmax      [z0, z1, z2]:  L_j = z_j - lse(z)                       dL_j/dz_k = d_jk - p_k
//   binary_tree  [a, b]:        L_r = log s(a)  = -sp(-a)                 dL_r = ( s(-a),  0    )
//                               L_s = log s(-a) + log s(b)  = -sp(a) - sp(-b)
//                                                                         dL_s = (-s(a),  s(-b))
//                               L_t = log s(-a) + log s(-b) = -sp(a) - sp(b)
//                                                                         dL_t = (-s(a), -s(b))
//   (s = sigmoid, sp = softplus). Row loss, scaled by c (weight / per-source count):
//   mode 0 discriminator   l = -sum_j m_j L_j           (= -log D_src)
//   mode 1 minimax gen.    l = +sum_j m_j L_j           (= +log D_src)
//   mode 2 non-saturating  l = -lse_{j != src} L_j      (= -log(1 - D_src): 1 - D_src is the sum
//                          of the other two leaves, so no log1p(-exp(.)) cancellation anywhere)
// The gradient is  g_k = c * sum_j u_j dL_j/dz_k  with u = -m, +m, or -q (q = softmax of the
// other leaves' L, 0 at the source).
//
// Binary (real vs fake) losses on raw scores, per element (y = real label, 1 unless one-sided
// label smoothing), see adkernels/ops/adversarial.py for the table.
#pragma once

#include <adkernels/math.h>

namespace adkernels {
inline namespace ADK_ISA {

C10_HOST_DEVICE inline float adv_log1p(float x) { return ::log1pf(x); }
C10_HOST_DEVICE inline double adv_log1p(double x) { return ::log1p(x); }
C10_HOST_DEVICE inline float adv_abs(float x) { return ::fabsf(x); }
C10_HOST_DEVICE inline double adv_abs(double x) { return ::fabs(x); }
// m != 0 ? a : b
C10_HOST_DEVICE inline float adv_where(float m, float a, float b) { return m != 0.f ? a : b; }
C10_HOST_DEVICE inline double adv_where(double m, double a, double b) { return m != 0.0 ? a : b; }

enum AdvParam : int64_t { ADV_SOFTMAX = 0, ADV_BINARY_TREE = 1 };
enum AdvMode : int64_t { ADV_DISCRIMINATOR = 0, ADV_MINIMAX = 1, ADV_NONSAT = 2 };
enum AdvKind : int64_t { ADV_BCE = 0, ADV_HINGE = 1, ADV_LSGAN = 2, ADV_WGAN = 3, ADV_RELATIVISTIC = 4 };
// Role of one element in a binary loss (relativistic: the element is the pair difference r - f).
enum AdvRole : int64_t { ADV_D_REAL = 0, ADV_D_FAKE = 1, ADV_G_MINIMAX = 2, ADV_G_NONSAT = 3 };

// softplus(x) = log(1 + exp(x)), stable for any finite x.
template <typename V>
C10_HOST_DEVICE inline V adv_softplus(V x) {
  return ad_max(x, V(0)) + adv_log1p(ad_exp(V(0) - adv_abs(x)));
}

// sigmoid(x) = 1 / (1 + exp(-x)); exp overflow to inf gives the exact limit 0.
template <typename V>
C10_HOST_DEVICE inline V adv_sigmoid(V x) {
  return V(1) / (V(1) + ad_exp(V(0) - x));
}

// softplus(+-x) and sigmoid(+-x) from one exp and one log1p: with e = exp(-|x|),
// sp(+-x) = max(+-x, 0) + log1p(e), s(+-x) = e / (1 + e) + [+-x > 0] (1 - e) / (1 + e)
// (each sigmoid is 1/(1+e) or e/(1+e): no 1 - s cancellation).
template <typename V>
C10_HOST_DEVICE inline void adv_sp_sig(V x, V& sp_pos, V& sp_neg, V& sig, V& sig_neg) {
  const V e = ad_exp(V(0) - adv_abs(x));
  const V l = adv_log1p(e);
  const V inv = V(1) / (V(1) + e);
  const V small = e * inv, rest = (V(1) - e) * inv;
  sp_pos = ad_max(x, V(0)) + l;
  sp_neg = ad_max(V(0) - x, V(0)) + l;
  sig = small + where_pos(x, rest);
  sig_neg = small + where_pos(V(0) - x, rest);
}

// One row of the three-way loss: z[0..K) logits (K = 3 softmax, 2 binary tree), m the one-hot
// source indicator, c the row's scale. Writes the scaled loss and gradient g[0..K).
template <typename V>
C10_HOST_DEVICE inline void adv_source_row(int64_t param, int64_t mode, const V (&z)[3], const V (&m)[3], V c,
                                           V& loss, V (&g)[3]) {
  V L[3];
  V p[3];       // softmax: probabilities
  V sa(0), sna(0), sb(0), snb(0);  // binary tree: s(a), s(-a), s(b), s(-b)
  if (param == ADV_SOFTMAX) {
    const V mx = ad_max(ad_max(z[0], z[1]), z[2]);
    const V e0 = ad_exp(z[0] - mx), e1 = ad_exp(z[1] - mx), e2 = ad_exp(z[2] - mx);
    const V S = e0 + e1 + e2;
    const V logS = ad_log(S), inv = V(1) / S;
    // (z - max) - log S, not z - lse: lse rounds at the magnitude of z (1e4: steps of 1e-3)
    L[0] = (z[0] - mx) - logS;
    L[1] = (z[1] - mx) - logS;
    L[2] = (z[2] - mx) - logS;
    p[0] = e0 * inv;
    p[1] = e1 * inv;
    p[2] = e2 * inv;
  } else {
    V spa, spna, spb, spnb;
    adv_sp_sig(z[0], spa, spna, sa, sna);
    adv_sp_sig(z[1], spb, spnb, sb, snb);
    L[0] = V(0) - spna;
    L[1] = V(0) - spa - spnb;
    L[2] = V(0) - spa - spb;
  }
  V u[3];
  if (mode == ADV_NONSAT) {
    // lse over the two leaves other than the source: the source's leaf is pushed to -1e30
    // (finite, so no inf - inf), its exp is then exactly 0.
    const V big(1e30);
    const V o0 = L[0] - m[0] * big, o1 = L[1] - m[1] * big, o2 = L[2] - m[2] * big;
    const V mo = ad_max(ad_max(o0, o1), o2);
    const V f0 = ad_exp(o0 - mo), f1 = ad_exp(o1 - mo), f2 = ad_exp(o2 - mo);
    const V so = f0 + f1 + f2;
    const V lso = mo + ad_log(so), inv = V(1) / so;
    loss = c * (V(0) - lso);
    u[0] = V(0) - f0 * inv;
    u[1] = V(0) - f1 * inv;
    u[2] = V(0) - f2 * inv;
  } else {
    const V sgn = mode == ADV_DISCRIMINATOR ? V(-1) : V(1);
    loss = c * sgn * (adv_where(m[0], L[0], V(0)) + adv_where(m[1], L[1], V(0)) + adv_where(m[2], L[2], V(0)));
    u[0] = sgn * m[0];
    u[1] = sgn * m[1];
    u[2] = sgn * m[2];
  }
  if (param == ADV_SOFTMAX) {
    const V su = u[0] + u[1] + u[2];
    g[0] = c * (u[0] - p[0] * su);
    g[1] = c * (u[1] - p[1] * su);
    g[2] = c * (u[2] - p[2] * su);
  } else {
    g[0] = c * (u[0] * sna - (u[1] + u[2]) * sa);
    g[1] = c * (u[1] * snb - u[2] * sb);
    g[2] = V(0);
  }
}

// One element of a binary adversarial loss: x the score (relativistic: r - f), y the real label.
// loss / grad are d(term)/dx, unscaled.
//   bce           D real  y sp(-x) + (1 - y) sp(x)   grad s(x) - y
//                 D fake  sp(x)                      grad s(x)
//                 G mm    -sp(x)                     grad -s(x)
//                 G ns    sp(-x)                     grad s(x) - 1
//   hinge         D real  max(0, 1 - x)              grad -[x < 1]
//                 D fake  max(0, 1 + x)              grad [x > -1]
//                 G       -x                         grad -1
//   lsgan         D real  (x - y)^2 / 2              grad x - y
//                 D fake  x^2 / 2                    grad x
//                 G       (x - 1)^2 / 2              grad x - 1
//   wgan          D real  -x,  D fake  x,  G  -x
//   relativistic  D (x = r - f)  y sp(-x) + (1 - y) sp(x)   grad s(x) - y
//                 G (x = r - f)  sp(x) = -log s(f - r)       grad s(x)
template <typename V>
C10_HOST_DEVICE inline void adv_binary_term(int64_t kind, int64_t role, V x, V y, V& loss, V& grad) {
  if (kind == ADV_BCE || kind == ADV_RELATIVISTIC) {
    V sp, spn, s, sn;
    adv_sp_sig(x, sp, spn, s, sn);
    if (role == ADV_D_REAL) {
      loss = y * spn + (V(1) - y) * sp;
      grad = (V(1) - y) * s - y * sn;  // s - y, without the cancellation at y = 1
    } else if (role == ADV_D_FAKE || (kind == ADV_RELATIVISTIC && role == ADV_G_MINIMAX)) {
      loss = sp;
      grad = s;
    } else if (role == ADV_G_MINIMAX) {
      loss = V(0) - sp;
      grad = V(0) - s;
    } else {
      loss = spn;
      grad = V(0) - sn;  // s(x) - 1
    }
  } else if (kind == ADV_HINGE) {
    if (role == ADV_D_REAL) {
      loss = ad_max(V(1) - x, V(0));
      grad = where_pos(V(1) - x, V(-1));
    } else if (role == ADV_D_FAKE) {
      loss = ad_max(V(1) + x, V(0));
      grad = where_pos(V(1) + x, V(1));
    } else {
      loss = V(0) - x;
      grad = V(-1);
    }
  } else if (kind == ADV_LSGAN) {
    const V d = role == ADV_D_REAL ? x - y : role == ADV_D_FAKE ? x : x - V(1);
    loss = V(0.5) * d * d;
    grad = d;
  } else {  // wgan
    const V sgn = role == ADV_D_FAKE ? V(1) : V(-1);
    loss = sgn * x;
    grad = sgn;
  }
}

// ---- the fused ADIM generator step (adv_distill_fwd, csrc/ops.cpp) -------------------------
// Per row: y = Gumbel-Softmax sample of the generator's logits x (y_fwd: the sample D scores,
// the one-hot for hard; y_soft: the soft sample), scores s_k = sum_c y_fwd_c d_ck, the row's
// generator loss l(s) with a_k = dl/ds_k (adv_source_row). Chain rule over the label dimension:
//   dl/dd_ck = y_fwd_c a_k
//   dl/dy_c  = b_c = sum_k a_k d_ck
//   dl/dx_c  = y_soft_c (b_c - sum_j y_soft_j b_j) / tau      (Gumbel-Softmax backward)
// plus the KD term's gradient kd_scale * T * ds_c (kd_math.h) on x and kd_scale * T * dt_c on
// the other model's logits.

// b_c of one label from its K (2 or 3; d2 = 0 for K = 2) discriminator logits.
template <typename V>
C10_HOST_DEVICE inline V adv_distill_b(V a0, V a1, V a2, V d0, V d1, V d2) {
  return a0 * d0 + a1 * d1 + a2 * d2;
}

// dl/dx_c: the Gumbel-Softmax backward of b plus the KD gradient kd_g.
template <typename V>
C10_HOST_DEVICE inline V adv_distill_grad_gen(V y_soft, V b, V sb, V inv_tau, V kd_g) {
  return y_soft * (b - sb) * inv_tau + kd_g;
}

}  // namespace ADK_ISA
}  // namespace adkernels
