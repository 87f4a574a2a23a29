// The FGSM / PGD step formulas, written once for float, double (CPU and CUDA) and, in the CPU
// kernels, at::vec::Vectorized (its overloads of ad_min / ad_sign / ad_max are declared before
// this header is included, as vec_math.h is before kd_math.h).
//
//   sign_step   x' = box(x + step * sign(g))
//   pgd linf    x' = box(clamp(x_adv + step * sign(g), x_nat - eps, x_nat + eps))
//   pgd l2      u = g / ||g||_2 (0 if ||g|| = 0), delta = (x_adv + step * u) - x_nat,
//               x' = box(x_nat + delta * min(1, eps / ||delta||_2))
// with box(v) = min(max(v, lo), hi) (torch.clamp's order: a NaN bound is not special-cased),
// sign(0) = 0 and sign(NaN) = 0 (torch.sign on CPU). The eps-ball projection comes before the
// box clamp, as in every reference PGD (Madry et al.; advertorch; torchattacks).
//
// The linf bounds of the ball are x_nat - eps and x_nat + eps rounded in the working precision,
// exactly as the reference computes them, so linf / sign steps are bit-identical to it.
//
// l2 needs two per-sample norms; both come out of ONE reduction over the sample:
//   gg = ||g||^2,  dg = <d, g>,  dd = ||d||^2      with d = x_adv - x_nat
//   ||delta||^2 = dd + 2 c dg + c^2 gg             with c = step / ||g||
// (clamped at 0: when delta nearly cancels, the rounding error can make it slightly negative;
// the scale is 1 there anyway unless eps is of the order of that error).
#pragma once

#include <adkernels/math.h>
#include <adkernels/philox.h>

namespace adkernels {
inline namespace ADK_ISA {

C10_HOST_DEVICE inline float ad_min(float a, float b) { return a < b ? a : b; }
C10_HOST_DEVICE inline double ad_min(double a, double b) { return a < b ? a : b; }
// (g > 0) - (g < 0): 0 for +-0 and NaN, as torch.sign on CPU.
C10_HOST_DEVICE inline float ad_sign(float g) { return static_cast<float>((g > 0.f) - (g < 0.f)); }
C10_HOST_DEVICE inline double ad_sign(double g) { return static_cast<double>((g > 0.0) - (g < 0.0)); }
C10_HOST_DEVICE inline float ad_sqrt(float x) { return ::sqrtf(x); }
C10_HOST_DEVICE inline double ad_sqrt(double x) { return ::sqrt(x); }

// torch.clamp(v, lo, hi) for tensor bounds: min(max(v, lo), hi).
template <typename V>
C10_HOST_DEVICE inline V ad_clamp(V v, V lo, V hi) {
  return ad_min(ad_max(v, lo), hi);
}

template <typename V>
C10_HOST_DEVICE inline V sign_step_value(V x, V g, V step, V lo, V hi) {
  return ad_clamp(x + step * ad_sign(g), lo, hi);
}

template <typename V>
C10_HOST_DEVICE inline V pgd_linf_value(V x_adv, V g, V x_nat, V step, V eps, V lo, V hi) {
  const V v = x_adv + step * ad_sign(g);
  return ad_clamp(ad_clamp(v, x_nat - eps, x_nat + eps), lo, hi);
}

// coef = step / ||g|| (0 when ||g|| = 0), scale = min(1, eps / ||delta||).
template <typename V>
C10_HOST_DEVICE inline V pgd_l2_value(V x_adv, V g, V x_nat, V coef, V scale, V lo, V hi) {
  const V delta = (x_adv + coef * g) - x_nat;
  return ad_clamp(x_nat + delta * scale, lo, hi);
}

// Per-element contributions to the l2 reduction (gg, dg, dd).
template <typename V>
C10_HOST_DEVICE inline void pgd_l2_terms(V x_adv, V g, V x_nat, V& gg, V& dg, V& dd) {
  const V d = x_adv - x_nat;
  gg = gg + g * g;
  dg = dg + d * g;
  dd = dd + d * d;
}

// Per-sample coefficients of the l2 step from the reduced sums.
template <typename T>
C10_HOST_DEVICE inline void pgd_l2_coefs(T gg, T dg, T dd, T step, T eps, T& coef, T& scale) {
  const T gnorm = ad_sqrt(gg);
  coef = gnorm > T(0) ? step / gnorm : T(0);
  T nn = dd + T(2) * coef * dg + coef * coef * gg;
  nn = nn > T(0) ? nn : T(0);
  const T dnorm = ad_sqrt(nn);
  scale = dnorm > eps ? eps / dnorm : T(1);
}

// ---- random_start -------------------------------------------------------------------------------
//   x' = box(x + scale * t)
//   linf: t = 2u - 1 per element (u from philox.h), scale = eps: uniform in [-eps, eps].
//   l2:   t = Box-Muller normals of the same stream (lanes (0, 1) and (2, 3) of a counter are
//         pairs), scale = eps * u_r^(1/D) / ||t||_2 per sample, u_r = lane 0 of counter
//         offset + kRadiusStream + n: a Gaussian direction and radius eps * u_r^(1/D) is uniform
//         in the D-dimensional l2 ball. One reduction (||t||^2) plus one pass that regenerates t.
// t and the scale are computed in x's precision (u converted first), in the reference's order.

C10_HOST_DEVICE inline float ad_cos(float x) { return ::cosf(x); }
C10_HOST_DEVICE inline double ad_cos(double x) { return ::cos(x); }
C10_HOST_DEVICE inline float ad_sin(float x) { return ::sinf(x); }
C10_HOST_DEVICE inline double ad_sin(double x) { return ::sin(x); }

constexpr uint64_t kRadiusStream = uint64_t(1) << 62;

template <typename V>
C10_HOST_DEVICE inline V random_start_value(V x, V t, V scale, V lo, V hi) {
  return ad_clamp(x + scale * t, lo, hi);
}

template <typename T>
C10_HOST_DEVICE inline T random_linf_noise(uint32_t bits) {
  return T(2) * static_cast<T>(philox_uniform(bits)) - T(1);
}

// The normal of output lane `lane` (0..3) of one Philox call.
template <typename T>
C10_HOST_DEVICE inline T random_normal_lane(const uint32_t bits[4], int lane) {
  const int p = lane & 2;
  const T r = ad_sqrt(T(-2) * ad_log(static_cast<T>(philox_uniform(bits[p]))));
  const T th = T(6.283185307179586) * static_cast<T>(philox_uniform(bits[p + 1]));
  return (lane & 1) ? r * ad_sin(th) : r * ad_cos(th);
}

// Noise t of element e (the row-major index in x): linf or l2.
template <typename T, bool kL2>
C10_HOST_DEVICE inline T random_start_noise(uint64_t seed, uint64_t offset, uint64_t e) {
  uint32_t bits[4];
  philox4x32_10(seed, offset + (e >> 2), bits);
  if constexpr (kL2) {
    return random_normal_lane<T>(bits, static_cast<int>(e & 3));
  } else {
    return random_linf_noise<T>(bits[e & 3]);
  }
}

// l2 scale of sample n from ss = ||t_n||^2 over its D elements.
template <typename T>
C10_HOST_DEVICE inline T random_l2_scale(uint64_t seed, uint64_t offset, int64_t n, int64_t D, T ss, T eps) {
  uint32_t bits[4];
  philox4x32_10(seed, offset + kRadiusStream + static_cast<uint64_t>(n), bits);
  const T root = ad_exp(ad_log(static_cast<T>(philox_uniform(bits[0]))) / static_cast<T>(D));
  return ss > T(0) ? eps * root / ad_sqrt(ss) : T(0);
}

}  // namespace ADK_ISA
}  // namespace adkernels
