// Run-time choice among the per-ISA builds of a CPU kernel (see setup.py, *_kernels.cpp).
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>

namespace adkernels::cpu {

enum class Isa { Default = 0, Avx2 = 1, Avx512 = 2 };

// Widest ISA this CPU supports, lowered by ADKERNELS_CPU_ISA=default|avx2|avx512.
inline Isa chosen_isa() {
  Isa best = Isa::Default;
#if defined(ADK_X86_ISA)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::Avx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = Isa::Avx512;
#endif
  if (const char* env = std::getenv("ADKERNELS_CPU_ISA")) {
    Isa want = best;
    if (!std::strcmp(env, "default")) want = Isa::Default;
    else if (!std::strcmp(env, "avx2")) want = Isa::Avx2;
    else if (!std::strcmp(env, "avx512")) want = Isa::Avx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

}  // namespace adkernels::cpu

#if defined(ADK_X86_ISA)
#define ADK_DECLARE_ISA_KERNELS(decl) \
  namespace DEFAULT { decl; }         \
  namespace AVX2 { decl; }            \
  namespace AVX512 { decl; }
#define ADK_PICK_ISA_KERNEL(name)                                              \
  (::adkernels::cpu::chosen_isa() == ::adkernels::cpu::Isa::Avx512 ? &AVX512::name \
   : ::adkernels::cpu::chosen_isa() == ::adkernels::cpu::Isa::Avx2 ? &AVX2::name   \
                                                                   : &DEFAULT::name)
#else
#define ADK_DECLARE_ISA_KERNELS(decl) \
  namespace DEFAULT { decl; }
#define ADK_PICK_ISA_KERNEL(name) (&DEFAULT::name)
#endif
