// CUDA registration and kernels of adv_source_fwd and adv_binary_fwd. Same contracts as
// csrc/cpu/adversarial_cpu.cpp; the formulas are adversarial_math.h's, called with scalar float
// (double for double inputs). Half / bfloat16 are converted on load and accumulated in float.
//
// adv_source_fwd: a count kernel (per-thread counts of each source, block-combined in shared
// memory, three integer atomics per block: deterministic) and one thread per row. Source ids
// are not checked on the host (that would synchronize): a bad id gives a NaN row, as Triton.
// adv_binary_fwd: one block per chunk of kAdvChunk elements; per-element terms, or one partial
// sum per chunk reduced in a fixed order (deterministic).
// adv_distill_fwd: one block per row, the noise regenerated in each pass (gumbel_math.h's
// gumbel_noise, the stream of gumbel_softmax), block reductions of block_all.cuh (fixed order:
// deterministic); the chain rule of adversarial_math.h (adv_distill_*), KD of kd_math.h:
//   1  online (max, sum exp) of z = (x + g) / tau and its first argmax; with KD of x / T, o / T
//   2  the scores s_k = sum_c y_fwd_c d[c, k] (hard: d[argmax, k], no pass) and the divergence's
//      two sums; every thread then has the row's loss and a = dl/ds (adv_source_row)
//   3  sb = sum_c y_soft_c b_c (only for grad_gen)
//   4  the gradients
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <adkernels/adv_host.h>
#include <adkernels/adversarial_math.h>
#include <adkernels/gumbel_math.h>
#include <adkernels/kd_math.h>

#include "block_all.cuh"

#include <cmath>
#include <limits>
#include <optional>

namespace adkernels::cuda {
namespace {

constexpr int64_t kAdvChunk = 4096;  // as csrc/cpu/adversarial_args.h and adkernels/ops/adversarial.py
constexpr int kThreads = 256;

__global__ void adv_count_kernel(const int64_t* __restrict__ src, int64_t N, unsigned long long* __restrict__ counts) {
  __shared__ unsigned long long block_counts[3];
  if (threadIdx.x < 3) block_counts[threadIdx.x] = 0;
  __syncthreads();
  unsigned long long c[3] = {0, 0, 0};
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t s = src[n];
    if (s >= 0 && s <= 2) ++c[s];
  }
  for (int k = 0; k < 3; ++k) {
    if (c[k]) atomicAdd(&block_counts[k], c[k]);
  }
  __syncthreads();
  if (threadIdx.x < 3 && block_counts[threadIdx.x]) atomicAdd(&counts[threadIdx.x], block_counts[threadIdx.x]);
}

template <typename scalar_t, typename acc_t>
__global__ void adv_source_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ src,
                                  const unsigned long long* __restrict__ counts, acc_t* __restrict__ rows,
                                  scalar_t* __restrict__ grad, int64_t N, int64_t K, int64_t param, int64_t mode,
                                  acc_t w0, acc_t w1, acc_t w2, bool mean) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const int64_t s = src[n];
  const bool bad = s < (mode == 0 ? 0 : 1) || s > 2;
  const acc_t w[3] = {w0, w1, w2};
  const int64_t si = bad ? 0 : s;
  acc_t c = w[si];
  if (mean) c /= static_cast<acc_t>(counts[si] > 0 ? counts[si] : 1ull);
  acc_t z[3] = {static_cast<acc_t>(logits[n * K]), static_cast<acc_t>(logits[n * K + 1]),
                K == 3 ? static_cast<acc_t>(logits[n * K + 2]) : acc_t(0)};
  const acc_t m[3] = {acc_t(si == 0), acc_t(si == 1), acc_t(si == 2)};
  acc_t loss, g[3];
  adv_source_row<acc_t>(param, mode, z, m, c, loss, g);
  if (bad) {
    loss = std::numeric_limits<acc_t>::quiet_NaN();
    g[0] = g[1] = g[2] = loss;
  }
  rows[n] = loss;
  if (grad) {
    for (int64_t j = 0; j < K; ++j) grad[n * K + j] = static_cast<scalar_t>(g[j]);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void adv_binary_kernel(const scalar_t* __restrict__ real, const scalar_t* __restrict__ fake,
                                  acc_t* __restrict__ out, scalar_t* __restrict__ grad_real,
                                  scalar_t* __restrict__ grad_fake, int64_t Mr, int64_t Mf, int64_t M, int64_t kind,
                                  int64_t side, acc_t y, acc_t rs, acc_t fs, bool per_element) {
  __shared__ acc_t partial[kThreads];
  const int64_t lo = blockIdx.x * kAdvChunk;
  const int64_t hi = lo + kAdvChunk < M ? lo + kAdvChunk : M;
  const bool rel = kind == ADV_RELATIVISTIC;
  const int64_t fake_role = side == 0 ? ADV_D_FAKE : side == 1 ? ADV_G_MINIMAX : ADV_G_NONSAT;
  acc_t sum(0);
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    acc_t term(0), l, g;
    if (rel) {
      const acc_t d = static_cast<acc_t>(real[i]) - static_cast<acc_t>(fake[i]);
      adv_binary_term<acc_t>(kind, side == 0 ? ADV_D_REAL : ADV_G_MINIMAX, d, y, l, g);
      term = fs * l;
      if (grad_real) grad_real[i] = static_cast<scalar_t>(fs * g);
      if (grad_fake) grad_fake[i] = static_cast<scalar_t>(-fs * g);
    } else {
      if (i < Mr) {
        adv_binary_term<acc_t>(kind, ADV_D_REAL, static_cast<acc_t>(real[i]), y, l, g);
        term += rs * l;
        if (grad_real) grad_real[i] = static_cast<scalar_t>(rs * g);
      }
      if (i < Mf) {
        adv_binary_term<acc_t>(kind, fake_role, static_cast<acc_t>(fake[i]), y, l, g);
        term += fs * l;
        if (grad_fake) grad_fake[i] = static_cast<scalar_t>(fs * g);
      }
    }
    if (per_element) out[i] = term;
    else sum += term;
  }
  if (per_element) return;
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

std::tuple<at::Tensor, at::Tensor> adv_source_fwd_cuda(const at::Tensor& logits, const at::Tensor& source,
                                                      double w_real, double w_student, double w_teacher,
                                                      int64_t parameterization, int64_t mode, bool per_source_mean,
                                                      bool need_grad) {
  const char* op = "adv_source_fwd";
  TORCH_CHECK(logits.is_cuda(), op, ": expected CUDA tensors, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor rows, grad;
  std::tie(rows, grad) = adv_source_prepare(logits, source, parameterization, mode, need_grad);
  const int64_t N = logits.size(0), K = logits.size(1);
  if (N == 0) return {rows, grad};
  auto stream = at::cuda::getCurrentCUDAStream();
  auto counts = at::zeros({3}, source.options());
  if (per_source_mean) {
    const int blocks = static_cast<int>(std::min<int64_t>((N + kThreads - 1) / kThreads, 1024));
    adv_count_kernel<<<blocks, kThreads, 0, stream>>>(source.const_data_ptr<int64_t>(), N,
                                                      reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t blocks = (N + kThreads - 1) / kThreads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "adv_source_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    adv_source_kernel<scalar_t, acc_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), source.const_data_ptr<int64_t>(),
        reinterpret_cast<const unsigned long long*>(counts.const_data_ptr<int64_t>()), rows.mutable_data_ptr<acc_t>(),
        need_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr, N, K, parameterization, mode,
        static_cast<acc_t>(w_real), static_cast<acc_t>(w_student), static_cast<acc_t>(w_teacher), per_source_mean);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {rows, grad};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adv_binary_fwd_cuda(
    const std::optional<at::Tensor>& real, const at::Tensor& fake, int64_t kind, int64_t side, double real_label,
    double real_scale, double fake_scale, bool per_element, bool grad_real, bool grad_fake) {
  const char* op = "adv_binary_fwd";
  TORCH_CHECK(fake.is_cuda(), op, ": expected CUDA tensors, got ", fake.device());
  const c10::cuda::CUDAGuard guard(fake.device());
  auto p = adv_binary_prepare(real, fake, kind, side, per_element, grad_real, grad_fake, kAdvChunk);
  const bool uses_real = p.uses_real;
  const int64_t Mr = p.Mr, Mf = p.Mf, M = p.M, chunks = p.chunks;
  auto &out = p.out, &gr = p.grad_real, &gf = p.grad_fake;
  if (M == 0) return {out, gr, gf};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fake.scalar_type(), "adv_binary_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    adv_binary_kernel<scalar_t, acc_t><<<static_cast<unsigned>(chunks), kThreads, 0, stream>>>(
        uses_real ? real->const_data_ptr<scalar_t>() : nullptr, fake.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<acc_t>(), grad_real ? gr.mutable_data_ptr<scalar_t>() : nullptr,
        grad_fake ? gf.mutable_data_ptr<scalar_t>() : nullptr, Mr, Mf, M, kind, side, static_cast<acc_t>(real_label),
        static_cast<acc_t>(real_scale), static_cast<acc_t>(fake_scale), per_element);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, gr, gf};
}


// ---- adv_distill_fwd ------------------------------------------------------------------------

// Pass 1 state of a thread (then of the block): online (max, sum exp) of z and its first
// argmax; online (max, sum exp) of gen / T and other / T for the KD term.
template <typename T>
struct DistillStats {
  T m, s;
  int64_t arg;
  T ms, ss, mt, st;
};

struct DistillMerge {
  template <typename T>
  __device__ __forceinline__ DistillStats<T> operator()(const DistillStats<T>& a, const DistillStats<T>& b) const {
    DistillStats<T> r = a;
    if (b.m > a.m || (b.m == a.m && b.arg < a.arg)) r.arg = b.arg;  // the first index of the max
    online_merge(r.m, r.s, b.m, b.s);
    online_merge(r.ms, r.ss, b.ms, b.ss);
    online_merge(r.mt, r.st, b.mt, b.st);
    return r;
  }
};

// Pass 2 sums: the scores s_0..2 and the divergence's (acc_t, acc_s).
template <typename T>
struct DistillSums {
  T v[5];
};

struct DistillSumsOp {
  template <typename T>
  __device__ __forceinline__ DistillSums<T> operator()(const DistillSums<T>& a, const DistillSums<T>& b) const {
    DistillSums<T> r;
#pragma unroll
    for (int k = 0; k < 5; ++k) r.v[k] = a.v[k] + b.v[k];
    return r;
  }
};

template <typename acc_t>
struct DistillParams {
  acc_t w[3];
  acc_t kd_scale, temperature;
  int64_t C, K, param, mode, divergence;
  bool mean, hard, kd;
};

template <typename scalar_t, typename acc_t, int THREADS>
__global__ void __launch_bounds__(THREADS) adv_distill_kernel(
    const scalar_t* __restrict__ gen, const scalar_t* __restrict__ other, const scalar_t* __restrict__ d,
    const int64_t* __restrict__ src, const unsigned long long* __restrict__ counts, const acc_t* __restrict__ tau,
    const int64_t* __restrict__ seed_offset, acc_t* __restrict__ rows, scalar_t* __restrict__ grad_gen,
    scalar_t* __restrict__ grad_other, scalar_t* __restrict__ grad_d, DistillParams<acc_t> p) {
  const int64_t row = blockIdx.x, tid = threadIdx.x, C = p.C, K = p.K, base = row * C;
  const uint64_t seed = static_cast<uint64_t>(seed_offset[0]), offset = static_cast<uint64_t>(seed_offset[1]);
  const acc_t one(1), beta(0.5), inv_tau = one / tau[0], T = p.temperature, invT = one / T;
  const scalar_t* x = gen + base;
  const scalar_t* o = other + base;
  // the noisy logit z_c (the noise regenerated from the stream) and the soft sample y_c
  auto noisy = [&](int64_t j) {
    const acc_t g = gumbel_noise<acc_t>(seed, offset, static_cast<uint64_t>(base + j));
    return gumbel_logit(static_cast<acc_t>(x[j]), g, inv_tau);
  };

  // 1: (max, sum exp, first argmax) of z; (max, sum exp) of x / T and o / T
  DistillStats<acc_t> st{-INFINITY, 0, C, -INFINITY, 0, -INFINITY, 0};
  for (int64_t j = tid; j < C; j += THREADS) {
    const acc_t z = noisy(j);
    if (z > st.m) st.arg = j;  // first index of this thread's max (j increases)
    online_add(st.m, st.s, z);
    if (p.kd) {
      online_add(st.ms, st.ss, static_cast<acc_t>(x[j]) * invT);
      online_add(st.mt, st.st, static_cast<acc_t>(o[j]) * invT);
    }
  }
  st = block_all<THREADS>(st, DistillMerge{});
  const acc_t zmax = st.m, rs = one / st.s;
  const acc_t lse_s = st.ms + ad_log(st.ss), lse_t = st.mt + ad_log(st.st);
  auto soft = [&](int64_t j) { return ad_exp(noisy(j) - zmax) * rs; };
  auto kd_element = [&](int64_t j, acc_t& ps, acc_t& pt, acc_t& lps, acc_t& lpt) {
    lps = static_cast<acc_t>(x[j]) * invT - lse_s;
    lpt = static_cast<acc_t>(o[j]) * invT - lse_t;
    ps = ad_exp(lps);
    pt = ad_exp(lpt);
  };
  auto d_at = [&](int64_t j, acc_t (&dc)[3]) {
    const scalar_t* q = d + (base + j) * K;
    dc[0] = static_cast<acc_t>(q[0]);
    dc[1] = static_cast<acc_t>(q[1]);
    dc[2] = K == 3 ? static_cast<acc_t>(q[2]) : acc_t(0);
  };

  // 2: scores and divergence sums
  DistillSums<acc_t> sums{{0, 0, 0, 0, 0}};
  if (!p.hard || p.kd) {
    for (int64_t j = tid; j < C; j += THREADS) {
      if (!p.hard) {
        const acc_t y = soft(j);
        acc_t dc[3];
        d_at(j, dc);
        sums.v[0] += y * dc[0];
        sums.v[1] += y * dc[1];
        sums.v[2] += y * dc[2];
      }
      if (p.kd) {
        acc_t ps, pt, lps, lpt;
        kd_element(j, ps, pt, lps, lpt);
        kd_div_terms(p.divergence, ps, pt, lps, lpt, beta, one, sums.v[3], sums.v[4]);
      }
    }
    sums = block_all<THREADS>(sums, DistillSumsOp{});
  }
  acc_t s[3] = {sums.v[0], sums.v[1], sums.v[2]};
  if (p.hard) {
    // y_fwd is the one-hot of the first argmax: s = d[argmax] (no argmax only for NaN logits)
    s[0] = s[1] = s[2] = acc_t(0);
    if (st.arg < C) d_at(st.arg, s);
  }
  const int64_t sid = src[row];
  const bool bad = sid < 1 || sid > 2;  // generator rows are STUDENT or TEACHER
  const int64_t si = bad ? 1 : sid;
  acc_t c = p.w[si];
  if (p.mean) c /= static_cast<acc_t>(counts[si] > 0 ? counts[si] : 1ull);
  const acc_t m[3] = {acc_t(0), acc_t(si == 1), acc_t(si == 2)};
  acc_t loss, a[3];
  adv_source_row<acc_t>(p.param, p.mode, s, m, c, loss, a);
  if (bad) {
    loss = std::numeric_limits<acc_t>::quiet_NaN();
    a[0] = a[1] = a[2] = loss;
  }
  if (p.kd) loss += p.kd_scale * T * T * kd_div_value(p.divergence, sums.v[3], sums.v[4], beta);
  if (tid == 0) rows[row] = loss;

  // 3: sb = sum_c y_soft_c b_c
  acc_t sb(0);
  if (grad_gen) {
    acc_t v(0);
    for (int64_t j = tid; j < C; j += THREADS) {
      acc_t dc[3];
      d_at(j, dc);
      v += soft(j) * adv_distill_b(a[0], a[1], a[2], dc[0], dc[1], dc[2]);
    }
    sb = block_all<THREADS>(v, SumOp{});
  }

  // 4: gradients
  if (grad_gen || grad_other || grad_d) {
    const acc_t kdT = p.kd_scale * T;
    const bool need_y = grad_gen || (grad_d && !p.hard);
    const bool need_kd = p.kd && (grad_gen || grad_other);
    for (int64_t j = tid; j < C; j += THREADS) {
      const acc_t y = need_y ? soft(j) : acc_t(0);
      acc_t ds(0), dt(0);
      if (need_kd) {
        acc_t ps, pt, lps, lpt;
        kd_element(j, ps, pt, lps, lpt);
        kd_div_grads(p.divergence, ps, pt, lps, lpt, beta, one, sums.v[3], sums.v[4], ds, dt);
      }
      acc_t dc[3];
      if (grad_gen) {
        d_at(j, dc);
        grad_gen[base + j] = static_cast<scalar_t>(
            adv_distill_grad_gen(y, adv_distill_b(a[0], a[1], a[2], dc[0], dc[1], dc[2]), sb, inv_tau, kdT * ds));
      }
      if (grad_other) grad_other[base + j] = static_cast<scalar_t>(p.kd ? kdT * dt : acc_t(0));
      if (grad_d) {
        const acc_t yf = p.hard ? (j == st.arg ? one : acc_t(0)) : y;
        scalar_t* q = grad_d + (base + j) * K;
        for (int64_t k = 0; k < K; ++k) q[k] = static_cast<scalar_t>(yf * a[k]);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> adv_distill_fwd_cuda(
    const at::Tensor& gen, const at::Tensor& other, const at::Tensor& d, const at::Tensor& source,
    const at::Tensor& tau, const at::Tensor& seed_offset, bool hard, double w_real, double w_student,
    double w_teacher, int64_t parameterization, int64_t mode, bool per_source_mean, double kd_weight,
    double temperature, int64_t divergence, bool grad_gen, bool grad_other, bool grad_d) {
  const char* op = "adv_distill_fwd";
  TORCH_CHECK(gen.is_cuda(), op, ": expected CUDA tensors, got ", gen.device());
  const c10::cuda::CUDAGuard guard(gen.device());
  at::Tensor rows, gg, go, gd;
  std::tie(rows, gg, go, gd) = adv_distill_prepare(gen, other, d, source, tau, seed_offset, parameterization, mode,
                                                   kd_weight, temperature, divergence, grad_gen, grad_other, grad_d);
  const int64_t N = gen.size(0), C = gen.size(1), K = d.size(2);
  if (N == 0) return {rows, gg, go, gd};
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), op, ": too many rows (", N, ") for one launch");
  // tau in the compute dtype, read on the device (no host sync; a no-op when it already is)
  const auto tau_acc = tau.reshape({1}).to(loss_dtype(gen)).contiguous();
  const auto so = seed_offset.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  auto counts = at::zeros({3}, source.options());
  if (per_source_mean) {
    const int blocks = static_cast<int>(std::min<int64_t>((N + kThreads - 1) / kThreads, 1024));
    adv_count_kernel<<<blocks, kThreads, 0, stream>>>(source.const_data_ptr<int64_t>(), N,
                                                      reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gen.scalar_type(), "adv_distill_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    DistillParams<acc_t> p{};
    p.w[0] = static_cast<acc_t>(w_real);
    p.w[1] = static_cast<acc_t>(w_student);
    p.w[2] = static_cast<acc_t>(w_teacher);
    p.kd_scale = static_cast<acc_t>(kd_weight / static_cast<double>(N));
    p.temperature = static_cast<acc_t>(temperature);
    p.C = C;
    p.K = K;
    p.param = parameterization;
    p.mode = mode;
    p.divergence = divergence;
    p.mean = per_source_mean;
    p.hard = hard;
    p.kd = kd_weight != 0;
    const auto* xp = gen.const_data_ptr<scalar_t>();
    const auto* op_ = other.const_data_ptr<scalar_t>();
    const auto* dp = d.const_data_ptr<scalar_t>();
    const auto* sp = source.const_data_ptr<int64_t>();
    const auto* cp = reinterpret_cast<const unsigned long long*>(counts.const_data_ptr<int64_t>());
    const auto* tp = tau_acc.const_data_ptr<acc_t>();
    const auto* sop = so.const_data_ptr<int64_t>();
    auto* rp = rows.mutable_data_ptr<acc_t>();
    auto* ggp = grad_gen ? gg.mutable_data_ptr<scalar_t>() : nullptr;
    auto* gop = grad_other ? go.mutable_data_ptr<scalar_t>() : nullptr;
    auto* gdp = grad_d ? gd.mutable_data_ptr<scalar_t>() : nullptr;
    const unsigned grid = static_cast<unsigned>(N);
    if (C >= 2048) {
      adv_distill_kernel<scalar_t, acc_t, 512>
          <<<grid, 512, 0, stream>>>(xp, op_, dp, sp, cp, tp, sop, rp, ggp, gop, gdp, p);
    } else if (C >= 256) {
      adv_distill_kernel<scalar_t, acc_t, 128>
          <<<grid, 128, 0, stream>>>(xp, op_, dp, sp, cp, tp, sop, rp, ggp, gop, gdp, p);
    } else {
      adv_distill_kernel<scalar_t, acc_t, 32>
          <<<grid, 32, 0, stream>>>(xp, op_, dp, sp, cp, tp, sop, rp, ggp, gop, gdp, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {rows, gg, go, gd};
}

}  // namespace

TORCH_LIBRARY_IMPL(adkernels, CUDA, m) {
  m.impl("adv_source_fwd", &adv_source_fwd_cuda);
  m.impl("adv_binary_fwd", &adv_binary_fwd_cuda);
  m.impl("adv_distill_fwd", &adv_distill_fwd_cuda);
}

}  // namespace adkernels::cuda
