// CUDA registration and kernels of adv_source_fwd and adv_binary_fwd. Same contracts as
// csrc/cpu/adversarial_cpu.cpp; the formulas are adversarial_math.h's, called with scalar float
// (double for double inputs). Half / bfloat16 are converted on load and accumulated in float.
//
// adv_source_fwd: a count kernel (per-thread counts of each source, block-combined in shared
// memory, three integer atomics per block: deterministic) and one thread per row. Source ids
// are not checked on the host (that would synchronize): a bad id gives a NaN row, as Triton.
// adv_binary_fwd: one block per chunk of kAdvChunk elements; per-element terms, or one partial
// sum per chunk reduced in a fixed order (deterministic).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <adkernels/adversarial_math.h>

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

at::ScalarType loss_type(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_dtype(const at::Tensor& t, const char* op) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, op,
              ": unsupported dtype ", d, " (use float32, float64, float16 or bfloat16)");
}

std::tuple<at::Tensor, at::Tensor> adv_source_fwd_cuda(const at::Tensor& logits, const at::Tensor& source,
                                                      double w_real, double w_student, double w_teacher,
                                                      int64_t parameterization, int64_t mode, bool per_source_mean,
                                                      bool need_grad) {
  const char* op = "adv_source_fwd";
  TORCH_CHECK(logits.is_cuda(), op, ": expected CUDA tensors, got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  TORCH_CHECK(parameterization == 0 || parameterization == 1, op, ": parameterization must be 0 or 1");
  TORCH_CHECK(mode >= 0 && mode <= 2, op, ": mode must be 0, 1 or 2");
  const int64_t K = parameterization == 0 ? 3 : 2;
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) == K && logits.is_contiguous(), op, ": d_logits must be a contiguous [N, ",
              K, "] tensor, got ", logits.sizes());
  check_dtype(logits, op);
  const int64_t N = logits.size(0);
  TORCH_CHECK(source.dim() == 1 && source.size(0) == N && source.scalar_type() == at::kLong && source.is_contiguous() &&
                  source.device() == logits.device(),
              op, ": source must be a contiguous int64 [", N, "] tensor on d_logits' device");
  auto rows = at::empty({N}, logits.options().dtype(loss_type(logits)));
  auto grad = need_grad ? at::empty_like(logits) : at::empty({0}, logits.options());
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
  TORCH_CHECK(kind >= 0 && kind <= 4, op, ": kind must be in 0..4");
  TORCH_CHECK(side >= 0 && side <= 2, op, ": side must be in 0..2");
  TORCH_CHECK(side != 2 || kind == 0, op, ": side 2 (generator_nonsat) exists for kind 0 (bce) only");
  TORCH_CHECK(fake.dim() == 1 && fake.is_contiguous(), op, ": fake must be a contiguous 1-d tensor");
  check_dtype(fake, op);
  const bool rel = kind == 4;
  const bool uses_real = side == 0 || rel;
  TORCH_CHECK(!uses_real || real.has_value(), op, ": real scores are needed for this kind and side");
  const int64_t Mf = fake.size(0);
  int64_t Mr = 0;
  if (uses_real) {
    TORCH_CHECK(real->dim() == 1 && real->is_contiguous() && real->scalar_type() == fake.scalar_type() &&
                    real->device() == fake.device(),
                op, ": real must be a contiguous 1-d tensor of fake's dtype and device");
    Mr = real->size(0);
    TORCH_CHECK(!(rel || per_element) || Mr == Mf, op, ": real and fake sizes differ: ", Mr, " and ", Mf);
  }
  TORCH_CHECK(!grad_real || uses_real, op, ": grad_real asked without real scores");
  const int64_t M = rel ? Mf : std::max(Mr, Mf);
  const int64_t chunks = (M + kAdvChunk - 1) / kAdvChunk;
  auto out = at::empty({per_element ? M : chunks}, fake.options().dtype(loss_type(fake)));
  auto gr = grad_real ? at::empty_like(*real) : at::empty({0}, fake.options());
  auto gf = grad_fake ? at::empty_like(fake) : at::empty({0}, fake.options());
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

}  // namespace

TORCH_LIBRARY_IMPL(adkernels, CUDA, m) {
  m.impl("adv_source_fwd", &adv_source_fwd_cuda);
  m.impl("adv_binary_fwd", &adv_binary_fwd_cuda);
}

}  // namespace adkernels::cuda
