// Plain arguments of the CPU adversarial-loss kernels, shared by the dispatch file and the
// per-ISA kernels (which include no ATen tensor headers).
#pragma once
#include <cstdint>

namespace adkernels::cpu {

enum class AdvDType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

// Three-way discriminator / generator loss over [N, K] logits (adversarial_math.h).
struct AdvSourceArgs {
  const void* logits;     // [N, K] input dtype, contiguous
  const int64_t* source;  // [N], values checked in {0, 1, 2} before the kernel runs
  void* rows;             // [N] float (double for Double): scaled per-row losses
  void* grad;             // [N, K] input dtype, nullptr: not asked
  int64_t N, K;
  int64_t param, mode;
  double scale[3];        // per-source row factor (weight, divided by the count for means)
  AdvDType dtype;
};

// Binary (real vs fake) losses over flat scores (adversarial_math.h, adv_binary_term).
struct AdvBinaryArgs {
  const void* real;       // [Mr] or nullptr
  const void* fake;       // [Mf]
  void* out;              // per_element: [M] terms; else [ceil(M / kAdvChunk)] partial sums
  void* grad_real;        // [Mr] input dtype or nullptr
  void* grad_fake;        // [Mf] input dtype or nullptr
  int64_t Mr, Mf, M;
  int64_t kind, side;
  double real_label, real_scale, fake_scale;
  bool per_element;
  AdvDType dtype;
};

// The fused ADIM generator step (adv_distill_fwd, csrc/ops.cpp): gen / other [N, C], d [N, C, K],
// contiguous, one dtype. Noise of (n, c): stream index n * C + c of (seed, offset).
struct AdvDistillArgs {
  const void* gen;
  const void* other;      // read only when kd_scale != 0
  const void* d;
  const int64_t* source;  // [N], values checked in {1, 2} before the kernel runs
  void* rows;             // [N] float (double for Double)
  void* grad_gen;         // [N, C] input dtype or nullptr
  void* grad_other;       // [N, C] input dtype or nullptr
  void* grad_d;           // [N, C, K] input dtype or nullptr
  int64_t N, C, K;
  int64_t param, mode, divergence;
  double scale[3];        // per-source row factor of the generator loss
  double tau, kd_scale, temperature;  // kd_scale = kd_weight / N (0: no KD term)
  uint64_t seed, offset;
  bool hard;
  AdvDType dtype;
};

// Elements per partial sum of a reduced binary loss (also the fake kernels' contract).
constexpr int64_t kAdvChunk = 4096;

using AdvSourceFn = void (*)(const AdvSourceArgs&, int64_t begin, int64_t end);
using AdvBinaryFn = void (*)(const AdvBinaryArgs&, int64_t chunk_begin, int64_t chunk_end);
using AdvDistillFn = void (*)(const AdvDistillArgs&, int64_t begin, int64_t end);

}  // namespace adkernels::cpu
