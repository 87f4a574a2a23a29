// CPU FGSM / PGD step kernels, compiled once per instruction set (setup.py instantiates this
// file as build/isa/attack_kernels_isa_<name>.cpp with CPU_CAPABILITY set). Formulas:
// attack_math.h.
//
// The flattened [N * D] tensors are walked in segments of at most kChunk elements that lie in
// one sample (one step / eps) and over which the bound is either one value (scalar bounds,
// per-channel bounds inside a channel) or a contiguous run (per-element bounds). A grad in a
// different dtype than x (bf16 / fp16 gradients of an fp32 x_adv) is converted per segment
// into a stack buffer. Tails use partial vector loads (zero-filled lanes add 0 to the l2 sums).
//   sign / linf: one pass (read x, grad, x_nat; write out), parallel over elements.
//   l2: per sample one reduction (||g||^2, <d, g>, ||d||^2) and one pass, parallel over samples
//       (a sample is 600 KB of each tensor at 3x224x224: the second pass finds much of it in
//       the L2 cache).
//   random_start: the segments' noise t (philox.h / attack_math.h) is generated into the stack
//       buffer in place of a converted grad; linf is one pass, l2 one reduction of ||t||^2 per
//       sample plus one pass that regenerates t from the counters.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <adkernels/vec_math.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "attack_args.h"

namespace adkernels {
inline namespace ADK_ISA {
// Vectorized overloads of the helpers attack_math.h adds to math.h's; declared before the
// header so its templates see them.
template <typename T>
inline at::vec::Vectorized<T> ad_min(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return at::vec::minimum(a, b);
}
// (g > 0) - (g < 0): the comparison masks are all-ones lanes, & 1.0 turns them into 1.0 / 0.0.
template <typename T>
inline at::vec::Vectorized<T> ad_sign(const at::vec::Vectorized<T>& g) {
  using Vec = at::vec::Vectorized<T>;
  const Vec zero(T(0)), one(T(1));
  return ((g > zero) & one) - ((g < zero) & one);
}
}  // namespace ADK_ISA
}  // namespace adkernels

#include <adkernels/attack_math.h>

namespace adkernels::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

constexpr int64_t kChunk = 2048;

template <typename x_t, typename g_t>
struct AttackImpl {
  using Vec = Vectorized<x_t>;
  static constexpr bool kConvert = !std::is_same_v<x_t, g_t>;
  static constexpr bool random(AttackKind k) { return k == AttackKind::RandLinf || k == AttackKind::RandL2; }

  // Noise t of elements [i0, i0 + len) into buf: one Philox call per four elements.
  template <AttackKind K>
  static void noise_of(const AttackArgs& a, int64_t i0, int64_t len, x_t* buf) {
    const int64_t end = i0 + len;
    for (int64_t e = i0; e < end;) {
      uint32_t bits[4];
      philox4x32_10(a.seed, a.offset + static_cast<uint64_t>(e >> 2), bits);
      for (int lane = static_cast<int>(e & 3); lane < 4 && e < end; ++lane, ++e) {
        if constexpr (K == AttackKind::RandL2) {
          buf[e - i0] = random_normal_lane<x_t>(bits, lane);
        } else {
          buf[e - i0] = random_linf_noise<x_t>(bits[lane]);
        }
      }
    }
  }

  // grad[i0, i0 + len) as x_t: the tensor itself, or converted into buf.
  static const x_t* grad_of(const AttackArgs& a, int64_t i0, int64_t len, x_t* buf) {
    const g_t* g = static_cast<const g_t*>(a.grad) + i0;
    if constexpr (kConvert) {
      at::vec::convert(g, buf, len);
      return buf;
    } else {
      (void)buf;
      (void)len;
      return g;
    }
  }

  // One segment: elements [i0, i0 + len) of one sample; s1, s2 = (step, eps) for sign / linf,
  // (coef, scale) for l2; bounds one value (kContig false: lo[0], hi[0]) or contiguous.
  template <AttackKind K, bool kContig>
  static void segment(const AttackArgs& a, int64_t i0, int64_t len, x_t s1, x_t s2, const x_t* lo,
                      const x_t* hi, x_t* buf) {
    const x_t* x = static_cast<const x_t*>(a.x) + i0;
    const x_t* xn = (K == AttackKind::Sign || random(K)) ? nullptr : static_cast<const x_t*>(a.x_nat) + i0;
    x_t* out = static_cast<x_t*>(a.out) + i0;
    const x_t* g;
    if constexpr (random(K)) {
      // delta = s1 * t rounded on its own, in a separate loop, so the compiler cannot contract
      // x + s1 * t into an FMA (the reference, CUDA and Triton round the product too).
      noise_of<K>(a, i0, len, buf);
      for (int64_t j = 0; j < len; ++j) buf[j] = s1 * buf[j];
      g = buf;
    } else {
      g = grad_of(a, i0, len, buf);
    }
    const Vec v1(s1), v2(s2);
    Vec vlo, vhi;
    if constexpr (!kContig) {
      vlo = Vec(lo[0]);
      vhi = Vec(hi[0]);
    }
    for (int64_t j = 0; j < len; j += Vec::size()) {
      const int64_t m = std::min<int64_t>(Vec::size(), len - j);
      const Vec vx = Vec::loadu(x + j, m), vg = Vec::loadu(g + j, m);
      if constexpr (kContig) {
        vlo = Vec::loadu(lo + j, m);
        vhi = Vec::loadu(hi + j, m);
      }
      Vec r;
      if constexpr (random(K)) {
        r = ad_clamp(vx + vg, vlo, vhi);  // random_start_value with the product taken above
      } else if constexpr (K == AttackKind::Sign) {
        r = sign_step_value(vx, vg, v1, vlo, vhi);
      } else if constexpr (K == AttackKind::PgdLinf) {
        r = pgd_linf_value(vx, vg, Vec::loadu(xn + j, m), v1, v2, vlo, vhi);
      } else {
        r = pgd_l2_value(vx, vg, Vec::loadu(xn + j, m), v1, v2, vlo, vhi);
      }
      r.store(out + j, m);
    }
  }

  // Elements [begin, end) cut into segments (see the file comment), each handed to segment<K>.
  // l2 walks one sample with its (coef, scale); sign / linf read step[n] / eps[n].
  template <AttackKind K>
  static void walk(const AttackArgs& a, int64_t begin, int64_t end, x_t coef, x_t scale) {
    alignas(64) x_t buf[(kConvert || random(K)) ? kChunk : 1];
    const x_t inf = std::numeric_limits<x_t>::infinity();
    const x_t no_lo[1] = {-inf}, no_hi[1] = {inf};
    const x_t* lo = a.lo ? static_cast<const x_t*>(a.lo) : no_lo;
    const x_t* hi = a.hi ? static_cast<const x_t*>(a.hi) : no_hi;
    const int64_t B = a.lo ? a.B : 1, inner = a.bound_inner;
    const x_t* step = static_cast<const x_t*>(a.step);
    const x_t* eps = static_cast<const x_t*>(a.eps);
    for (int64_t i = begin; i < end;) {
      const int64_t n = i / a.D;
      int64_t stop = std::min({end, (n + 1) * a.D, i + kChunk});
      const x_t s1 = (K == AttackKind::PgdL2 || K == AttackKind::RandL2) ? coef
                     : K == AttackKind::RandLinf                           ? eps[n]
                                                                           : step[n];
      const x_t s2 = K == AttackKind::Sign ? x_t(0) : K == AttackKind::PgdL2 ? scale : eps[n];
      if (B == 1) {
        segment<K, false>(a, i, stop - i, s1, s2, lo, hi, buf);
      } else if (inner > 1) {
        const int64_t blk = i / inner;
        stop = std::min(stop, (blk + 1) * inner);
        const int64_t b = blk % B;
        segment<K, false>(a, i, stop - i, s1, s2, lo + b, hi + b, buf);
      } else {
        stop = std::min(stop, (i / B + 1) * B);
        const int64_t b = i % B;
        segment<K, true>(a, i, stop - i, s1, s2, lo + b, hi + b, buf);
      }
      i = stop;
    }
  }

  // l2: samples [begin, end): the reduction, the coefficients, then the pass.
  static void l2_samples(const AttackArgs& a, int64_t begin, int64_t end) {
    alignas(64) x_t buf[kConvert ? kChunk : 1];
    const x_t* step = static_cast<const x_t*>(a.step);
    const x_t* eps = static_cast<const x_t*>(a.eps);
    for (int64_t n = begin; n < end; ++n) {
      Vec vgg(0), vdg(0), vdd(0);
      for (int64_t i = n * a.D; i < (n + 1) * a.D; i += kChunk) {
        const int64_t len = std::min(kChunk, (n + 1) * a.D - i);
        const x_t* x = static_cast<const x_t*>(a.x) + i;
        const x_t* xn = static_cast<const x_t*>(a.x_nat) + i;
        const x_t* g = grad_of(a, i, len, buf);
        for (int64_t j = 0; j < len; j += Vec::size()) {
          const int64_t m = std::min<int64_t>(Vec::size(), len - j);
          pgd_l2_terms(Vec::loadu(x + j, m), Vec::loadu(g + j, m), Vec::loadu(xn + j, m), vgg, vdg, vdd);
        }
      }
      auto sum = [](const Vec& v) {
        return at::vec::vec_reduce_all<x_t>([](Vec& p, Vec& q) { return p + q; }, v);
      };
      x_t coef, scale;
      pgd_l2_coefs(sum(vgg), sum(vdg), sum(vdd), step[n], eps[n], coef, scale);
      walk<AttackKind::PgdL2>(a, n * a.D, (n + 1) * a.D, coef, scale);
    }
  }

  // random l2: samples [begin, end): ||t||^2, the scale, then the pass (t regenerated).
  static void random_l2_samples(const AttackArgs& a, int64_t begin, int64_t end) {
    alignas(64) x_t buf[kChunk];
    const x_t* eps = static_cast<const x_t*>(a.eps);
    for (int64_t n = begin; n < end; ++n) {
      Vec vss(0);
      for (int64_t i = n * a.D; i < (n + 1) * a.D; i += kChunk) {
        const int64_t len = std::min(kChunk, (n + 1) * a.D - i);
        noise_of<AttackKind::RandL2>(a, i, len, buf);
        for (int64_t j = 0; j < len; j += Vec::size()) {
          const Vec t = Vec::loadu(buf + j, std::min<int64_t>(Vec::size(), len - j));
          vss = vss + t * t;
        }
      }
      const x_t ss = at::vec::vec_reduce_all<x_t>([](Vec& p, Vec& q) { return p + q; }, vss);
      const x_t scale = random_l2_scale<x_t>(a.seed, a.offset, n, a.D, ss, eps[n]);
      walk<AttackKind::RandL2>(a, n * a.D, (n + 1) * a.D, scale, x_t(0));
    }
  }

  static void run(const AttackArgs& a, int64_t begin, int64_t end) {
    switch (a.kind) {
      case AttackKind::Sign: return walk<AttackKind::Sign>(a, begin, end, x_t(0), x_t(0));
      case AttackKind::PgdLinf: return walk<AttackKind::PgdLinf>(a, begin, end, x_t(0), x_t(0));
      case AttackKind::PgdL2: return l2_samples(a, begin, end);
      case AttackKind::RandLinf: return walk<AttackKind::RandLinf>(a, begin, end, x_t(0), x_t(0));
      case AttackKind::RandL2: return random_l2_samples(a, begin, end);
    }
  }
};

template <typename x_t>
void attack_range_x(const AttackArgs& a, int64_t begin, int64_t end) {
  switch (a.grad_dtype) {
    case AttackDType::Float: return AttackImpl<x_t, float>::run(a, begin, end);
    case AttackDType::Double: return AttackImpl<x_t, double>::run(a, begin, end);
    case AttackDType::Half: return AttackImpl<x_t, c10::Half>::run(a, begin, end);
    case AttackDType::BFloat16: return AttackImpl<x_t, c10::BFloat16>::run(a, begin, end);
  }
}

void attack_range(const AttackArgs& a, int64_t begin, int64_t end) {
  if (a.kind == AttackKind::RandLinf || a.kind == AttackKind::RandL2) {  // no grad: one instantiation
    if (a.x_dtype == AttackDType::Double) return AttackImpl<double, double>::run(a, begin, end);
    return AttackImpl<float, float>::run(a, begin, end);
  }
  if (a.x_dtype == AttackDType::Double) return attack_range_x<double>(a, begin, end);
  return attack_range_x<float>(a, begin, end);
}

}  // namespace CPU_CAPABILITY
}  // namespace adkernels::cpu
