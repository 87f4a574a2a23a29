// Schemas of every low-level adkernels op, in one place. Implementations are registered per
// dispatch key next to their kernels (csrc/cpu/*.cpp, csrc/cuda/*.cu); fake kernels, autograd
// and the public API live in adkernels/ops/.
#include <Python.h>
#include <torch/library.h>

#include <string>

namespace adkernels::cpu {
std::string cpu_isa();
}

TORCH_LIBRARY(adkernels, m) {
  // Knowledge-distillation loss, forward with the gradient made in the same pass.
  // student/teacher: [N, V] contiguous, same dtype; target: [N] int64 or None.
  // Returns (loss [N] fp32 (fp64 for fp64 input), per row, unreduced;
  //          d loss_n / d student [N, V] in the input dtype, or an empty tensor if not asked;
  //          d loss_n / d teacher, likewise). Rows whose target == ignore_index give 0.
  // divergence: 0 = kl, 1 = reverse_kl, 2 = jsd.
  m.def(
      "kd_fwd(Tensor student, Tensor teacher, Tensor? target, float temperature, float alpha, "
      "int divergence, float beta, int ignore_index, float label_smoothing, bool grad_student, "
      "bool grad_teacher) -> (Tensor, Tensor, Tensor)");
  // Sparse-teacher KD (topk_kd_loss), forward with the student gradient made in the same pass.
  // student: [N, V] contiguous; ids: [N, K] int64, distinct per row, in [0, V), K <= V;
  // teacher_logprobs: [N, K] log-probabilities of the teacher at T = 1, float32 (float64 for a
  // float64 student); target: [N] int64 or None. tail: 0 = renorm, 1 = bucket.
  // Returns (loss [N] fp32 (fp64), per row, unreduced; d loss_n / d student [N, V] in the input
  // dtype, or an empty tensor if not asked). Rows whose target == ignore_index give 0.
  m.def(
      "topk_kd_fwd(Tensor student, Tensor ids, Tensor teacher_logprobs, Tensor? target, float temperature, "
      "float alpha, int ignore_index, float label_smoothing, int tail, bool grad_student) -> (Tensor, Tensor)");
  // Soft-target cross entropy, forward with the gradients made in the same pass (kd_math.h).
  // logits, targets: [N, V] contiguous, same dtype; targets non-negative (not checked here).
  // Returns (loss [N] fp32 (fp64) = -sum_k q_k log softmax(z)_k, unreduced;
  //          grad_scale * d loss_n / d logits = grad_scale (softmax(z) sum(q) - q), or an empty
  //          tensor if not asked; grad_scale * d loss_n / d targets = grad_scale (lse(z) - z), or
  //          an empty tensor). grad_scale: the reduction's factor (1 / N for a mean), so that the
  //          backward of a mean has nothing left to scale.
  m.def(
      "soft_ce_fwd(Tensor logits, Tensor targets, bool grad_logits, bool grad_targets, float grad_scale) "
      "-> (Tensor, Tensor, Tensor)");
  // ADA-Lab-style refined targets (no gradient). logits_adv, logits_aa: [N, V] contiguous, same
  // dtype; target: [N] int64 in [0, V). Returns (targets [N, V] in the input dtype =
  // (1 - w) onehot(y) + w softmax(logits_aa / T), w [N] fp32 (fp64) with
  // w = max_weight sigmoid(-gamma (margin - bias)), margin = p_y - max_{k != y} p_k at logits_adv).
  m.def(
      "ada_lab_targets(Tensor logits_adv, Tensor logits_aa, Tensor target, float max_weight, float gamma, "
      "float bias, float temperature) -> (Tensor, Tensor)");
  // Adversarial-example steps (attack_math.h). x / x_adv / x_nat: [N, ...] contiguous float32 or
  // float64; grad: x's shape, float32/float64/float16/bfloat16; step, eps: [N] in x's dtype.
  // lo / hi: both None, or both contiguous [B] in x's dtype, element i of the flattened x using
  // bound[(i / bound_inner) % B]. norm: 0 = linf, 1 = l2. The functional forms return a new
  // tensor; the trailing-underscore forms write the result into x / x_adv.
  m.def("sign_step(Tensor x, Tensor grad, Tensor step, Tensor? lo, Tensor? hi, int bound_inner) -> Tensor");
  m.def("sign_step_(Tensor(a!) x, Tensor grad, Tensor step, Tensor? lo, Tensor? hi, int bound_inner) -> ()");
  m.def(
      "pgd_step(Tensor x_adv, Tensor grad, Tensor x_nat, Tensor step, Tensor eps, int norm, Tensor? lo, "
      "Tensor? hi, int bound_inner) -> Tensor");
  m.def(
      "pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x_nat, Tensor step, Tensor eps, int norm, Tensor? lo, "
      "Tensor? hi, int bound_inner) -> ()");
  // Random start of an attack (attack_math.h, philox.h): clamp(x + delta, lo, hi), delta uniform in
  // the linf (norm 0) or l2 (norm 1) ball of radius eps[n], noise from the Philox stream
  // seed_offset = int64[2] (seed, offset) on x's device. x: [N, ...] contiguous float32/float64;
  // eps [N] of x's dtype; lo / hi / bound_inner as sign_step.
  m.def(
      "random_start(Tensor x, Tensor eps, Tensor seed_offset, int norm, Tensor? lo, Tensor? hi, "
      "int bound_inner) -> Tensor");
  m.def(
      "random_start_(Tensor(a!) x, Tensor eps, Tensor seed_offset, int norm, Tensor? lo, Tensor? hi, "
      "int bound_inner) -> ()");
  // Gumbel-Softmax (gumbel_math.h, philox.h). logits: [N, V] contiguous; tau: one-element float
  // tensor (> 0) on the logits' device; seed_offset: int64[2] (seed, offset) on that device; the
  // noise of element (n, j) is index n * V + j of the stream. Returns (y, y_soft): y =
  // softmax((logits + g) / tau) in the logits' dtype, or with hard the one-hot of the row's first
  // argmax; y_soft = the soft y when hard and save_soft, else an empty tensor.
  m.def(
      "gumbel_softmax_fwd(Tensor logits, Tensor tau, Tensor seed_offset, bool hard, bool save_soft) "
      "-> (Tensor, Tensor)");
  // Backward from the saved soft y: grad_logits = y * (grad_y - sum(grad_y * y)) / tau per row.
  m.def("gumbel_softmax_bwd(Tensor y, Tensor grad_y, Tensor tau) -> Tensor");
  // Adversarial losses (adversarial_math.h). adv_source_fwd: three-way discriminator /
  // generator loss. d_logits [N, 3] (parameterization 0, softmax) or [N, 2] (1, binary tree)
  // contiguous; source [N] int64 in {0 REAL, 1 STUDENT, 2 TEACHER} ({1, 2} for generator modes;
  // other values raise on CPU, give NaN rows on GPU). mode: 0 discriminator (-log D_src),
  // 1 minimax generator (+log D_src), 2 non-saturating generator (-log(1 - D_src)).
  // Returns (rows [N] fp32 (fp64 for fp64): c_src * loss_n, with c_i = w_i / max(1, count_i)
  // when per_source_mean else w_i; d rows_n / d d_logits [N, K] in the input dtype or empty).
  m.def(
      "adv_source_fwd(Tensor d_logits, Tensor source, float w_real, float w_student, float w_teacher, "
      "int parameterization, int mode, bool per_source_mean, bool need_grad) -> (Tensor, Tensor)");
  // adv_binary_fwd: GAN losses on raw scores. real [Mr] (None for non-relativistic generator
  // sides), fake [Mf], contiguous 1-d, one dtype. kind: 0 bce, 1 hinge, 2 lsgan, 3 wgan,
  // 4 relativistic (pairs r - f, Mr == Mf); side: 0 discriminator, 1 generator,
  // 2 generator_nonsat (bce). Real terms scaled by real_scale, fake (and pair) terms by
  // fake_scale. Returns (per_element: terms [M], real + fake term per index (Mr == Mf);
  // else partial sums [ceil(M / 4096)] of the scaled terms, M = max(Mr, Mf);
  // d / d real [Mr] or empty; d / d fake [Mf] or empty), gradients scaled likewise.
  m.def(
      "adv_binary_fwd(Tensor? real, Tensor fake, int kind, int side, float real_label, float real_scale, "
      "float fake_scale, bool per_element, bool grad_real, bool grad_fake) -> (Tensor, Tensor, Tensor)");
  // adv_distill_fwd: the fused ADIM generator step (adversarial_math.h, adv_distill_*), one row n
  // at a time over its C labels. gen, other [N, C]; d [N, C, K] (K = 3 softmax, 2 binary tree);
  // one float dtype, contiguous; source [N] int64 in {1, 2} (CPU raises on others, GPU gives NaN
  // rows); tau, seed_offset as gumbel_softmax_fwd (noise of (n, c): stream index n * C + c).
  //   y = softmax((gen + g) / tau) (hard: y_fwd = one-hot of the first argmax, y_soft for the
  //   gradient), s_k = sum_c y_fwd_c d[n, c, k], l_adv = adv_source_row(parameterization, mode in
  //   {1 minimax, 2 nonsat}, s, source) scaled by c_src (w_src / max(1, count_src) when
  //   per_source_mean), a = d l_adv / d s;
  //   KD: kd_scale = kd_weight / N, l_kd = kd_scale T^2 D(softmax(other / T), softmax(gen / T))
  //   (divergence 0 kl, 1 reverse_kl, 2 jsd with beta 0.5); skipped when kd_weight == 0.
  // Returns (rows [N] fp32 (fp64 for fp64) = l_adv + l_kd; grad_gen [N, C] = y_soft (b - sum(y_soft
  // b)) / tau + kd_scale T ds with b_c = sum_k a_k d[n, c, k]; grad_other [N, C] = kd_scale T dt;
  // grad_d [N, C, K] = y_fwd_c a_k), each gradient in the input dtype or empty when not asked.
  m.def(
      "adv_distill_fwd(Tensor gen, Tensor other, Tensor d, Tensor source, Tensor tau, Tensor seed_offset, "
      "bool hard, float w_real, float w_student, float w_teacher, int parameterization, int mode, "
      "bool per_source_mean, float kd_weight, float temperature, int divergence, bool grad_gen, "
      "bool grad_other, bool grad_d) -> (Tensor, Tensor, Tensor, Tensor)");
  // The instruction set the CPU kernels run with (DEFAULT, AVX2, AVX512); ADKERNELS_CPU_ISA
  // lowers it (for tests and comparisons).
  m.def("cpu_isa() -> str", &adkernels::cpu::cpu_isa);
}

// Lets `from adkernels import _C` load the library (and run the registrations above).
static struct PyModuleDef adkernels_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&adkernels_module); }
