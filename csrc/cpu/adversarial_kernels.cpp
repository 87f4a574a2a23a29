// CPU adversarial-loss kernels, compiled once per instruction set (setup.py instantiates this
// file as build/isa/adversarial_kernels_isa_<name>.cpp). Formulas: adversarial_math.h.
//
// Three-way loss: a row has only K = 2 or 3 logits, so SIMD runs across rows. Rows are taken
// in blocks of kBlock: a scalar loop transposes the block into per-logit arrays (converting
// bf16/fp16 once) with the one-hot source and the row scale, the math runs on whole
// Vectorized registers, and a scalar loop writes the losses and interleaves the gradients back.
// Binary losses: element-wise, chunks of kAdvChunk elements, Vectorized over each chunk.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <adkernels/vec_math.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>

#include "adversarial_args.h"

namespace adkernels {
inline namespace ADK_ISA {
// Vectorized overloads of the adv_* helpers, declared before adversarial_math.h so that its
// templates find them.
template <typename T>
inline at::vec::Vectorized<T> adv_log1p(const at::vec::Vectorized<T>& x) { return x.log1p(); }
template <typename T>
inline at::vec::Vectorized<T> adv_abs(const at::vec::Vectorized<T>& x) { return x.abs(); }
template <typename T>
inline at::vec::Vectorized<T> adv_where(const at::vec::Vectorized<T>& m, const at::vec::Vectorized<T>& a,
                                        const at::vec::Vectorized<T>& b) {
  using Vec = at::vec::Vectorized<T>;
  return Vec::blendv(b, a, m != Vec(T(0)));
}
}  // namespace ADK_ISA
}  // namespace adkernels

#include <adkernels/adversarial_math.h>

namespace adkernels::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

constexpr int64_t kBlock = 256;  // rows per block: a multiple of every vector width

template <typename scalar_t, int K>
void source_rows_k(const AdvSourceArgs& a, int64_t begin, int64_t end) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Vec = Vectorized<acc_t>;
  const scalar_t* __restrict__ in = static_cast<const scalar_t*>(a.logits);
  const int64_t* __restrict__ source = a.source;
  scalar_t* __restrict__ out_grad = static_cast<scalar_t*>(a.grad);
  acc_t* __restrict__ rows = static_cast<acc_t*>(a.rows);
  const Vec s0(static_cast<acc_t>(a.scale[0])), s1(static_cast<acc_t>(a.scale[1])),
      s2(static_cast<acc_t>(a.scale[2]));
  const Vec zero(0), one(1), two(2);
  alignas(64) acc_t z[3][kBlock], sf[kBlock], g[3][kBlock];
  for (int64_t r = 0; r < kBlock; ++r) z[2][r] = acc_t(0);  // unused third logit of the tree
  for (int64_t n0 = begin; n0 < end; n0 += kBlock) {
    const int64_t B = std::min(kBlock, end - n0);
    const int64_t Bv = (B + Vec::size() - 1) / Vec::size() * Vec::size();
    // transpose the block into per-logit arrays (the source as a float), zero padding lanes
    for (int64_t r = 0; r < B; ++r) sf[r] = static_cast<acc_t>(source[n0 + r]);
    for (int j = 0; j < K; ++j) {
      const scalar_t* col = in + n0 * K + j;
      for (int64_t r = 0; r < B; ++r) z[j][r] = static_cast<acc_t>(col[r * K]);
    }
    for (int64_t r = B; r < Bv; ++r) {
      sf[r] = acc_t(0);
      for (int j = 0; j < K; ++j) z[j][r] = acc_t(0);
    }
    acc_t* loss = rows + n0;
    for (int64_t r = 0; r < Bv; r += Vec::size()) {
      const Vec sv = Vec::loadu(sf + r);
      const Vec zv[3] = {Vec::loadu(z[0] + r), Vec::loadu(z[1] + r), Vec::loadu(z[2] + r)};
      const Vec mv[3] = {Vec::blendv(zero, one, sv == zero), Vec::blendv(zero, one, sv == one),
                         Vec::blendv(zero, one, sv == two)};
      const Vec c = Vec::blendv(Vec::blendv(s2, s1, sv == one), s0, sv == zero);
      Vec lv, gv[3];
      adv_source_row<Vec>(a.param, a.mode, zv, mv, c, lv, gv);
      if (r + Vec::size() <= B) {
        lv.store(loss + r);
      } else {
        lv.store(loss + r, static_cast<int>(B - r));
      }
      for (int j = 0; j < K; ++j) gv[j].store(g[j] + r);
    }
    if (out_grad) {
      for (int j = 0; j < K; ++j) {
        scalar_t* col = out_grad + n0 * K + j;
        for (int64_t r = 0; r < B; ++r) col[r * K] = static_cast<scalar_t>(g[j][r]);
      }
    }
  }
}

template <typename scalar_t>
void source_rows_impl(const AdvSourceArgs& a, int64_t begin, int64_t end) {
  if (a.K == 3) {
    source_rows_k<scalar_t, 3>(a, begin, end);
  } else {
    source_rows_k<scalar_t, 2>(a, begin, end);
  }
}

void adv_source_rows(const AdvSourceArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case AdvDType::Float: return source_rows_impl<float>(a, begin, end);
    case AdvDType::Double: return source_rows_impl<double>(a, begin, end);
    case AdvDType::Half: return source_rows_impl<c10::Half>(a, begin, end);
    case AdvDType::BFloat16: return source_rows_impl<c10::BFloat16>(a, begin, end);
  }
}

// ---- binary losses ---------------------------------------------------------------------------

// Terms of role `role` for x[0..n) (already in acc_t): adds scale * term to *sum (reduced) or
// writes / adds it to terms[0..n) (per element), writes scale * grad to grad[0..n) if asked.
template <typename acc_t>
inline acc_t binary_span(int64_t kind, int64_t role, const acc_t* x, int64_t n, acc_t y, acc_t scale,
                         acc_t* terms, bool add_terms, acc_t* grad) {
  using Vec = Vectorized<acc_t>;
  Vec vsum(0);
  acc_t sum = 0;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec l, gr;
    adv_binary_term<Vec>(kind, role, Vec::loadu(x + i), Vec(y), l, gr);
    l = l * Vec(scale);
    if (terms) (add_terms ? Vec::loadu(terms + i) + l : l).store(terms + i);
    else vsum = vsum + l;
    if (grad) (gr * Vec(scale)).store(grad + i);
  }
  for (; i < n; ++i) {
    acc_t l, gr;
    adv_binary_term<acc_t>(kind, role, x[i], y, l, gr);
    l *= scale;
    if (terms) terms[i] = add_terms ? terms[i] + l : l;
    else sum += l;
    if (grad) grad[i] = gr * scale;
  }
  return sum + at::vec::vec_reduce_all<acc_t>([](Vec& p, Vec& q) { return p + q; }, vsum);
}

template <typename scalar_t>
void binary_chunks_impl(const AdvBinaryArgs& a, int64_t chunk_begin, int64_t chunk_end) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const auto* real = static_cast<const scalar_t*>(a.real);
  const auto* fake = static_cast<const scalar_t*>(a.fake);
  auto* gr_out = static_cast<scalar_t*>(a.grad_real);
  auto* gf_out = static_cast<scalar_t*>(a.grad_fake);
  auto* out = static_cast<acc_t*>(a.out);
  const acc_t y = static_cast<acc_t>(a.real_label);
  const acc_t rs = static_cast<acc_t>(a.real_scale), fs = static_cast<acc_t>(a.fake_scale);
  const bool rel = a.kind == ADV_RELATIVISTIC;
  const int64_t fake_role = a.side == 0 ? ADV_D_FAKE : a.side == 1 ? ADV_G_MINIMAX : ADV_G_NONSAT;
  alignas(64) acc_t xr[kAdvChunk], xf[kAdvChunk], gbuf[kAdvChunk];
  for (int64_t ch = chunk_begin; ch < chunk_end; ++ch) {
    const int64_t lo = ch * kAdvChunk, hi = std::min(a.M, lo + kAdvChunk);
    const int64_t nr = std::max<int64_t>(0, std::min(a.Mr, hi) - lo);
    const int64_t nf = std::max<int64_t>(0, std::min(a.Mf, hi) - lo);
    const acc_t* r = nullptr;
    const acc_t* f = nullptr;
    if constexpr (kConvert) {
      if (nr) at::vec::convert(real + lo, xr, nr);
      if (nf) at::vec::convert(fake + lo, xf, nf);
      r = xr;
      f = xf;
    } else {
      r = real ? real + lo : nullptr;
      f = fake + lo;
    }
    acc_t* terms = a.per_element ? out + lo : nullptr;
    acc_t sum = 0;
    // A gradient goes straight to the output when no conversion is needed, else via gbuf.
    auto grad_dst = [&](scalar_t* base) -> acc_t* {
      if (!base) return nullptr;
      if constexpr (kConvert) return gbuf;
      else return base + lo;
    };
    if (rel) {
      // pairs: x = r - f; d/dr = +grad, d/df = -grad
      for (int64_t i = 0; i < nf; ++i) xr[i] = r[i] - f[i];
      const int64_t role = a.side == 0 ? ADV_D_REAL : ADV_G_MINIMAX;
      acc_t* gd = (gr_out || gf_out) ? gbuf : nullptr;
      sum += binary_span<acc_t>(a.kind, role, xr, nf, y, fs, terms, false, gd);
      if (gd) {
        if (gr_out) at::vec::convert(gbuf, gr_out + lo, nf);
        if (gf_out) {
          for (int64_t i = 0; i < nf; ++i) gf_out[lo + i] = static_cast<scalar_t>(-gbuf[i]);
        }
      }
    } else {
      if (nr) {
        acc_t* gd = grad_dst(gr_out);
        sum += binary_span<acc_t>(a.kind, ADV_D_REAL, r, nr, y, rs, terms, false, gd);
        if constexpr (kConvert) {
          if (gr_out) at::vec::convert(gbuf, gr_out + lo, nr);
        }
      }
      if (nf) {
        acc_t* gd = grad_dst(gf_out);
        sum += binary_span<acc_t>(a.kind, fake_role, f, nf, y, fs, terms, nr > 0, gd);
        if constexpr (kConvert) {
          if (gf_out) at::vec::convert(gbuf, gf_out + lo, nf);
        }
      }
    }
    if (!a.per_element) out[ch] = sum;
  }
}

void adv_binary_chunks(const AdvBinaryArgs& a, int64_t chunk_begin, int64_t chunk_end) {
  switch (a.dtype) {
    case AdvDType::Float: return binary_chunks_impl<float>(a, chunk_begin, chunk_end);
    case AdvDType::Double: return binary_chunks_impl<double>(a, chunk_begin, chunk_end);
    case AdvDType::Half: return binary_chunks_impl<c10::Half>(a, chunk_begin, chunk_end);
    case AdvDType::BFloat16: return binary_chunks_impl<c10::BFloat16>(a, chunk_begin, chunk_end);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace adkernels::cpu
