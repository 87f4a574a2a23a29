// at::vec::Vectorized overloads of the helpers in math.h, so the templates in kd_math.h
// run on SIMD registers in the CPU kernels. CPU only.
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <adkernels/math.h>

namespace adkernels {
inline namespace ADK_ISA {

template <typename T>
inline at::vec::Vectorized<T> ad_exp(const at::vec::Vectorized<T>& x) { return x.exp(); }
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

}  // namespace ADK_ISA
}  // namespace adkernels
