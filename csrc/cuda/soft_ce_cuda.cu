// CUDA registration and kernels of soft_ce_fwd and ada_lab_targets: one thread block per row.
// Same contracts and checks as csrc/cpu/soft_ce_cpu.cpp (soft_ce_host.h); the formulas are
// kd_math.h's (soft_ce_*, ada_lab_*), in float (double for double inputs). Half / bfloat16 are
// converted on load.
//   soft_ce:  1  online max / sum of exp of z, sum q, sum q z      2  the gradients
//   ada_lab:  1  online max / sum of exp of z_adv and of z_aa / T, the max of z_adv without y
//             2  the targets
// Labels are not checked on the host (that would synchronize): ada_lab_targets checks them
// eagerly; a row whose label is out of range comes out NaN.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <adkernels/kd_math.h>
#include <adkernels/soft_ce_host.h>

#include "block_all.cuh"

#include <limits>

namespace adkernels::cuda {
namespace {

template <typename T>
struct MaxSum {
  T m, s;
};

struct MergeOp {
  template <typename T>
  __device__ __forceinline__ MaxSum<T> operator()(const MaxSum<T>& a, const MaxSum<T>& b) const {
    MaxSum<T> r = a;
    online_merge(r.m, r.s, b.m, b.s);
    return r;
  }
};

template <typename scalar_t, typename acc_t, int THREADS>
__global__ void soft_ce_kernel(const scalar_t* __restrict__ logits, const scalar_t* __restrict__ targets,
                               acc_t* __restrict__ loss, scalar_t* __restrict__ grad_logits,
                               scalar_t* __restrict__ grad_targets, int64_t V, acc_t gscale) {
  const int64_t row = blockIdx.x, tid = threadIdx.x;
  const scalar_t* z = logits + row * V;
  const scalar_t* q = targets + row * V;
  MaxSum<acc_t> st{-INFINITY, 0};
  acc_t qsum = 0, qz = 0;
  for (int64_t j = tid; j < V; j += THREADS) {
    const acc_t x = static_cast<acc_t>(z[j]), w = static_cast<acc_t>(q[j]);
    online_add(st.m, st.s, x);
    qsum += w;
    qz += soft_ce_qz(w, x);
  }
  st = block_all<THREADS>(st, MergeOp{});
  qsum = block_all<THREADS>(qsum, SumOp{});
  qz = block_all<THREADS>(qz, SumOp{});
  const acc_t lse = st.m + ad_log(st.s);
  if (tid == 0) loss[row] = soft_ce_value(lse, qsum, qz);
  if (grad_logits || grad_targets) {
    for (int64_t j = tid; j < V; j += THREADS) {
      const acc_t x = static_cast<acc_t>(z[j]), w = static_cast<acc_t>(q[j]);
      if (grad_logits)
        grad_logits[row * V + j] = static_cast<scalar_t>(gscale * soft_ce_grad_logit(ad_exp(x - lse), qsum, w));
      if (grad_targets) grad_targets[row * V + j] = static_cast<scalar_t>(gscale * soft_ce_grad_target(w, x, lse));
    }
  }
}

template <typename acc_t>
struct AdaLabParams {
  acc_t max_weight, gamma, bias, temperature;
};

template <typename scalar_t, typename acc_t, int THREADS>
__global__ void ada_lab_kernel(const scalar_t* __restrict__ logits_adv, const scalar_t* __restrict__ logits_aa,
                               const int64_t* __restrict__ target, scalar_t* __restrict__ out,
                               acc_t* __restrict__ weight, int64_t V, AdaLabParams<acc_t> p) {
  const int64_t row = blockIdx.x, tid = threadIdx.x;
  const scalar_t* za = logits_adv + row * V;
  const scalar_t* zb = logits_aa + row * V;
  scalar_t* o = out + row * V;
  const int64_t y = target[row];
  if (y < 0 || y >= V) {
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    if (tid == 0) weight[row] = nan;
    for (int64_t j = tid; j < V; j += THREADS) o[j] = static_cast<scalar_t>(nan);
    return;
  }
  const acc_t invT = acc_t(1) / p.temperature;
  MaxSum<acc_t> a{-INFINITY, 0}, b{-INFINITY, 0};
  acc_t other = -INFINITY;
  for (int64_t j = tid; j < V; j += THREADS) {
    const acc_t x = static_cast<acc_t>(za[j]);
    online_add(a.m, a.s, x);
    if (j != y) other = ad_max(other, x);
    online_add(b.m, b.s, static_cast<acc_t>(zb[j]) * invT);
  }
  a = block_all<THREADS>(a, MergeOp{});
  b = block_all<THREADS>(b, MergeOp{});
  other = block_all<THREADS>(other, MaxOp{});
  const acc_t lse_a = a.m + ad_log(a.s), lse_b = b.m + ad_log(b.s);
  const acc_t margin = ad_exp(static_cast<acc_t>(za[y]) - lse_a) - ad_exp(other - lse_a);
  const acc_t w = ada_lab_weight(margin, p.gamma, p.bias, p.max_weight);
  if (tid == 0) weight[row] = w;
  for (int64_t j = tid; j < V; j += THREADS) {
    const acc_t q = ad_exp(static_cast<acc_t>(zb[j]) * invT - lse_b);
    o[j] = static_cast<scalar_t>(ada_lab_target(j == y ? acc_t(1) : acc_t(0), w, q, acc_t(1)));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_ce_fwd_cuda(const at::Tensor& logits, const at::Tensor& targets,
                                                                bool grad_logits, bool grad_targets,
                                                                double grad_scale) {
  TORCH_CHECK(logits.is_cuda(), "soft_ce_fwd: expected CUDA tensors, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  auto [loss, gz, gq] = soft_ce_fwd_prepare(logits, targets, grad_logits, grad_targets);
  const int64_t N = logits.size(0), V = logits.size(1);
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "soft_ce_fwd: too many rows (", N, ") for one launch");
  if (N == 0 || V == 0) return {loss, gz, gq};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "soft_ce_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* zp = logits.const_data_ptr<scalar_t>();
    const auto* qp = targets.const_data_ptr<scalar_t>();
    auto* lp = loss.mutable_data_ptr<acc_t>();
    auto* gzp = grad_logits ? gz.mutable_data_ptr<scalar_t>() : nullptr;
    auto* gqp = grad_targets ? gq.mutable_data_ptr<scalar_t>() : nullptr;
    const acc_t gs = static_cast<acc_t>(grad_scale);
    if (V >= 8192) {
      soft_ce_kernel<scalar_t, acc_t, 512><<<static_cast<unsigned>(N), 512, 0, stream>>>(zp, qp, lp, gzp, gqp, V, gs);
    } else {
      soft_ce_kernel<scalar_t, acc_t, 128><<<static_cast<unsigned>(N), 128, 0, stream>>>(zp, qp, lp, gzp, gqp, V, gs);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, gz, gq};
}

std::tuple<at::Tensor, at::Tensor> ada_lab_targets_cuda(const at::Tensor& logits_adv, const at::Tensor& logits_aa,
                                                        const at::Tensor& target, double max_weight, double gamma,
                                                        double bias, double temperature) {
  TORCH_CHECK(logits_adv.is_cuda(), "ada_lab_targets: expected CUDA tensors, got ", logits_adv.device());
  const c10::cuda::CUDAGuard guard(logits_adv.device());
  auto [out, weight] = ada_lab_prepare(logits_adv, logits_aa, target, temperature);
  const int64_t N = logits_adv.size(0), V = logits_adv.size(1);
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "ada_lab_targets: too many rows (", N, ") for one launch");
  if (N == 0 || V == 0) return {out, weight};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits_adv.scalar_type(), "ada_lab_targets_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const AdaLabParams<acc_t> p{static_cast<acc_t>(max_weight), static_cast<acc_t>(gamma), static_cast<acc_t>(bias),
                                static_cast<acc_t>(temperature)};
    const auto* za = logits_adv.const_data_ptr<scalar_t>();
    const auto* zb = logits_aa.const_data_ptr<scalar_t>();
    const auto* y = target.const_data_ptr<int64_t>();
    auto* o = out.mutable_data_ptr<scalar_t>();
    auto* w = weight.mutable_data_ptr<acc_t>();
    if (V >= 8192) {
      ada_lab_kernel<scalar_t, acc_t, 512><<<static_cast<unsigned>(N), 512, 0, stream>>>(za, zb, y, o, w, V, p);
    } else {
      ada_lab_kernel<scalar_t, acc_t, 128><<<static_cast<unsigned>(N), 128, 0, stream>>>(za, zb, y, o, w, V, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(adkernels, CUDA, m) {
  m.impl("soft_ce_fwd", &soft_ce_fwd_cuda);
  m.impl("ada_lab_targets", &ada_lab_targets_cuda);
}

}  // namespace adkernels::cuda
