// Loop helpers of the per-ISA CPU kernels (included by *_kernels.cpp only): a row loop that
// runs one generic body on whole Vectorized registers and then on the scalar tail, typed loads
// and stores for both, and horizontal sums / maxima.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace adkernels::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename T>
struct Tag {};

// Runs f(Tag<Vectorized<acc>>{}, j) over full vectors, then f(Tag<acc>{}, j) over the tail.
template <typename acc_t, typename F>
inline void for_each_elem(int64_t V, F&& f) {
  using Vec = Vectorized<acc_t>;
  int64_t j = 0;
  for (; j + Vec::size() <= V; j += Vec::size()) f(Tag<Vec>{}, j);
  for (; j < V; ++j) f(Tag<acc_t>{}, j);
}

template <typename acc_t>
inline acc_t load(Tag<acc_t>, const acc_t* p) { return *p; }
template <typename acc_t>
inline Vectorized<acc_t> load(Tag<Vectorized<acc_t>>, const acc_t* p) { return Vectorized<acc_t>::loadu(p); }
template <typename acc_t>
inline void store(acc_t* p, acc_t v) { *p = v; }
template <typename acc_t>
inline void store(acc_t* p, const Vectorized<acc_t>& v) { v.store(p); }

template <typename acc_t>
inline acc_t hsum(acc_t v) { return v; }
template <typename acc_t>
inline acc_t hsum(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return a + b; }, v);
}
template <typename acc_t>
inline acc_t hmax(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>(
      [](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return at::vec::maximum(a, b); }, v);
}

}  // namespace CPU_CAPABILITY
}  // namespace adkernels::cpu
