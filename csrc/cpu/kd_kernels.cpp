// CPU KD-loss kernel, compiled once per instruction set (setup.py instantiates this file as
// build/isa/kd_kernels_isa_<name>.cpp with CPU_CAPABILITY set). Formulas: kd_math.h.
//
// Per row (row buffers stay in L1/L2; logits are read from memory once):
//   A  load (bf16/fp16 converted once into fp32), max of z_s and z_t, sum z_s if smoothing
//   B  e = exp((z - max) / T) stored for both, their sums; sum exp(z_s - max) if T != 1 (CE)
//   C  the divergence's two sums (needs the normalizers of B); folded into D when the
//      gradients asked for don't need them (kl + student gradient: the common case)
//   D  gradients (need the sums of C), written in the input dtype
// exp count per element: 2 (3 with CE at T != 1); log: 0 for kl / reverse_kl, 2 for jsd.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <adkernels/vec_math.h>  // before kd_math.h: its templates must see these overloads
#include <adkernels/kd_math.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstring>
#include <memory>
#include <type_traits>

#include "kd_args.h"
#include "vec_loop.h"

namespace adkernels::cpu {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename scalar_t>
void kd_rows_impl(const KdArgs& a, int64_t begin, int64_t end) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  using Vec = Vectorized<acc_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t V = a.V;
  const acc_t T = static_cast<acc_t>(a.temperature), invT = acc_t(1) / T;
  const acc_t alpha = static_cast<acc_t>(a.alpha), beta = static_cast<acc_t>(a.beta);
  const acc_t ls = static_cast<acc_t>(a.label_smoothing);
  const int64_t div = a.divergence;
  const bool need_div = alpha > acc_t(0);
  const bool need_ce = alpha < acc_t(1) && a.target != nullptr;
  const bool same_T = T == acc_t(1);

  // Row buffers: converted logits (low precision only), exponentials, fp32 gradients.
  const int64_t nbuf = 3 + (kConvert ? 4 : 0);
  std::unique_ptr<acc_t[]> buffer(new acc_t[nbuf * V]);
  acc_t* es = buffer.get();
  acc_t* et = es + V;
  acc_t* e1 = et + V;  // exp(z_s - max) at temperature 1, for CE when T != 1
  acc_t* zs_buf = kConvert ? e1 + V : nullptr;
  acc_t* zt_buf = kConvert ? zs_buf + V : nullptr;
  acc_t* gs_buf = kConvert ? zt_buf + V : nullptr;
  acc_t* gt_buf = kConvert ? gs_buf + V : nullptr;

  auto* loss = static_cast<acc_t*>(a.loss);
  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* s_in = static_cast<const scalar_t*>(a.student) + n * V;
    const scalar_t* t_in = static_cast<const scalar_t*>(a.teacher) + n * V;
    scalar_t* gs_out = a.grad_student ? static_cast<scalar_t*>(a.grad_student) + n * V : nullptr;
    scalar_t* gt_out = a.grad_teacher ? static_cast<scalar_t*>(a.grad_teacher) + n * V : nullptr;
    const int64_t y = a.target ? a.target[n] : -1;
    if (a.target && y == a.ignore_index) {
      loss[n] = acc_t(0);
      if (gs_out) std::memset(static_cast<void*>(gs_out), 0, sizeof(scalar_t) * V);
      if (gt_out) std::memset(static_cast<void*>(gt_out), 0, sizeof(scalar_t) * V);
      continue;
    }
    const acc_t* zs;
    const acc_t* zt;
    if constexpr (kConvert) {
      at::vec::convert(s_in, zs_buf, V);
      if (need_div) at::vec::convert(t_in, zt_buf, V);
      zs = zs_buf;
      zt = zt_buf;
    } else {
      zs = s_in;
      zt = t_in;
    }
    acc_t* gs = !gs_out ? nullptr : kConvert ? gs_buf : reinterpret_cast<acc_t*>(gs_out);
    acc_t* gt = !gt_out ? nullptr : kConvert ? gt_buf : reinterpret_cast<acc_t*>(gt_out);

    // A: maxima (and the sum of z_s for label smoothing)
    const bool need_zsum = need_ce && ls > acc_t(0);
    Vec vms(-INFINITY), vmt(-INFINITY), vzsum(0);
    acc_t ms = -INFINITY, mt = -INFINITY, zsum = 0;
    for_each_elem<acc_t>(V, [&](auto tag, int64_t j) {
      auto x = load(tag, zs + j);
      if constexpr (std::is_same_v<decltype(tag), Tag<Vec>>) {
        vms = at::vec::maximum(vms, x);
        if (need_div) vmt = at::vec::maximum(vmt, load(tag, zt + j));
        if (need_zsum) vzsum = vzsum + x;
      } else {
        ms = ad_max(ms, x);
        if (need_div) mt = ad_max(mt, load(tag, zt + j));
        if (need_zsum) zsum += x;
      }
    });
    ms = ad_max(ms, hmax(vms));
    mt = ad_max(mt, hmax(vmt));
    zsum += hsum(vzsum);

    // B: exponentials at temperature T (stored) and at temperature 1 (CE, summed only)
    const bool need_e1 = need_ce && !same_T;
    const bool need_es = need_div || (need_ce && same_T);
    Vec vss(0), vst(0), vs1(0);
    acc_t ss = 0, st = 0, s1 = 0;
    for_each_elem<acc_t>(V, [&](auto tag, int64_t j) {
      using VT = typename std::decay_t<decltype(load(tag, zs))>;
      auto x = load(tag, zs + j);
      if (need_es) {
        auto e = ad_exp((x - VT(ms)) * VT(invT));
        store(es + j, e);
        if constexpr (std::is_same_v<VT, Vec>) vss = vss + e; else ss += e;
      }
      if (need_div) {
        auto e = ad_exp((load(tag, zt + j) - VT(mt)) * VT(invT));
        store(et + j, e);
        if constexpr (std::is_same_v<VT, Vec>) vst = vst + e; else st += e;
      }
      if (need_e1) {
        auto e = ad_exp(x - VT(ms));
        store(e1 + j, e);
        if constexpr (std::is_same_v<VT, Vec>) vs1 = vs1 + e; else s1 += e;
      }
    });
    ss += hsum(vss);
    st += hsum(vst);
    s1 += hsum(vs1);
    const acc_t log_ss = ad_log(ss), log_st = ad_log(st);
    const acc_t inv_ss = acc_t(1) / ss, inv_st = acc_t(1) / st;

    // C: divergence sums. When the gradients asked for do not depend on them (kl with the
    // student gradient only, reverse_kl with the teacher's only), they are summed in D instead.
    const bool fuse_cd = need_div && ((div == KL && !gt) || (div == REVERSE_KL && !gs)) && (gs || gt);
    acc_t acc_t_sum = 0, acc_s_sum = 0;
    if (need_div && !fuse_cd) {
      Vec vat(0), vas(0);
      for_each_elem<acc_t>(V, [&](auto tag, int64_t j) {
        using VT = typename std::decay_t<decltype(load(tag, zs))>;
        auto ps = load(tag, es + j) * VT(inv_ss);
        auto pt = load(tag, et + j) * VT(inv_st);
        auto lps = (load(tag, zs + j) - VT(ms)) * VT(invT) - VT(log_ss);
        auto lpt = (load(tag, zt + j) - VT(mt)) * VT(invT) - VT(log_st);
        if constexpr (std::is_same_v<VT, Vec>) {
          kd_div_terms(div, ps, pt, lps, lpt, Vec(beta), Vec(1), vat, vas);
        } else {
          kd_div_terms(div, ps, pt, lps, lpt, beta, acc_t(1), acc_t_sum, acc_s_sum);
        }
      });
      acc_t_sum += hsum(vat);
      acc_s_sum += hsum(vas);
    }

    // D: gradients
    if (gs || gt) {
      Vec vat(0), vas(0);
      const acc_t kdiv = alpha * T, kce = acc_t(1) - alpha, smooth = ls / acc_t(V);
      const acc_t inv_s1 = same_T ? inv_ss : acc_t(1) / s1;
      for_each_elem<acc_t>(V, [&](auto tag, int64_t j) {
        using VT = typename std::decay_t<decltype(load(tag, zs))>;
        VT g_s(0), g_t(0);
        if (need_div) {
          auto ps = load(tag, es + j) * VT(inv_ss);
          auto pt = load(tag, et + j) * VT(inv_st);
          auto lps = (load(tag, zs + j) - VT(ms)) * VT(invT) - VT(log_ss);
          auto lpt = (load(tag, zt + j) - VT(mt)) * VT(invT) - VT(log_st);
          VT ds, dt;
          if (fuse_cd) {
            if constexpr (std::is_same_v<VT, Vec>) {
              kd_div_terms(div, ps, pt, lps, lpt, Vec(beta), Vec(1), vat, vas);
            } else {
              kd_div_terms(div, ps, pt, lps, lpt, beta, acc_t(1), acc_t_sum, acc_s_sum);
            }
          }
          kd_div_grads(div, ps, pt, lps, lpt, VT(beta), VT(1), VT(acc_t_sum), VT(acc_s_sum), ds, dt);
          g_s = VT(kdiv) * ds;
          g_t = VT(kdiv) * dt;
        }
        if (need_ce) {
          auto q = load(tag, (same_T ? es : e1) + j) * VT(same_T ? inv_ss : inv_s1);
          g_s = g_s + VT(kce) * (q - VT(smooth));
        }
        if (gs) store(gs + j, g_s);
        if (gt) store(gt + j, g_t);
      });
      if (gs && need_ce) gs[y] -= kce * (acc_t(1) - ls);
      if constexpr (kConvert) {
        if (gs) at::vec::convert(gs, gs_out, V);
        if (gt) at::vec::convert(gt, gt_out, V);
      }
      if (fuse_cd) {
        acc_t_sum += hsum(vat);
        acc_s_sum += hsum(vas);
      }
    }

    // Loss row
    acc_t row = 0;
    if (need_div) row += alpha * T * T * kd_div_value(div, acc_t_sum, acc_s_sum, beta);
    const acc_t lse1 = same_T ? ms + log_ss : ms + ad_log(s1);
    if (need_ce) row += (acc_t(1) - alpha) * ce_value(lse1, zs[y], zsum, ls, V);
    loss[n] = row;
  }
}

void kd_rows(const KdArgs& a, int64_t begin, int64_t end) {
  switch (a.dtype) {
    case DType::Float: return kd_rows_impl<float>(a, begin, end);
    case DType::Double: return kd_rows_impl<double>(a, begin, end);
    case DType::Half: return kd_rows_impl<c10::Half>(a, begin, end);
    case DType::BFloat16: return kd_rows_impl<c10::BFloat16>(a, begin, end);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace adkernels::cpu
