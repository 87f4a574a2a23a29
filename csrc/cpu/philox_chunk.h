// CPU helper of the random kernels (included by per-ISA kernel files only): the uniforms of a
// run of consecutive stream elements, four per Philox call (philox.h).
#pragma once

#include <adkernels/philox.h>

#include <cstdint>

namespace adkernels::cpu {
inline namespace CPU_CAPABILITY {

constexpr int64_t kPhiloxChunk = 2048;  // most elements per uniforms() call

// u of stream elements [e0, e0 + len) (len <= kPhiloxChunk), in acc_t: written from ub[0] in
// counter order (ub holds kPhiloxChunk + 8 values), returned as ub + (e0 % 4). Both loops are
// straight-line integer / float code over counters that the compiler vectorizes.
template <typename acc_t>
inline const acc_t* uniforms(uint64_t seed, uint64_t offset, int64_t e0, int64_t len, acc_t* ub) {
  constexpr int64_t kCtr = kPhiloxChunk / 4 + 2;
  alignas(64) uint32_t b0[kCtr], b1[kCtr], b2[kCtr], b3[kCtr];
  const int64_t first = e0 >> 2, count = ((e0 + len - 1) >> 2) - first + 1;
  const uint64_t base = offset + static_cast<uint64_t>(first);
  for (int64_t i = 0; i < count; ++i) {
    uint32_t o[4];
    philox4x32_10(seed, base + static_cast<uint64_t>(i), o);
    b0[i] = o[0];
    b1[i] = o[1];
    b2[i] = o[2];
    b3[i] = o[3];
  }
  for (int64_t i = 0; i < count; ++i) {
    ub[4 * i] = static_cast<acc_t>(philox_uniform(b0[i]));
    ub[4 * i + 1] = static_cast<acc_t>(philox_uniform(b1[i]));
    ub[4 * i + 2] = static_cast<acc_t>(philox_uniform(b2[i]));
    ub[4 * i + 3] = static_cast<acc_t>(philox_uniform(b3[i]));
  }
  return ub + (e0 & 3);
}

}  // namespace CPU_CAPABILITY
}  // namespace adkernels::cpu
