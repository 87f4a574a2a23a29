// at::vec::Vectorized overloads of the helpers in math.h, so the templates in kd_math.h
// run on SIMD registers in the CPU kernels. CPU only.
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <adkernels/math.h>

#include <type_traits>

namespace adkernels {
inline namespace ADK_ISA {

// float: ATen's exp_u20 (the one its softmax kernels use): ~1e-6 relative error, ~1.7x the
// throughput of Sleef's u10 exp here, and exactly 0 below about -87 (no denormals, so the
// p > 0 guards see a clean 0). double keeps the full-precision exp (gradcheck).
template <typename T>
inline at::vec::Vectorized<T> ad_exp(const at::vec::Vectorized<T>& x) {
  if constexpr (std::is_same_v<T, float>) {
    return x.exp_u20();
  } else {
    return x.exp();
  }
}
template <typename T>
inline at::vec::Vectorized<T> ad_log(const at::vec::Vectorized<T>& x) { return x.log(); }
template <typename T>
inline at::vec::Vectorized<T> ad_max(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return at::vec::maximum(a, b);
}
template <typename T>
inline at::vec::Vectorized<T> where_pos(const at::vec::Vectorized<T>& p, const at::vec::Vectorized<T>& x) {
  using Vec = at::vec::Vectorized<T>;
  return Vec::blendv(Vec(T(0)), x, p > Vec(T(0)));
}

template <typename T>
inline at::vec::Vectorized<T> where_live(const at::vec::Vectorized<T>& z, const at::vec::Vectorized<T>& x,
                                         const at::vec::Vectorized<T>& y) {
  using Vec = at::vec::Vectorized<T>;
  return Vec::blendv(y, x, z > Vec(T(-INFINITY)));
}

}  // namespace ADK_ISA
}  // namespace adkernels
