// Plain arguments of the CPU attack-step kernels (sign_step, pgd_step), shared by the
// registration file and the per-ISA kernels (which include no ATen tensor headers).
#pragma once
#include <cstdint>

namespace adkernels::cpu {

enum class AttackKind : int { Sign = 0, PgdLinf = 1, PgdL2 = 2, RandLinf = 3, RandL2 = 4 };
// x / x_nat / out: Float or Double; grad: any of the four.
enum class AttackDType : int { Float = 0, Double = 1, Half = 2, BFloat16 = 3 };

// x, grad, x_nat and out are contiguous [N, D]; out may be x itself (in-place form).
// step / eps: [N] in the dtype of x. Bounds lo / hi: [B] in the dtype of x (nullptr: none);
// element i of the flattened [N * D] tensor uses bound[(i / bound_inner) % B]. That covers
// scalars (B = 1), per-channel NCHW bounds (B = C, inner = H * W), per-element bounds of a
// sample (B = D, inner = 1) and fully materialized ones (B = N * D, inner = 1).
struct AttackArgs {
  const void* x;      // x (sign) or x_adv (pgd)
  const void* grad;
  const void* x_nat;  // nullptr for sign
  void* out;
  const void* step;
  const void* eps;    // nullptr for sign
  const void* lo;
  const void* hi;
  int64_t N, D, B, bound_inner;
  AttackKind kind;
  AttackDType x_dtype, grad_dtype;
  // random_start (RandLinf / RandL2): grad, x_nat and step are unused (nullptr), eps is [N],
  // and the noise comes from the Philox stream (seed, offset) (philox.h).
  uint64_t seed = 0, offset = 0;
};

// sign / linf / random linf: elements [begin, end) of the flattened tensor. l2 (pgd and random):
// samples [begin, end).
using AttackRangeFn = void (*)(const AttackArgs&, int64_t begin, int64_t end);

}  // namespace adkernels::cpu
