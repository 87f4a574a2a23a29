// CPU adversarial-loss kernels, compiled once per instruction set (setup.py instantiates this
// file as build/isa/adversarial_kernels_isa_<name>.cpp). Formulas: adversarial_math.h.
//
// Three-way loss: a row has only K = 2 or 3 logits, so SIMD runs across rows. Rows are taken
// in blocks of kBlock: a scalar loop transposes the block into per-logit arrays (converting
// bf16/fp16 once) with the one-hot source and the row scale, the math runs on whole
// Vectorized registers, and a scalar loop writes the losses and interleaves the gradients back.
// Binary losses: element-wise, chunks of kAdvChunk elements, Vectorized over each chunk.
// Fused ADIM generator step: see distill_rows_k below.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <adkernels/vec_math.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "adversarial_args.h"
#include "philox_chunk.h"
#include "vec_loop.h"

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
#include <adkernels/gumbel_math.h>
#include <adkernels/kd_math.h>

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

// ---- the fused ADIM generator step -------------------------------------------------------------
//
// One row at a time (rows in parallel). The row's gen / other logits are copied (converted) into
// per-thread acc_t buffers padded to whole vectors with -inf, so every label loop runs on full
// Vectorized registers, short rows (C = 10) included: a padded label has z = -inf, exp 0 and
// p = 0, and adds nothing to any sum (kd_math's p > 0 guards). The buffers stay in L2 (C = 32000:
// 128 KB each). Passes over the row:
//   A  Philox noise (four uniforms per call), z = (x + g) / tau into zb and its max; KD maxima
//   B  zb = exp(z - max) and its sum (y_soft = zb / sum); KD exponentials and sums
//   C  scores s_k = sum_c y_c d_ck (hard: the argmax label's d row); KD divergence sums;
//      then the row's generator loss and a = dl/ds (adv_source_row)
//   D  grad_d = y_c a_k; b_c = sum_k a_k d_ck into bb (d is read a second time, from cache)
//   E  grad_gen = y_soft (b - sum y_soft b) / tau + KD, grad_other = KD (into buffers, then
//      copied / converted to the outputs)
// d is [C, K] interleaved: the loops over it (C, D and b) are `omp simd` loops with stride-K
// accesses, which the compiler vectorizes with permutes.
template <typename scalar_t, int K>
void distill_rows_k(const AdvDistillArgs& a, int64_t begin, int64_t end) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Vec = Vectorized<acc_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  constexpr int64_t W = Vec::size();
  constexpr int64_t LC = 512;  // labels per chunk of d (a multiple of W)
  constexpr int64_t KL = K * LC;
  const int64_t C = a.C, Cp = (C + W - 1) / W * W;
  const bool kd = a.kd_scale != 0.0;
  const Vec inv_tau(static_cast<acc_t>(1.0 / a.tau));
  const acc_t T = static_cast<acc_t>(a.temperature), beta(0.5);
  const Vec invT(acc_t(1) / T), vbeta(beta), one(1);
  const acc_t kd_scale = static_cast<acc_t>(a.kd_scale);
  const int64_t div = a.divergence;
  const acc_t inf = std::numeric_limits<acc_t>::infinity();

  std::vector<acc_t> buf(8 * Cp + 2 * KL + kPhiloxChunk + 8, acc_t(0));
  acc_t* xs = buf.data();  // gen logits, -inf padded
  acc_t* os = xs + Cp;     // other logits, -inf padded
  acc_t* zb = os + Cp;     // z, then exp(z - max)
  acc_t* es = zb + Cp;     // KD exponentials
  acc_t* et = es + Cp;
  acc_t* bb = et + Cp;     // b (0 in the padding)
  acc_t* gbuf = bb + Cp;   // grad_gen, grad_other rows
  acc_t* obuf = gbuf + Cp;
  acc_t* dbuf = obuf + Cp;  // a converted chunk of d (low precision)
  acc_t* ddb = dbuf + KL;   // a chunk of grad_d (low precision)
  acc_t* ub = ddb + KL;     // uniforms
  for (int64_t j = C; j < Cp; ++j) xs[j] = os[j] = -inf;

  const auto* gen = static_cast<const scalar_t*>(a.gen);
  const auto* other = static_cast<const scalar_t*>(a.other);
  const auto* d_all = static_cast<const scalar_t*>(a.d);
  auto* rows = static_cast<acc_t*>(a.rows);
  auto* gg_out = static_cast<scalar_t*>(a.grad_gen);
  auto* go_out = static_cast<scalar_t*>(a.grad_other);
  auto* gd_out = static_cast<scalar_t*>(a.grad_d);

  auto to_acc = [](const scalar_t* src, acc_t* dst, int64_t len) {
    if constexpr (kConvert) {
      at::vec::convert(src, dst, len);
    } else {
      std::memcpy(dst, src, sizeof(acc_t) * len);
    }
  };
  auto from_acc = [](const acc_t* src, scalar_t* dst, int64_t len) {
    if constexpr (kConvert) {
      at::vec::convert(src, dst, len);
    } else {
      std::memcpy(dst, src, sizeof(acc_t) * len);
    }
  };
  // d (converted) of labels [c0, c0 + len) of a row
  auto d_chunk = [&](const scalar_t* d_row, int64_t c0, int64_t len) -> const acc_t* {
    if constexpr (kConvert) {
      at::vec::convert(d_row + c0 * K, dbuf, len * K);
      return dbuf;
    } else {
      return d_row + c0 * K;
    }
  };
  auto hsum_v = [](const Vec& v) { return hsum(v); };

  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* d_row = d_all + n * C * K;
    to_acc(gen + n * C, xs, C);
    if (kd) to_acc(other + n * C, os, C);

    // A: noisy logits and maxima
    Vec vmz(-inf), vmx(-inf), vmo(-inf);
    for (int64_t c0 = 0; c0 < C; c0 += kPhiloxChunk) {
      const int64_t len = std::min(kPhiloxChunk, C - c0);
      const acc_t* u = uniforms(a.seed, a.offset, n * C + c0, len, ub);
      for (int64_t j = 0; j < len; j += W) {
        // past the row's end: u = 0 (g = -inf) and x = -inf, so z = -inf
        const Vec g = gumbel_of_uniform(Vec::loadu(u + j, static_cast<int>(std::min<int64_t>(W, len - j))));
        const Vec x = Vec::loadu(xs + c0 + j);
        const Vec z = gumbel_logit(x, g, inv_tau);
        z.store(zb + c0 + j);
        vmz = ad_max(vmz, z);
        if (kd) {
          vmx = ad_max(vmx, x);
          vmo = ad_max(vmo, Vec::loadu(os + c0 + j));
        }
      }
    }
    const acc_t mz = hmax(vmz);
    int64_t arg = 0;
    if (a.hard) {
      while (arg < C - 1 && !(zb[arg] == mz)) ++arg;
    }
    const Vec vmzb(mz), vmxb(kd ? hmax(vmx) : acc_t(0)), vmob(kd ? hmax(vmo) : acc_t(0));

    // B: exponentials and sums
    Vec vsz(0), vss(0), vst(0);
    for (int64_t j = 0; j < Cp; j += W) {
      const Vec e = ad_exp(Vec::loadu(zb + j) - vmzb);
      e.store(zb + j);
      vsz = vsz + e;
      if (kd) {
        const Vec e_s = ad_exp((Vec::loadu(xs + j) - vmxb) * invT);
        const Vec e_t = ad_exp((Vec::loadu(os + j) - vmob) * invT);
        e_s.store(es + j);
        e_t.store(et + j);
        vss = vss + e_s;
        vst = vst + e_t;
      }
    }
    const acc_t inv_sz = acc_t(1) / hsum_v(vsz);
    const acc_t ss = kd ? hsum_v(vss) : acc_t(1), st = kd ? hsum_v(vst) : acc_t(1);
    const Vec inv_ss(acc_t(1) / ss), inv_st(acc_t(1) / st), log_ss(ad_log(ss)), log_st(ad_log(st));
    // the KD probabilities and log-probabilities of the labels of register j
    auto kd_elem = [&](int64_t j, Vec& ps, Vec& pt, Vec& lps, Vec& lpt) {
      ps = Vec::loadu(es + j) * inv_ss;
      pt = Vec::loadu(et + j) * inv_st;
      lps = (Vec::loadu(xs + j) - vmxb) * invT - log_ss;
      lpt = (Vec::loadu(os + j) - vmob) * invT - log_st;
    };

    // C: scores and the KD divergence sums
    acc_t s[3] = {0, 0, 0};
    if (a.hard) {
      const acc_t* dv = d_chunk(d_row, arg, 1);
      for (int k = 0; k < K; ++k) s[k] = dv[k];
    } else {
      for (int64_t c0 = 0; c0 < C; c0 += LC) {
        const int64_t len = std::min(LC, C - c0);
        const acc_t* dv = d_chunk(d_row, c0, len);
        const acc_t* y = zb + c0;
        acc_t s0 = 0, s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s0, s1, s2)
        for (int64_t c = 0; c < len; ++c) {
          s0 += y[c] * dv[c * K];
          s1 += y[c] * dv[c * K + 1];
          if constexpr (K == 3) s2 += y[c] * dv[c * K + 2];
        }
        s[0] += s0 * inv_sz;
        s[1] += s1 * inv_sz;
        s[2] += s2 * inv_sz;
      }
    }
    acc_t kd_t = 0, kd_s = 0;
    if (kd) {
      Vec vat(0), vas(0);
      for (int64_t j = 0; j < Cp; j += W) {
        Vec ps, pt, lps, lpt;
        kd_elem(j, ps, pt, lps, lpt);
        kd_div_terms(div, ps, pt, lps, lpt, vbeta, one, vat, vas);
      }
      kd_t = hsum_v(vat);
      kd_s = hsum_v(vas);
    }
    const int64_t src = a.source[n];
    const acc_t m[3] = {acc_t(src == 0), acc_t(src == 1), acc_t(src == 2)};
    acc_t loss, av[3];
    adv_source_row<acc_t>(a.param, a.mode, s, m, static_cast<acc_t>(a.scale[src]), loss, av);
    if (kd) loss += kd_scale * T * T * kd_div_value(div, kd_t, kd_s, beta);
    rows[n] = loss;

    // D: grad_d and b
    if (gd_out) {
      scalar_t* gd = gd_out + n * C * K;
      if (a.hard) {
        std::memset(static_cast<void*>(gd), 0, sizeof(scalar_t) * C * K);
        for (int k = 0; k < K; ++k) gd[arg * K + k] = static_cast<scalar_t>(av[k]);
      } else {
        const acc_t a0 = av[0] * inv_sz, a1 = av[1] * inv_sz, a2 = av[2] * inv_sz;
        for (int64_t c0 = 0; c0 < C; c0 += LC) {
          const int64_t len = std::min(LC, C - c0);
          acc_t* out;
          if constexpr (kConvert) {
            out = ddb;
          } else {
            out = gd + c0 * K;
          }
          const acc_t* y = zb + c0;
#pragma omp simd
          for (int64_t c = 0; c < len; ++c) {
            out[c * K] = y[c] * a0;
            out[c * K + 1] = y[c] * a1;
            if constexpr (K == 3) out[c * K + 2] = y[c] * a2;
          }
          if constexpr (kConvert) at::vec::convert(ddb, gd + c0 * K, len * K);
        }
      }
    }
    if (!gg_out && !go_out) continue;
    Vec sb(0);
    if (gg_out) {
      for (int64_t c0 = 0; c0 < C; c0 += LC) {
        const int64_t len = std::min(LC, C - c0);
        const acc_t* dv = d_chunk(d_row, c0, len);
#pragma omp simd
        for (int64_t c = 0; c < len; ++c) {
          bb[c0 + c] = adv_distill_b(av[0], av[1], av[2], dv[c * K], dv[c * K + 1],
                                     K == 3 ? dv[c * K + K - 1] : acc_t(0));
        }
      }
      Vec vsb(0);
      for (int64_t j = 0; j < Cp; j += W) vsb = vsb + Vec::loadu(zb + j) * Vec::loadu(bb + j);
      sb = Vec(hsum_v(vsb) * inv_sz);
    }

    // E: grad_gen, grad_other
    const Vec kdg(kd_scale * T), vinv_sz(inv_sz);
    for (int64_t j = 0; j < Cp; j += W) {
      Vec ds(0), dt(0);
      if (kd) {
        Vec ps, pt, lps, lpt;
        kd_elem(j, ps, pt, lps, lpt);
        kd_div_grads(div, ps, pt, lps, lpt, vbeta, one, Vec(kd_t), Vec(kd_s), ds, dt);
      }
      if (gg_out) {
        adv_distill_grad_gen(Vec::loadu(zb + j) * vinv_sz, Vec::loadu(bb + j), sb, inv_tau, kdg * ds)
            .store(gbuf + j);
      }
      if (go_out) (kdg * dt).store(obuf + j);
    }
    if (gg_out) from_acc(gbuf, gg_out + n * C, C);
    if (go_out) from_acc(obuf, go_out + n * C, C);
  }
}

template <typename scalar_t>
void distill_rows_impl(const AdvDistillArgs& a, int64_t begin, int64_t end) {
  if (a.K == 3) {
    distill_rows_k<scalar_t, 3>(a, begin, end);
  } else {
    distill_rows_k<scalar_t, 2>(a, begin, end);
  }
}

void adv_distill_rows(const AdvDistillArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case AdvDType::Float: return distill_rows_impl<float>(a, begin, end);
    case AdvDType::Double: return distill_rows_impl<double>(a, begin, end);
    case AdvDType::Half: return distill_rows_impl<c10::Half>(a, begin, end);
    case AdvDType::BFloat16: return distill_rows_impl<c10::BFloat16>(a, begin, end);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace adkernels::cpu
