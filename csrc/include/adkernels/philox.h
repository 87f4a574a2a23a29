// Counter-based random numbers shared by the CPU, CUDA and Triton kernels (gumbel_softmax,
// random_start, and any kernel that wants noise without a noise tensor in memory).
//
// The stream. A random op takes `seed_offset`, an int64[2] tensor (seed, offset) drawn from the
// torch generator at each call (adkernels/ops/gumbel.py draw_seed_offset: torch.randint(0, 2**62,
// (2,)) on the op's device), so torch.manual_seed reproduces results and every call draws a new
// pair. Element e of the op's
// flattened element order uses
//     philox4x32_10(key = seed, counter = offset + e / 4)   output lane e % 4,
// i.e. one Philox call serves four consecutive elements. The 64-bit key is (lo, hi) = (seed & 0xffffffff,
// seed >> 32), the 128-bit counter (c0, c1, c2, c3) = (lo32(ctr), hi32(ctr), 0, 0): exactly
// Triton's tl.randint4x(seed, ctr) (ctr an int64 block), so the Triton kernels call that.
//
// uint32 -> uniform (philox_uniform): Triton's tl.rand mapping, with its one zero removed:
//     s = int32(bits); s = s < 0 ? ~s : s          (31 bits, 0 .. 2^31 - 1)
//     u = float(s) * 4.6566127342e-10f             (largest value 0.99999994f < 1)
//     u = max(u, 2^-32)                            (tl.rand gives exactly 0 for s = 0)
// One int -> float conversion, one fp32 multiply, one max: bit-identical in C++, CUDA, Triton
// and numpy, so every backend draws the same u for the same (seed, offset, element). u lies
// in [2^-32, 1 - 2^-24], strictly inside (0, 1).
//
// Derived noise (gumbel_math.h / attack_math.h): the Gumbel noise of element e -- the one
// function a fused kernel calls for Gumbel-Softmax noise (Triton twin: adkernels/triton/gumbel.py
// gumbel_noise) --
//     gumbel_noise(seed, offset, e) = -log(-log u_e)   finite: within [-3.1, 16.6],
// and Box-Muller normals (lanes (0, 1) and (2, 3) of a counter are pairs). These use log /
// cos / sin, so they agree across backends to rounding, while u itself is exact.
#pragma once

#include <adkernels/math.h>

#include <cstdint>

namespace adkernels {
inline namespace ADK_ISA {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;  // multiplies c0
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;  // multiplies c2
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // key bump
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;
constexpr float kUniformScale = 4.6566127342e-10f;  // 0x1.fffffep-32f: (2^23 - 1) / 2^23 * 2^-31
constexpr float kUniformMin = 2.3283064365386963e-10f;  // 2^-32

C10_HOST_DEVICE inline uint32_t philox_mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32-10 of counter (lo32(ctr), hi32(ctr), 0, 0) under key seed: out[0..3].
C10_HOST_DEVICE inline void philox4x32_10(uint64_t seed, uint64_t ctr, uint32_t out[4]) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  uint32_t c0 = static_cast<uint32_t>(ctr), c1 = static_cast<uint32_t>(ctr >> 32), c2 = 0, c3 = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < kPhiloxRounds; ++r) {
    const uint32_t p0 = c0, p2 = c2;
    c0 = philox_mulhi(kPhiloxM1, p2) ^ c1 ^ k0;
    c2 = philox_mulhi(kPhiloxM0, p0) ^ c3 ^ k1;
    c1 = kPhiloxM1 * p2;
    c3 = kPhiloxM0 * p0;
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// uint32 -> u in [2^-32, 1 - 2^-24] (see the file comment).
C10_HOST_DEVICE inline float philox_uniform(uint32_t bits) {
  int32_t s = static_cast<int32_t>(bits);
  s = s < 0 ? ~s : s;
  const float u = static_cast<float>(s) * kUniformScale;
  return u > kUniformMin ? u : kUniformMin;
}

// The uniform of element e: one Philox call, one lane (use philox4x32_10 directly and
// philox_uniform on all four lanes when walking consecutive elements).
C10_HOST_DEVICE inline float philox_uniform_at(uint64_t seed, uint64_t offset, uint64_t e) {
  uint32_t out[4];
  philox4x32_10(seed, offset + (e >> 2), out);
  return philox_uniform(out[e & 3]);
}

}  // namespace ADK_ISA
}  // namespace adkernels
