// CUDA registration and kernel of topk_kd_fwd: one thread block per row. Same contract and
// checks as csrc/cpu/topk_kd_cpu.cpp (topk_kd_host.h); the formulas are kd_math.h's (kl_term,
// topk_teacher_tail, topk_student_tail_log, ce_value), in float
// (double for double inputs). Half / bfloat16 are converted on load.
//
// Per row (no row buffer; the row is re-read, from L2 where the rows in flight fit):
//   1  max m of z (when the CE or the bucket needs the whole row)
//   2  S = sum exp(z - m) in double, sum of z for label smoothing
//   3  the k support columns: maxima of the bins z and lt, the support's share of S (the same
//      float exponentials, so total - support cancels exactly to double rounding), the
//      teacher's mass, the tail bins (bucket); then the bins' sums of exp((x - max) / T)
//   4  the KL sum over the support
//   5  dense gradient (CE part, tail share), a block barrier, then the support columns
//      overwritten with alpha T (u - q) + their CE part
// Targets and ids are not checked on the host (that would synchronize): topk_kd_loss checks
// them eagerly; a row whose target is out of range comes out NaN.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <adkernels/kd_math.h>
#include <adkernels/topk_kd_host.h>

#include "block_all.cuh"

#include <limits>

namespace adkernels::cuda {
namespace {

template <typename acc_t>
struct TopkParams {
  acc_t temperature, alpha, label_smoothing;
  int64_t ignore_index, tail;
};

template <typename scalar_t, typename acc_t, int THREADS>
__global__ void topk_kd_fwd_kernel(const scalar_t* __restrict__ student, const int64_t* __restrict__ ids_all,
                                   const acc_t* __restrict__ lt_all, const int64_t* __restrict__ target,
                                   acc_t* __restrict__ loss, scalar_t* __restrict__ grad, int64_t V, int64_t K,
                                   TopkParams<acc_t> p) {
  const int64_t row = blockIdx.x, tid = threadIdx.x;
  const scalar_t* z = student + row * V;
  const int64_t* ids = ids_all + row * K;
  const acc_t* lt = lt_all + row * K;
  scalar_t* g = grad ? grad + row * V : nullptr;

  const int64_t y = target ? target[row] : -1;
  const bool ignored = target && y == p.ignore_index;
  if (ignored || (target && (y < 0 || y >= V))) {
    const acc_t fill = ignored ? acc_t(0) : std::numeric_limits<acc_t>::quiet_NaN();
    if (tid == 0) loss[row] = fill;
    if (g)
      for (int64_t j = tid; j < V; j += THREADS) g[j] = static_cast<scalar_t>(fill);
    return;
  }
  const acc_t one(1), T = p.temperature, invT = one / T, alpha = p.alpha, ls = p.label_smoothing;
  const bool need_div = alpha > acc_t(0) && K > 0;
  const bool need_ce = alpha < one && target != nullptr;
  const bool bucket = need_div && p.tail == 1 && K < V;
  const acc_t kce = need_ce ? one - alpha : acc_t(0), kdiv = alpha * T;

  // 1, 2
  acc_t m = 0, zsum = 0;
  double S64 = 0;
  if (need_ce || bucket) {
    acc_t mx = -INFINITY;
    for (int64_t j = tid; j < V; j += THREADS) mx = ad_max(mx, static_cast<acc_t>(z[j]));
    mx = block_all<THREADS>(mx, MaxOp{});
    m = mx == -INFINITY ? acc_t(0) : mx;
    double s = 0;
    acc_t zs = 0;
    for (int64_t j = tid; j < V; j += THREADS) {
      const acc_t x = static_cast<acc_t>(z[j]);
      s += static_cast<double>(ad_exp(x - m));
      zs += x;
    }
    S64 = block_all<THREADS>(s, SumOp{});
    if (need_ce && ls > acc_t(0)) zsum = block_all<THREADS>(zs, SumOp{});
  }
  const acc_t S = static_cast<acc_t>(S64);
  const acc_t lse1 = m + ad_log(S);

  // 3, 4. Bin log-probabilities at T are (x - max) / T - log sum exp((. - max) / T): scaled after
  // subtracting the max, so that large logits keep their differences exact.
  acc_t mu = 0, mq = 0, log_su = 0, log_sq = 0, kl = 0, tail_coef = 0;
  if (need_div) {
    acc_t mzu = -INFINITY, mlq = -INFINITY, q_mass = 0;
    double supp = 0;
    for (int64_t k = tid; k < K; k += THREADS) {
      const acc_t zk = static_cast<acc_t>(z[ids[k]]);
      mzu = ad_max(mzu, zk);
      mlq = ad_max(mlq, lt[k]);
      q_mass += ad_exp(lt[k]);
      if (bucket) supp += static_cast<double>(ad_exp(zk - m));
    }
    mzu = block_all<THREADS>(mzu, MaxOp{});
    mlq = block_all<THREADS>(mlq, MaxOp{});
    q_mass = block_all<THREADS>(q_mass, SumOp{});
    acc_t tail_log = -INFINITY, lq_tail = -INFINITY, s_tail = 0;
    if (bucket) {
      supp = block_all<THREADS>(supp, SumOp{});
      const double rest = S64 - supp;
      s_tail = rest > 0 ? static_cast<acc_t>(rest) : acc_t(0);
      tail_log = topk_student_tail_log(m, s_tail, acc_t(0));
      lq_tail = ad_log(topk_teacher_tail(q_mass));
      mzu = ad_max(mzu, tail_log);
      mlq = ad_max(mlq, lq_tail);
    }
    mu = mzu == -INFINITY ? acc_t(0) : mzu;
    mq = mlq == -INFINITY ? acc_t(0) : mlq;
    acc_t sums[2] = {0, 0};
    for (int64_t k = tid; k < K; k += THREADS) {
      sums[0] += ad_exp((static_cast<acc_t>(z[ids[k]]) - mu) * invT);
      sums[1] += ad_exp((lt[k] - mq) * invT);
    }
    acc_t su = block_all<THREADS>(sums[0], SumOp{}), sq = block_all<THREADS>(sums[1], SumOp{});
    if (bucket) {
      su += ad_exp((tail_log - mu) * invT);
      sq += ad_exp((lq_tail - mq) * invT);
    }
    log_su = ad_log(su);
    log_sq = ad_log(sq);
    acc_t part = 0;
    for (int64_t k = tid; k < K; k += THREADS) {
      const acc_t lu = (static_cast<acc_t>(z[ids[k]]) - mu) * invT - log_su, lq = (lt[k] - mq) * invT - log_sq;
      part += kl_term(ad_exp(lq), lq, lu);
    }
    kl = block_all<THREADS>(part, SumOp{});
    if (bucket) {
      const acc_t lu = (tail_log - mu) * invT - log_su, lq = (lq_tail - mq) * invT - log_sq, qt = ad_exp(lq);
      kl += kl_term(qt, lq, lu);
      if (s_tail > acc_t(0)) tail_coef = kdiv * (ad_exp(lu) - qt) / s_tail;
    }
  }
  if (tid == 0) {
    acc_t value(0);
    if (need_div) value += alpha * T * T * kl;
    if (need_ce) value += kce * ce_value(lse1, static_cast<acc_t>(z[y]), zsum, ls, V);
    loss[row] = value;
  }

  // 5
  if (g) {
    const acc_t smooth = ls / acc_t(V), hit = kce * (one - ls);
    const bool dense = need_ce || bucket;
    const acc_t c = dense ? kce / S + tail_coef : acc_t(0);
    for (int64_t j = tid; j < V; j += THREADS) {
      acc_t gj = 0;
      if (dense) {
        gj = c * ad_exp(static_cast<acc_t>(z[j]) - m) - kce * smooth;
        if (j == y) gj -= hit;
      }
      g[j] = static_cast<scalar_t>(gj);
    }
    if (need_div) {
      __syncthreads();  // the support columns below overwrite values other threads wrote above
      for (int64_t k = tid; k < K; k += THREADS) {
        const int64_t c_id = ids[k];
        const acc_t zk = static_cast<acc_t>(z[c_id]);
        acc_t gk = kdiv * (ad_exp((zk - mu) * invT - log_su) - ad_exp((lt[k] - mq) * invT - log_sq));
        if (need_ce) {
          gk += kce * (ad_exp(zk - m) / S - smooth);
          if (c_id == y) gk -= hit;
        }
        g[c_id] = static_cast<scalar_t>(gk);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> topk_kd_fwd_cuda(const at::Tensor& student, const at::Tensor& ids,
                                                    const at::Tensor& teacher_logprobs,
                                                    const std::optional<at::Tensor>& target, double temperature,
                                                    double alpha, int64_t ignore_index, double label_smoothing,
                                                    int64_t tail, bool grad_student) {
  TORCH_CHECK(student.is_cuda(), "topk_kd_fwd: expected CUDA tensors, got ", student.device());
  const c10::cuda::CUDAGuard guard(student.device());
  auto [loss, gs] = topk_kd_fwd_prepare(student, ids, teacher_logprobs, target, temperature, tail, grad_student);
  const int64_t N = student.size(0), V = student.size(1), K = ids.size(1);
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "topk_kd_fwd: too many rows (", N, ") for one launch");
  if (N == 0 || V == 0) return {loss, gs};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "topk_kd_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const TopkParams<acc_t> p{static_cast<acc_t>(temperature), static_cast<acc_t>(alpha),
                              static_cast<acc_t>(label_smoothing), ignore_index, tail};
    const auto* z = student.const_data_ptr<scalar_t>();
    const auto* id = ids.const_data_ptr<int64_t>();
    const auto* lt = teacher_logprobs.const_data_ptr<acc_t>();
    const int64_t* tg = target.has_value() ? target->const_data_ptr<int64_t>() : nullptr;
    auto* l = loss.mutable_data_ptr<acc_t>();
    auto* g = grad_student ? gs.mutable_data_ptr<scalar_t>() : nullptr;
    if (V >= 8192) {
      topk_kd_fwd_kernel<scalar_t, acc_t, 512><<<static_cast<unsigned>(N), 512, 0, stream>>>(z, id, lt, tg, l, g, V, K, p);
    } else {
      topk_kd_fwd_kernel<scalar_t, acc_t, 128><<<static_cast<unsigned>(N), 128, 0, stream>>>(z, id, lt, tg, l, g, V, K, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, gs};
}

}  // namespace

TORCH_LIBRARY_IMPL(adkernels, CUDA, m) { m.impl("topk_kd_fwd", &topk_kd_fwd_cuda); }

}  // namespace adkernels::cuda
