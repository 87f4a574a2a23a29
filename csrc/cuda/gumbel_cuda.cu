// CUDA registration and kernels of gumbel_softmax_fwd / gumbel_softmax_bwd. Same contract and
// checks as csrc/cpu/gumbel_cpu.cpp; the noise and formulas are philox.h / gumbel_math.h's
// (gumbel_noise: the same u as the CPU and Triton kernels for the same (seed, offset, element)).
// tau and seed_offset are read on the device (no host sync; a new tau is data, not a recompile).
//
// One block per row. Forward: pass 1 per thread an online (max, sum of exp) of z = (x + g) / tau
// over a strided slice of the row, plus the first argmax for hard; block merge; pass 2
// regenerates the noise and writes y (hard: the one-hot, and the soft y when saved). Backward:
// dot = sum(dy * y) by block reduction, then dx = y * (dy - dot) / tau.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <adkernels/gumbel_math.h>

#include <cmath>
#include <limits>
#include <tuple>

namespace adkernels::cuda {
namespace {

constexpr int kWarp = 32;

int threads_for(int64_t V) { return V >= 2048 ? 512 : V >= 256 ? 128 : 32; }

// Block-wide merge of per-thread (max, sum, argmax); every thread gets the result.
template <typename acc_t>
__device__ void block_merge(acc_t& m, acc_t& s, int64_t& arg, acc_t* sm, acc_t* ss, int64_t* sa) {
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const acc_t m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const acc_t s2 = __shfl_xor_sync(0xffffffffu, s, off);
    const int64_t a2 = __shfl_xor_sync(0xffffffffu, arg, off);
    if (m2 > m || (m2 == m && a2 < arg)) arg = a2;
    online_merge(m, s, m2, s2);
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
    sa[warp] = arg;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t M = sm[0], S = ss[0];
    int64_t A = sa[0];
    for (int w = 1; w < warps; ++w) {
      if (sm[w] > M || (sm[w] == M && sa[w] < A)) A = sa[w];
      online_merge(M, S, sm[w], ss[w]);
    }
    sm[0] = M;
    ss[0] = S;
    sa[0] = A;
  }
  __syncthreads();
  m = sm[0];
  s = ss[0];
  arg = sa[0];
}

template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* smem) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t t = smem[0];
    for (int w = 1; w < warps; ++w) t += smem[w];
    smem[0] = t;
  }
  __syncthreads();
  return smem[0];
}

template <typename scalar_t, typename acc_t>
__global__ void gumbel_fwd_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                  scalar_t* __restrict__ y_soft, const acc_t* __restrict__ tau,
                                  const int64_t* __restrict__ seed_offset, int64_t V, bool hard) {
  __shared__ acc_t sm[32], ss[32];
  __shared__ int64_t sa[32];
  const uint64_t seed = static_cast<uint64_t>(seed_offset[0]), offset = static_cast<uint64_t>(seed_offset[1]);
  const acc_t inv = acc_t(1) / tau[0];
  const int64_t row = blockIdx.x, base = row * V;
  acc_t m = -INFINITY, s = 0;
  int64_t arg = V;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const acc_t g = gumbel_noise<acc_t>(seed, offset, static_cast<uint64_t>(base + j));
    const acc_t z = gumbel_logit(static_cast<acc_t>(x[base + j]), g, inv);
    if (z > m) arg = j;  // first index of this thread's max (j increases)
    online_add(m, s, z);
  }
  block_merge(m, s, arg, sm, ss, sa);
  const acc_t rs = acc_t(1) / s;
  scalar_t* soft = hard ? y_soft : y;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    if (hard) y[base + j] = static_cast<scalar_t>(j == arg ? 1 : 0);
    if (soft != nullptr) {
      const acc_t g = gumbel_noise<acc_t>(seed, offset, static_cast<uint64_t>(base + j));
      const acc_t z = gumbel_logit(static_cast<acc_t>(x[base + j]), g, inv);
      soft[base + j] = static_cast<scalar_t>(ad_exp(z - m) * rs);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void gumbel_bwd_kernel(const scalar_t* __restrict__ y, const scalar_t* __restrict__ dy,
                                  scalar_t* __restrict__ dx, const acc_t* __restrict__ tau, int64_t V) {
  __shared__ acc_t smem[32];
  const acc_t inv = acc_t(1) / tau[0];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * V;
  acc_t v = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    v += static_cast<acc_t>(y[base + j]) * static_cast<acc_t>(dy[base + j]);
  }
  const acc_t dot = block_sum(v, smem);
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    dx[base + j] = static_cast<scalar_t>(
        gumbel_softmax_grad(static_cast<acc_t>(y[base + j]), static_cast<acc_t>(dy[base + j]), dot, inv));
  }
}

void check_tau(const char* op, const at::Tensor& tau, const at::Tensor& x) {
  const auto want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(tau.numel() == 1 && tau.scalar_type() == want && tau.device() == x.device(), op,
              ": tau must be a one-element ", want, " tensor on ", x.device(), ", got ", tau.sizes(), " ",
              tau.scalar_type(), " on ", tau.device());
}

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_fwd_cuda(const at::Tensor& logits, const at::Tensor& tau,
                                                           const at::Tensor& seed_offset, bool hard, bool save_soft) {
  const char* op = "gumbel_softmax_fwd";
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.is_cuda(), op,
              ": logits must be a contiguous [N, V] CUDA tensor, got ", logits.sizes());
  check_tau(op, tau, logits);
  TORCH_CHECK(seed_offset.numel() == 2 && seed_offset.scalar_type() == at::kLong && seed_offset.is_contiguous() &&
                  seed_offset.device() == logits.device(),
              op, ": seed_offset must be a contiguous int64 tensor of 2 elements on the logits' device");
  auto y = at::empty_like(logits);
  const bool keep = hard && save_soft;
  auto y_soft = keep ? at::empty_like(logits) : logits.new_empty({0});
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0 || V == 0) return {y, y_soft};
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), op, ": too many rows for one launch");
  const c10::cuda::CUDAGuard guard(logits.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "gumbel_softmax_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gumbel_fwd_kernel<scalar_t, acc_t><<<static_cast<unsigned>(N), threads_for(V), 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
        keep ? y_soft.mutable_data_ptr<scalar_t>() : nullptr, tau.const_data_ptr<acc_t>(),
        seed_offset.const_data_ptr<int64_t>(), V, hard);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, y_soft};
}

at::Tensor gumbel_softmax_bwd_cuda(const at::Tensor& y, const at::Tensor& grad_y, const at::Tensor& tau) {
  const char* op = "gumbel_softmax_bwd";
  TORCH_CHECK(y.dim() == 2 && y.is_contiguous() && y.is_cuda(), op, ": y must be a contiguous [N, V] CUDA tensor");
  TORCH_CHECK(grad_y.sizes() == y.sizes() && grad_y.scalar_type() == y.scalar_type() && grad_y.is_contiguous() &&
                  grad_y.device() == y.device(),
              op, ": grad_y must be contiguous with y's shape, dtype and device");
  check_tau(op, tau, y);
  auto dx = at::empty_like(y);
  const int64_t N = y.size(0), V = y.size(1);
  if (N == 0 || V == 0) return dx;
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), op, ": too many rows for one launch");
  const c10::cuda::CUDAGuard guard(y.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "gumbel_softmax_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gumbel_bwd_kernel<scalar_t, acc_t><<<static_cast<unsigned>(N), threads_for(V), 0, stream>>>(
        y.const_data_ptr<scalar_t>(), grad_y.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
        tau.const_data_ptr<acc_t>(), V);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(adkernels, CUDA, m) {
  m.impl("gumbel_softmax_fwd", &gumbel_softmax_fwd_cuda);
  m.impl("gumbel_softmax_bwd", &gumbel_softmax_bwd_cuda);
}

}  // namespace adkernels::cuda
