// CUDA registration and kernel of kd_fwd: one thread block per row. Same contract and checks
// as csrc/cpu/kd_cpu.cpp; the formulas are kd_math.h's, called with scalar float (double for
// double inputs). Half / bfloat16 are converted on load and accumulated in float.
//
// Per row (no row buffer: V may be 128k and more, so the logits are re-read; from L2 where the
// rows in flight fit, from memory otherwise):
//   1  online max / sum of exp of z_s / T and z_t / T (and of z_s at T = 1 for the CE term
//      when T != 1), sum of z_s for label smoothing; merged across the block
//   2  the divergence's two sums (kd_div_terms). When the gradients need neither sum (kl
//      without a teacher gradient, reverse_kl without a student gradient, alpha = 0), they
//      are written here and pass 3 is skipped
//   3  gradients (kd_div_grads, CE), written in the input dtype
// Target values are not checked on the host (that would synchronize); kd_loss checks them
// eagerly, and a row whose target is out of range comes out NaN.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <adkernels/kd_host.h>
#include <adkernels/kd_math.h>

#include <limits>

namespace adkernels::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxWarps = 1024 / kWarp;
constexpr int kMaxReduce = 7;  // values reduced at once across the block


// Reduces v[0..K) over the block with combine(v, other); every thread gets the same result
// (the per-warp partials are combined in the same order by all threads).
template <int K, typename T, typename Combine>
__device__ __forceinline__ void block_allreduce(T (&v)[K], T* smem, Combine combine) {
  static_assert(K <= kMaxReduce, "raise kMaxReduce");
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    T other[K];
#pragma unroll
    for (int k = 0; k < K; ++k) other[k] = __shfl_xor_sync(0xffffffffu, v[k], offset);
    combine(v, other);
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  __syncthreads();  // an earlier reduction may still be reading smem
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) smem[warp * K + k] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = smem[k];
  for (int w = 1; w < warps; ++w) {
    T other[K];
#pragma unroll
    for (int k = 0; k < K; ++k) other[k] = smem[w * K + k];
    combine(v, other);
  }
}

template <typename acc_t>
struct KdParams {
  acc_t temperature, alpha, beta, label_smoothing;
  int64_t divergence, ignore_index;
};

template <typename scalar_t, typename acc_t>
__global__ void kd_fwd_kernel(const scalar_t* __restrict__ student, const scalar_t* __restrict__ teacher,
                              const int64_t* __restrict__ target, acc_t* __restrict__ loss,
                              scalar_t* __restrict__ grad_student, scalar_t* __restrict__ grad_teacher,
                              int64_t V, KdParams<acc_t> p) {
  __shared__ acc_t smem[kMaxWarps * kMaxReduce];
  const int64_t row = blockIdx.x;
  const int64_t tid = threadIdx.x, stride = blockDim.x;
  const scalar_t* zs = student + row * V;
  const scalar_t* zt = teacher + row * V;
  scalar_t* gs = grad_student ? grad_student + row * V : nullptr;
  scalar_t* gt = grad_teacher ? grad_teacher + row * V : nullptr;

  const int64_t y = target ? target[row] : -1;
  const bool ignored = target && y == p.ignore_index;
  if (ignored || (target && (y < 0 || y >= V))) {
    // Ignored rows give 0; a target out of range (kd_loss rejects it before the launch) gives
    // NaN, as the Triton kernel does, rather than a device assert that kills the context.
    const acc_t fill = ignored ? acc_t(0) : std::numeric_limits<acc_t>::quiet_NaN();
    if (tid == 0) loss[row] = fill;
    for (int64_t j = tid; j < V; j += stride) {
      if (gs) gs[j] = static_cast<scalar_t>(fill);
      if (gt) gt[j] = static_cast<scalar_t>(fill);
    }
    return;
  }

  const acc_t one(1), T = p.temperature, invT = one / T, alpha = p.alpha, beta = p.beta;
  const acc_t ls = p.label_smoothing;
  const int64_t div = p.divergence;
  const bool need_div = alpha > acc_t(0);
  const bool need_ce = alpha < one && target != nullptr;
  const bool same_T = T == one;
  const bool need_s_T = need_div || (need_ce && same_T);  // student softmax at T
  const bool need_e1 = need_ce && !same_T;                // student softmax at 1, for CE
  const bool need_zsum = need_ce && ls > acc_t(0);

  // 1: (max, sum exp) of z_s / T, z_t / T, z_s; sum z_s
  acc_t st[7] = {-INFINITY, 0, -INFINITY, 0, -INFINITY, 0, 0};
  for (int64_t j = tid; j < V; j += stride) {
    const acc_t x = static_cast<acc_t>(zs[j]);
    if (need_s_T) online_add(st[0], st[1], x * invT);
    if (need_div) online_add(st[2], st[3], static_cast<acc_t>(zt[j]) * invT);
    if (need_e1) online_add(st[4], st[5], x);
    if (need_zsum) st[6] += x;
  }
  block_allreduce(st, smem, [](acc_t(&a)[7], const acc_t(&b)[7]) {
    online_merge(a[0], a[1], b[0], b[1]);
    online_merge(a[2], a[3], b[2], b[3]);
    online_merge(a[4], a[5], b[4], b[5]);
    a[6] += b[6];
  });
  const acc_t lse_s = st[0] + ad_log(st[1]);  // of z_s / T
  const acc_t lse_t = st[2] + ad_log(st[3]);  // of z_t / T
  const acc_t lse1 = same_T ? lse_s : st[4] + ad_log(st[5]);

  // One element: the scaled log-probabilities and probabilities (divergence only).
  auto element = [&](int64_t j, acc_t& x, acc_t& ps, acc_t& pt, acc_t& lps, acc_t& lpt) {
    x = static_cast<acc_t>(zs[j]);
    if (need_div) {
      lps = x * invT - lse_s;
      lpt = static_cast<acc_t>(zt[j]) * invT - lse_t;
      ps = ad_exp(lps);
      pt = ad_exp(lpt);
    }
  };
  const acc_t kdiv = alpha * T, kce = one - alpha, smooth = ls / acc_t(V), hit = kce * (one - ls);
  auto write_grads = [&](int64_t j, acc_t x, acc_t ps, acc_t pt, acc_t lps, acc_t lpt, acc_t sum_t,
                         acc_t sum_s) {
    acc_t g_s(0), g_t(0);
    if (need_div) {
      acc_t ds, dt;
      kd_div_grads(div, ps, pt, lps, lpt, beta, one, sum_t, sum_s, ds, dt);
      g_s = kdiv * ds;
      g_t = kdiv * dt;
    }
    if (need_ce) {
      const acc_t q = (same_T && need_div) ? ps : ad_exp(x - lse1);
      g_s += kce * (q - smooth);
      if (j == y) g_s -= hit;
    }
    if (gs) gs[j] = static_cast<scalar_t>(g_s);
    if (gt) gt[j] = static_cast<scalar_t>(g_t);
  };

  // 2: divergence sums (and the gradients, where they do not depend on them)
  const bool want_grads = gs != nullptr || gt != nullptr;
  const bool grads_now = want_grads && (!need_div || (div == KL && !gt) || (div == REVERSE_KL && !gs));
  acc_t sums[2] = {0, 0};  // acc_t (p_t-weighted), acc_s
  if (need_div || grads_now) {
    for (int64_t j = tid; j < V; j += stride) {
      acc_t x, ps = 0, pt = 0, lps = 0, lpt = 0;
      element(j, x, ps, pt, lps, lpt);
      if (need_div) kd_div_terms(div, ps, pt, lps, lpt, beta, one, sums[0], sums[1]);
      if (grads_now) write_grads(j, x, ps, pt, lps, lpt, acc_t(0), acc_t(0));
    }
    if (need_div) {
      block_allreduce(sums, smem, [](acc_t(&a)[2], const acc_t(&b)[2]) {
        a[0] += b[0];
        a[1] += b[1];
      });
    }
  }

  if (tid == 0) {
    acc_t value(0);
    if (need_div) value += alpha * T * T * kd_div_value(div, sums[0], sums[1], beta);
    if (need_ce) value += kce * ce_value(lse1, static_cast<acc_t>(zs[y]), st[6], ls, V);
    loss[row] = value;
  }

  // 3: gradients that need the divergence sums
  if (want_grads && !grads_now) {
    for (int64_t j = tid; j < V; j += stride) {
      acc_t x, ps = 0, pt = 0, lps = 0, lpt = 0;
      element(j, x, ps, pt, lps, lpt);
      write_grads(j, x, ps, pt, lps, lpt, sums[0], sums[1]);
    }
  }
}

int threads_for(int64_t V) {
  if (V >= 8192) return 512;
  if (V >= 1024) return 256;
  return 128;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kd_fwd_cuda(
    const at::Tensor& student, const at::Tensor& teacher, const std::optional<at::Tensor>& target,
    double temperature, double alpha, int64_t divergence, double beta, int64_t ignore_index,
    double label_smoothing, bool grad_student, bool grad_teacher) {
  TORCH_CHECK(student.is_cuda(), "kd_fwd: expected CUDA tensors, got ", student.device());
  const c10::cuda::CUDAGuard guard(student.device());
  auto [loss, gs, gt] = kd_fwd_prepare(student, teacher, target, temperature, divergence, grad_student, grad_teacher);
  const auto dtype = student.scalar_type();
  const int64_t N = student.size(0), V = student.size(1);
  TORCH_CHECK(N <= std::numeric_limits<int32_t>::max(), "kd_fwd: too many rows (", N, ") for one launch");
  if (N == 0 || V == 0) return {loss, gs, gt};
  const int threads = threads_for(V);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "kd_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const KdParams<acc_t> p{static_cast<acc_t>(temperature), static_cast<acc_t>(alpha), static_cast<acc_t>(beta),
                            static_cast<acc_t>(label_smoothing), divergence, ignore_index};
    kd_fwd_kernel<scalar_t, acc_t><<<static_cast<unsigned>(N), threads, 0, stream>>>(
        student.const_data_ptr<scalar_t>(), teacher.const_data_ptr<scalar_t>(),
        target.has_value() ? target->const_data_ptr<int64_t>() : nullptr, loss.mutable_data_ptr<acc_t>(),
        grad_student ? gs.mutable_data_ptr<scalar_t>() : nullptr,
        grad_teacher ? gt.mutable_data_ptr<scalar_t>() : nullptr, V, p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, gs, gt};
}

}  // namespace

TORCH_LIBRARY_IMPL(adkernels, CUDA, m) { m.impl("kd_fwd", &kd_fwd_cuda); }

}  // namespace adkernels::cuda

// Lets `from adkernels import _C_cuda` load the library (and run the registration above).
static struct PyModuleDef adkernels_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&adkernels_cuda_module); }
