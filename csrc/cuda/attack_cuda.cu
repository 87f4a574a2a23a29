// CUDA registration and kernels of sign_step / pgd_step (functional and in-place). Same
// contract and checks as csrc/cpu/attack_cpu.cpp; the formulas are attack_math.h's, called with
// scalar float (double for double x). grad may be half / bfloat16 / float / double and is
// converted on load.
//
//   sign / linf: one grid-stride pass over the flattened [N * D] tensor (step / eps gathered per
//                sample, bounds per element as bound[(i / inner) % B]).
//   l2:          (1) partial sums (||g||^2, <d, g>, ||d||^2) of `chunks` slices of every sample,
//                    one block per slice, written to [N, chunks, 3] (no atomics: deterministic);
//                (2) one block per slice again: thread 0 adds its sample's partials in a fixed
//                    order, computes (coef, scale), and the block writes its slice.
//                Many slices per sample keep the GPU busy at small N with large images.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <adkernels/attack_math.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

namespace adkernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;

enum Kind : int { SIGN = 0, LINF = 1, L2 = 2 };

template <typename acc_t>
struct Bounds {
  const acc_t* lo;
  const acc_t* hi;
  int64_t B, inner;
};

// The bounds of element i (+-inf without bounds: the clamp is then a no-op).
template <bool kBounds, typename acc_t>
__device__ __forceinline__ void bounds_of(int64_t i, const Bounds<acc_t>& b, acc_t& lo, acc_t& hi) {
  if constexpr (kBounds) {
    const int64_t k = (i / b.inner) % b.B;
    lo = b.lo[k];
    hi = b.hi[k];
  } else {
    lo = -acc_t(INFINITY);
    hi = acc_t(INFINITY);
  }
}

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <int K, bool kBounds, typename x_t, typename g_t>
__global__ void pointwise_kernel(const x_t* x, const g_t* __restrict__ grad, const x_t* __restrict__ x_nat,
                                 x_t* out, const x_t* __restrict__ step, const x_t* __restrict__ eps,
                                 Bounds<x_t> b, int64_t total, int64_t D) {
  // out may be x itself (in-place form): each element is read, then written, by one thread.
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t n = i / D;
    const x_t g = static_cast<x_t>(grad[i]);
    x_t lo, hi;
    bounds_of<kBounds>(i, b, lo, hi);
    if constexpr (K == SIGN) {
      out[i] = sign_step_value(x[i], g, step[n], lo, hi);
    } else {
      out[i] = pgd_linf_value(x[i], g, x_nat[i], step[n], eps[n], lo, hi);
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ void block_sum3(acc_t (&v)[3], acc_t* smem) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
#pragma unroll
    for (int k = 0; k < 3; ++k) v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < 3; ++k) smem[warp * 3 + k] = v[k];
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 0; k < 3; ++k) {
      acc_t s = smem[k];
      for (int w = 1; w < warps; ++w) s += smem[w * 3 + k];
      v[k] = s;
    }
  }
}

template <typename x_t, typename g_t>
__global__ void l2_partial_kernel(const x_t* __restrict__ x, const g_t* __restrict__ grad,
                                  const x_t* __restrict__ x_nat, x_t* __restrict__ partial, int64_t D,
                                  int64_t chunks, int64_t chunk_len) {
  __shared__ x_t smem[(kThreads / kWarp) * 3];
  const int64_t n = blockIdx.x / chunks, c = blockIdx.x % chunks;
  const int64_t begin = n * D + c * chunk_len, end = n * D + imin(D, (c + 1) * chunk_len);
  x_t v[3] = {0, 0, 0};
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    pgd_l2_terms(x[i], static_cast<x_t>(grad[i]), x_nat[i], v[0], v[1], v[2]);
  }
  block_sum3(v, smem);
  if (threadIdx.x == 0) {
    for (int k = 0; k < 3; ++k) partial[blockIdx.x * 3 + k] = v[k];
  }
}

template <bool kBounds, typename x_t, typename g_t>
__global__ void l2_apply_kernel(const x_t* x, const g_t* __restrict__ grad, const x_t* __restrict__ x_nat,
                                x_t* out, const x_t* __restrict__ step, const x_t* __restrict__ eps,
                                const x_t* __restrict__ partial, Bounds<x_t> b, int64_t D, int64_t chunks,
                                int64_t chunk_len) {
  __shared__ x_t coefs[2];
  const int64_t n = blockIdx.x / chunks, c = blockIdx.x % chunks;
  if (threadIdx.x == 0) {
    x_t gg = 0, dg = 0, dd = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      const x_t* p = partial + (n * chunks + k) * 3;
      gg += p[0];
      dg += p[1];
      dd += p[2];
    }
    pgd_l2_coefs(gg, dg, dd, step[n], eps[n], coefs[0], coefs[1]);
  }
  __syncthreads();
  const x_t coef = coefs[0], scale = coefs[1];
  const int64_t begin = n * D + c * chunk_len, end = n * D + imin(D, (c + 1) * chunk_len);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    x_t lo, hi;
    bounds_of<kBounds>(i, b, lo, hi);
    out[i] = pgd_l2_value(x[i], static_cast<x_t>(grad[i]), x_nat[i], coef, scale, lo, hi);
  }
}

void check_args(const char* op, const at::Tensor& x, const at::Tensor& grad, const at::Tensor* x_nat,
                const at::Tensor& step, const at::Tensor* eps, const std::optional<at::Tensor>& lo,
                const std::optional<at::Tensor>& hi, int64_t bound_inner) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64 (keep the adversarial state in fp32), got ", x.scalar_type());
  const auto gd = grad.scalar_type();
  TORCH_CHECK(gd == at::kFloat || gd == at::kDouble || gd == at::kHalf || gd == at::kBFloat16, op,
              ": grad must be float32, float64, float16 or bfloat16, got ", gd);
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad must have x's shape ", x.sizes(), ", got ", grad.sizes());
  TORCH_CHECK(x.is_cuda(), op, ": expected CUDA tensors");
  const int64_t N = x.size(0);
  auto same_device = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  };
  same_device(x, "x");
  same_device(grad, "grad");
  for (auto [t, name] : {std::pair<const at::Tensor*, const char*>{&step, "step"}, {eps, "eps"}}) {
    if (!t) continue;
    same_device(*t, name);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == N && t->scalar_type() == x.scalar_type(), op, ": ", name,
                " must be [", N, "] of x's dtype, got ", t->sizes(), " ", t->scalar_type());
  }
  if (x_nat) {
    same_device(*x_nat, "x_nat");
    TORCH_CHECK(x_nat->sizes() == x.sizes() && x_nat->scalar_type() == x.scalar_type(), op,
                ": x_nat must have x_adv's shape and dtype");
  }
  TORCH_CHECK(lo.has_value() == hi.has_value(), op, ": pass both lo and hi or neither");
  if (lo.has_value()) {
    same_device(*lo, "lo");
    same_device(*hi, "hi");
    TORCH_CHECK(lo->dim() == 1 && lo->sizes() == hi->sizes() && lo->numel() >= 1 &&
                    lo->scalar_type() == x.scalar_type() && hi->scalar_type() == x.scalar_type(),
                op, ": lo and hi must be 1-d [B] tensors of x's dtype");
    TORCH_CHECK(bound_inner >= 1 && x.numel() % (lo->numel() * bound_inner) == 0, op, ": bounds of ",
                lo->numel(), " values every ", bound_inner, " elements do not tile x");
  }
}

int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

template <int K, bool kBounds, typename x_t, typename g_t>
void launch_pointwise(const x_t* xp, const g_t* gp, const x_t* xnp, x_t* op, const x_t* sp, const x_t* ep,
                      const Bounds<x_t>& b, int64_t total, int64_t D, cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(num_sms()) * 32);
  pointwise_kernel<K, kBounds, x_t, g_t><<<static_cast<unsigned>(std::max<int64_t>(blocks, 1)), kThreads, 0, stream>>>(
      xp, gp, xnp, op, sp, ep, b, total, D);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename x_t, typename g_t>
void launch_typed(int kind, const at::Tensor& x, const at::Tensor& grad, const at::Tensor* x_nat,
                  const at::Tensor& out, const at::Tensor& step, const at::Tensor* eps,
                  const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi, int64_t bound_inner) {
  const int64_t N = x.size(0), total = x.numel(), D = total / N;
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool has_bounds = lo.has_value();
  const Bounds<x_t> b{has_bounds ? lo->const_data_ptr<x_t>() : nullptr, has_bounds ? hi->const_data_ptr<x_t>() : nullptr,
                      has_bounds ? lo->numel() : 1, std::max<int64_t>(bound_inner, 1)};
  const x_t* xp = x.const_data_ptr<x_t>();
  const g_t* gp = grad.const_data_ptr<g_t>();
  const x_t* xnp = x_nat ? x_nat->const_data_ptr<x_t>() : nullptr;
  x_t* op = static_cast<x_t*>(out.data_ptr());
  const x_t* sp = step.const_data_ptr<x_t>();
  const x_t* ep = eps ? eps->const_data_ptr<x_t>() : nullptr;
  if (kind == SIGN) {
    if (has_bounds) launch_pointwise<SIGN, true>(xp, gp, xnp, op, sp, ep, b, total, D, stream);
    else launch_pointwise<SIGN, false>(xp, gp, xnp, op, sp, ep, b, total, D, stream);
    return;
  }
  if (kind == LINF) {
    if (has_bounds) launch_pointwise<LINF, true>(xp, gp, xnp, op, sp, ep, b, total, D, stream);
    else launch_pointwise<LINF, false>(xp, gp, xnp, op, sp, ep, b, total, D, stream);
    return;
  }
  // l2: enough slices per sample for ~4 blocks per SM, each slice at least 4 elements per thread.
  const int64_t want = std::max<int64_t>(1, (4 * num_sms() + N - 1) / N);
  const int64_t chunks = std::min<int64_t>({want, 256, std::max<int64_t>(1, D / (kThreads * 4))});
  const int64_t chunk_len = (D + chunks - 1) / chunks;
  TORCH_CHECK(N * chunks <= std::numeric_limits<int32_t>::max(), "pgd_step: batch of ", N, " too large for one launch");
  auto partial = at::empty({N * chunks * 3}, x.options());
  const unsigned blocks = static_cast<unsigned>(N * chunks);
  l2_partial_kernel<x_t, g_t><<<blocks, kThreads, 0, stream>>>(xp, gp, xnp, partial.mutable_data_ptr<x_t>(), D,
                                                                chunks, chunk_len);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (has_bounds) {
    l2_apply_kernel<true, x_t, g_t><<<blocks, kThreads, 0, stream>>>(xp, gp, xnp, op, sp, ep,
                                                                     partial.const_data_ptr<x_t>(), b, D, chunks, chunk_len);
  } else {
    l2_apply_kernel<false, x_t, g_t><<<blocks, kThreads, 0, stream>>>(xp, gp, xnp, op, sp, ep,
                                                                      partial.const_data_ptr<x_t>(), b, D, chunks, chunk_len);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// out may be x (in-place).
void launch(int kind, const at::Tensor& x, const at::Tensor& grad, const at::Tensor* x_nat, const at::Tensor& out,
            const at::Tensor& step, const at::Tensor* eps, const std::optional<at::Tensor>& lo,
            const std::optional<at::Tensor>& hi, int64_t bound_inner) {
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "attack_step_cuda", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "attack_step_cuda_grad", [&] {
      launch_typed<x_t, scalar_t>(kind, x, grad, x_nat, out, step, eps, lo, hi, bound_inner);
    });
  });
}

int pgd_kind(const char* op, int64_t norm) {
  TORCH_CHECK(norm == 0 || norm == 1, op, ": norm must be 0 (linf) or 1 (l2), got ", norm);
  return norm == 0 ? LINF : L2;
}

at::Tensor sign_step_cuda(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& step,
                          const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                          int64_t bound_inner) {
  check_args("sign_step", x, grad, nullptr, step, nullptr, lo, hi, bound_inner);
  auto out = at::empty_like(x);
  launch(SIGN, x, grad, nullptr, out, step, nullptr, lo, hi, bound_inner);
  return out;
}

void sign_step_inplace_cuda(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& step,
                            const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                            int64_t bound_inner) {
  check_args("sign_step_", x, grad, nullptr, step, nullptr, lo, hi, bound_inner);
  launch(SIGN, x, grad, nullptr, x, step, nullptr, lo, hi, bound_inner);
}

at::Tensor pgd_step_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                         const at::Tensor& step, const at::Tensor& eps, int64_t norm,
                         const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                         int64_t bound_inner) {
  const int kind = pgd_kind("pgd_step", norm);
  check_args("pgd_step", x_adv, grad, &x_nat, step, &eps, lo, hi, bound_inner);
  auto out = at::empty_like(x_adv);
  launch(kind, x_adv, grad, &x_nat, out, step, &eps, lo, hi, bound_inner);
  return out;
}

void pgd_step_inplace_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_nat,
                           const at::Tensor& step, const at::Tensor& eps, int64_t norm,
                           const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                           int64_t bound_inner) {
  const int kind = pgd_kind("pgd_step_", norm);
  check_args("pgd_step_", x_adv, grad, &x_nat, step, &eps, lo, hi, bound_inner);
  launch(kind, x_adv, grad, &x_nat, x_adv, step, &eps, lo, hi, bound_inner);
}

// ---- random_start ----------------------------------------------------------------------------------
// linf: one thread per Philox counter (four consecutive elements), x' = box(x + eps[n] * t).
// l2: one block per sample: ||z||^2 of the Box-Muller normals (block reduction), the scale, then
// a pass that regenerates z. The product is rounded before the add (__fmul_rn / __dmul_rn: no
// FMA contraction), as in the reference, so linf is bit-identical to it.

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <bool kBounds, typename x_t>
__global__ void random_linf_kernel(const x_t* x, x_t* out, const x_t* __restrict__ eps,
                                   const int64_t* __restrict__ seed_offset, Bounds<x_t> b, int64_t total, int64_t D) {
  const uint64_t seed = static_cast<uint64_t>(seed_offset[0]), offset = static_cast<uint64_t>(seed_offset[1]);
  const int64_t counters = (total + 3) / 4;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < counters; c += stride) {
    uint32_t bits[4];
    philox4x32_10(seed, offset + static_cast<uint64_t>(c), bits);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t i = c * 4 + lane;
      if (i >= total) break;
      x_t lo, hi;
      bounds_of<kBounds>(i, b, lo, hi);
      const x_t d = mul_rn(eps[i / D], random_linf_noise<x_t>(bits[lane]));
      out[i] = ad_clamp(x[i] + d, lo, hi);
    }
  }
}

template <bool kBounds, typename x_t>
__global__ void random_l2_kernel(const x_t* x, x_t* out, const x_t* __restrict__ eps,
                                 const int64_t* __restrict__ seed_offset, Bounds<x_t> b, int64_t D) {
  __shared__ x_t smem[(kThreads / kWarp) * 3];
  __shared__ x_t scale_s;
  const uint64_t seed = static_cast<uint64_t>(seed_offset[0]), offset = static_cast<uint64_t>(seed_offset[1]);
  const int64_t n = blockIdx.x, begin = n * D, end = begin + D;
  x_t v[3] = {0, 0, 0};
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const x_t z = random_start_noise<x_t, true>(seed, offset, static_cast<uint64_t>(i));
    v[0] += z * z;
  }
  block_sum3(v, smem);
  if (threadIdx.x == 0) scale_s = random_l2_scale<x_t>(seed, offset, n, D, v[0], eps[n]);
  __syncthreads();
  const x_t scale = scale_s;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    x_t lo, hi;
    bounds_of<kBounds>(i, b, lo, hi);
    const x_t d = mul_rn(scale, random_start_noise<x_t, true>(seed, offset, static_cast<uint64_t>(i)));
    out[i] = ad_clamp(x[i] + d, lo, hi);
  }
}

void check_random(const char* op, const at::Tensor& x, const at::Tensor& eps, const at::Tensor& seed_offset,
                  int64_t norm, const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                  int64_t bound_inner) {
  TORCH_CHECK(norm == 0 || norm == 1, op, ": norm must be 0 (linf) or 1 (l2), got ", norm);
  TORCH_CHECK(seed_offset.numel() == 2 && seed_offset.scalar_type() == at::kLong && seed_offset.is_contiguous() &&
                  seed_offset.device() == x.device(),
              op, ": seed_offset must be a contiguous int64 tensor of 2 elements on x's device");
  // x stands in for grad and eps for step: the shared checks cover x, eps and the bounds.
  check_args(op, x, x, nullptr, eps, nullptr, lo, hi, bound_inner);
}

void launch_random(const at::Tensor& x, const at::Tensor& out, const at::Tensor& eps, const at::Tensor& seed_offset,
                   int64_t norm, const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                   int64_t bound_inner) {
  if (x.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t N = x.size(0), total = x.numel(), D = total / N;
  const bool has_bounds = lo.has_value();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "random_start_cuda", [&] {
    using x_t = scalar_t;
    const Bounds<x_t> b{has_bounds ? lo->const_data_ptr<x_t>() : nullptr, has_bounds ? hi->const_data_ptr<x_t>() : nullptr,
                        has_bounds ? lo->numel() : 1, std::max<int64_t>(bound_inner, 1)};
    const x_t* xp = x.const_data_ptr<x_t>();
    x_t* op = static_cast<x_t*>(out.data_ptr());
    const x_t* ep = eps.const_data_ptr<x_t>();
    const int64_t* sp = seed_offset.const_data_ptr<int64_t>();
    if (norm == 0) {
      const int64_t counters = (total + 3) / 4;
      const unsigned blocks = static_cast<unsigned>(
          std::max<int64_t>(1, std::min<int64_t>((counters + kThreads - 1) / kThreads, int64_t(num_sms()) * 32)));
      if (has_bounds) random_linf_kernel<true, x_t><<<blocks, kThreads, 0, stream>>>(xp, op, ep, sp, b, total, D);
      else random_linf_kernel<false, x_t><<<blocks, kThreads, 0, stream>>>(xp, op, ep, sp, b, total, D);
    } else {
      TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "random_start: batch of ", N, " too large for one launch");
      const unsigned blocks = static_cast<unsigned>(N);
      if (has_bounds) random_l2_kernel<true, x_t><<<blocks, kThreads, 0, stream>>>(xp, op, ep, sp, b, D);
      else random_l2_kernel<false, x_t><<<blocks, kThreads, 0, stream>>>(xp, op, ep, sp, b, D);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor random_start_cuda(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& seed_offset, int64_t norm,
                             const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                             int64_t bound_inner) {
  check_random("random_start", x, eps, seed_offset, norm, lo, hi, bound_inner);
  auto out = at::empty_like(x);
  launch_random(x, out, eps, seed_offset, norm, lo, hi, bound_inner);
  return out;
}

void random_start_inplace_cuda(const at::Tensor& x, const at::Tensor& eps, const at::Tensor& seed_offset, int64_t norm,
                               const std::optional<at::Tensor>& lo, const std::optional<at::Tensor>& hi,
                               int64_t bound_inner) {
  check_random("random_start_", x, eps, seed_offset, norm, lo, hi, bound_inner);
  launch_random(x, x, eps, seed_offset, norm, lo, hi, bound_inner);
}

}  // namespace

TORCH_LIBRARY_IMPL(adkernels, CUDA, m) {
  m.impl("sign_step", &sign_step_cuda);
  m.impl("sign_step_", &sign_step_inplace_cuda);
  m.impl("pgd_step", &pgd_step_cuda);
  m.impl("pgd_step_", &pgd_step_inplace_cuda);
  m.impl("random_start", &random_start_cuda);
  m.impl("random_start_", &random_start_inplace_cuda);
}

}  // namespace adkernels::cuda
