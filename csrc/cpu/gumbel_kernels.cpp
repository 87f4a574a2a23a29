// CPU Gumbel-Softmax kernels, compiled once per instruction set (setup.py instantiates this
// file per ISA). Formulas: gumbel_math.h; noise: philox.h.
//
// Forward, per row (rows in parallel), in chunks of kChunk columns:
//   1. Philox for the chunk's counters (four uniforms per call; the loop over counters is
//      straight-line integer code the compiler vectorizes), then z = (x + g) / tau with
//      g = -log(-log u) on SIMD registers, written to a per-thread fp32 (fp64) row buffer while
//      the row max is kept;
//   2. e = exp(z - max) in the buffer, summed;
//   3. y = e / sum written in the input dtype (hard: the one-hot of the first argmax; the soft
//      y too when the backward needs it).
// The noise is made once per element and never stored in a tensor; the row buffer stays in
// cache (128 KB at V = 32000).
// Backward, per row: dot = sum(dy * y), dx = y * (dy - dot) / tau: one read of y and dy, one
// write of dx (two passes over the row, the second mostly from cache).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <adkernels/vec_math.h>
#include <adkernels/gumbel_math.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "gumbel_args.h"
#include "philox_chunk.h"

namespace adkernels::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

constexpr int64_t kChunk = kPhiloxChunk;

template <typename scalar_t>
struct GumbelImpl {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Vec = Vectorized<acc_t>;
  static constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;

  static const acc_t* load(const scalar_t* p, int64_t len, acc_t* buf) {
    if constexpr (kConvert) {
      at::vec::convert(p, buf, len);
      return buf;
    } else {
      (void)len;
      (void)buf;
      return p;
    }
  }

  static void store(const acc_t* v, scalar_t* p, int64_t len) {
    if constexpr (kConvert) {
      at::vec::convert(v, p, len);
    } else {
      std::copy(v, v + len, p);
    }
  }

  static void forward(const GumbelFwdArgs& a, int64_t begin, int64_t end) {
    const int64_t V = a.V, W = Vec::size();
    const int64_t Vp = (V + W - 1) / W * W;
    std::vector<acc_t> zrow(Vp);
    alignas(64) acc_t ub[kChunk + 8], xb[kConvert ? kChunk : 1];
    const acc_t inf = std::numeric_limits<acc_t>::infinity();
    const Vec vinv(static_cast<acc_t>(1.0 / a.tau));
    // Short rows (V <= kChunk / 2) are taken in groups of kChunk / V rows: one Philox sweep and
    // one conversion per group instead of per row.
    const bool grouped = V <= kChunk / 2;
    const int64_t G = grouped ? kChunk / V : 1;
    int64_t g0 = -1;
    const acc_t* ug = nullptr;
    const acc_t* xg = nullptr;
    for (int64_t n = begin; n < end; ++n) {
      for (int64_t j = V; j < Vp; ++j) zrow[j] = -inf;  // padding: exp gives 0 there
      const scalar_t* x = static_cast<const scalar_t*>(a.x) + n * V;
      if (grouped && (g0 < 0 || n >= g0 + G)) {
        g0 = n;
        const int64_t len = std::min(end - n, G) * V;
        ug = uniforms(a.seed, a.offset, n * V, len, ub);
        xg = load(x, len, xb);
      }
      acc_t* z = zrow.data();
      Vec vmax(-inf);
      for (int64_t c = 0; c < V; c += kChunk) {
        const int64_t len = std::min(kChunk, V - c);
        const acc_t* u = grouped ? ug + (n - g0) * V : uniforms(a.seed, a.offset, n * V + c, len, ub);
        const acc_t* xv = grouped ? xg + (n - g0) * V : load(x + c, len, xb);
        for (int64_t j = 0; j < len; j += W) {
          const int64_t m = std::min(W, len - j);
          const Vec g = gumbel_of_uniform(Vec::loadu(u + j, m));  // -inf in lanes past len
          const Vec zz = gumbel_logit(Vec::loadu(xv + j, m), g, vinv);
          zz.store(z + c + j, m);
          vmax = ad_max(vmax, zz);
        }
      }
      const acc_t mx = at::vec::vec_reduce_all<acc_t>([](Vec& p, Vec& q) { return ad_max(p, q); }, vmax);
      int64_t arg = 0;
      if (a.hard) {
        while (arg < V - 1 && !(z[arg] == mx)) ++arg;
      }
      const Vec vm(mx);
      Vec vs(0);
      for (int64_t j = 0; j < Vp; j += W) {
        const Vec e = ad_exp(Vec::loadu(z + j) - vm);
        e.store(z + j);
        vs = vs + e;
      }
      const acc_t s = at::vec::vec_reduce_all<acc_t>([](Vec& p, Vec& q) { return p + q; }, vs);
      const Vec vr(acc_t(1) / s);
      scalar_t* soft = a.hard ? static_cast<scalar_t*>(a.y_soft) : static_cast<scalar_t*>(a.y);
      if (soft != nullptr) {
        soft += n * V;
        for (int64_t j = 0; j < Vp; j += W) (Vec::loadu(z + j) * vr).store(z + j);
        for (int64_t c = 0; c < V; c += kChunk) store(z + c, soft + c, std::min(kChunk, V - c));
      }
      if (a.hard) {
        scalar_t* y = static_cast<scalar_t*>(a.y) + n * V;
        std::fill(y, y + V, scalar_t(0));
        y[arg] = scalar_t(1);
      }
    }
  }

  static void backward(const GumbelBwdArgs& a, int64_t begin, int64_t end) {
    const int64_t V = a.V, W = Vec::size();
    alignas(64) acc_t yb[kConvert ? kChunk : 1], gb[kConvert ? kChunk : 1], ob[kConvert ? kChunk : 1];
    const Vec vinv(static_cast<acc_t>(1.0 / a.tau));
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* y = static_cast<const scalar_t*>(a.y) + n * V;
      const scalar_t* dy = static_cast<const scalar_t*>(a.dy) + n * V;
      scalar_t* dx = static_cast<scalar_t*>(a.dx) + n * V;
      Vec vdot(0);
      for (int64_t c = 0; c < V; c += kChunk) {
        const int64_t len = std::min(kChunk, V - c);
        const acc_t* yv = load(y + c, len, yb);
        const acc_t* gv = load(dy + c, len, gb);
        for (int64_t j = 0; j < len; j += W) {
          const int64_t m = std::min(W, len - j);
          vdot = vdot + Vec::loadu(yv + j, m) * Vec::loadu(gv + j, m);
        }
      }
      const Vec dot(at::vec::vec_reduce_all<acc_t>([](Vec& p, Vec& q) { return p + q; }, vdot));
      for (int64_t c = 0; c < V; c += kChunk) {
        const int64_t len = std::min(kChunk, V - c);
        const acc_t* yv = load(y + c, len, yb);
        const acc_t* gv = load(dy + c, len, gb);
        acc_t* out;
        if constexpr (kConvert) {
          out = ob;
        } else {
          out = dx + c;
        }
        for (int64_t j = 0; j < len; j += W) {
          const int64_t m = std::min(W, len - j);
          gumbel_softmax_grad(Vec::loadu(yv + j, m), Vec::loadu(gv + j, m), dot, vinv).store(out + j, m);
        }
        if constexpr (kConvert) store(ob, dx + c, len);
      }
    }
  }
};

void gumbel_fwd_rows(const GumbelFwdArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case GumbelDType::Float: return GumbelImpl<float>::forward(a, begin, end);
    case GumbelDType::Double: return GumbelImpl<double>::forward(a, begin, end);
    case GumbelDType::Half: return GumbelImpl<c10::Half>::forward(a, begin, end);
    case GumbelDType::BFloat16: return GumbelImpl<c10::BFloat16>::forward(a, begin, end);
  }
}

void gumbel_bwd_rows(const GumbelBwdArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case GumbelDType::Float: return GumbelImpl<float>::backward(a, begin, end);
    case GumbelDType::Double: return GumbelImpl<double>::backward(a, begin, end);
    case GumbelDType::Half: return GumbelImpl<c10::Half>::backward(a, begin, end);
    case GumbelDType::BFloat16: return GumbelImpl<c10::BFloat16>::backward(a, begin, end);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace adkernels::cpu
