// Scalar math shared by the CPU and CUDA kernels (host and device).
// Overloads for at::vec::Vectorized live in vec_math.h (CPU only), so the formulas in
// kd_math.h are written once, as templates over the value type.
#pragma once

#include <c10/macros/Macros.h>
#include <cmath>
#include <cstdint>

// Each per-ISA CPU translation unit gets its own copy of these inline functions (an inline
// namespace named after CPU_CAPABILITY), so the linker never merges an AVX-512 copy into
// code that runs on a CPU without it.
#if defined(CPU_CAPABILITY)
#define ADK_ISA CPU_CAPABILITY
#else
#define ADK_ISA generic
#endif

namespace adkernels {
inline namespace ADK_ISA {

C10_HOST_DEVICE inline float ad_exp(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double ad_exp(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float ad_log(float x) { return ::logf(x); }
C10_HOST_DEVICE inline double ad_log(double x) { return ::log(x); }
C10_HOST_DEVICE inline float ad_max(float a, float b) { return a > b ? a : b; }
C10_HOST_DEVICE inline double ad_max(double a, double b) { return a > b ? a : b; }
// p > 0 ? x : 0 — the 0 * log 0 = 0 convention (x may be NaN or inf where p == 0).
C10_HOST_DEVICE inline float where_pos(float p, float x) { return p > 0.f ? x : 0.f; }
C10_HOST_DEVICE inline double where_pos(double p, double x) { return p > 0.0 ? x : 0.0; }

// Merge two (max, sum of exp(x - max)) partial states of an online softmax.
template <typename T>
C10_HOST_DEVICE inline void online_merge(T& m, T& s, T m2, T s2) {
  T mn = ad_max(m, m2);
  if (mn == -INFINITY) return;  // both empty / all -inf
  s = s * ad_exp(m - mn) + s2 * ad_exp(m2 - mn);
  m = mn;
}

// Adds element x to a running (max m, sum of exp(. - m)): the same result as
// online_merge(m, s, x, 1) with one exp instead of two. Elements at -inf add nothing.
template <typename T>
C10_HOST_DEVICE inline void online_add(T& m, T& s, T x) {
  if (x > m) {
    s = s * ad_exp(m - x) + T(1);
    m = x;
  } else if (x != -INFINITY) {
    s = s + ad_exp(x - m);
  }
}

// z > -inf ? x : y — selects by whether a logit is live (-inf marks a masked entry).
C10_HOST_DEVICE inline float where_live(float z, float x, float y) { return z > -INFINITY ? x : y; }
C10_HOST_DEVICE inline double where_live(double z, double x, double y) { return z > -INFINITY ? x : y; }

}  // namespace ADK_ISA
}  // namespace adkernels
