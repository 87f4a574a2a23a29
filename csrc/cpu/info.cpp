#include <string>

#include "isa.h"

namespace adkernels::cpu {

std::string cpu_isa() {
  switch (chosen_isa()) {
    case Isa::Avx512: return "AVX512";
    case Isa::Avx2: return "AVX2";
    default: return "DEFAULT";
  }
}

}  // namespace adkernels::cpu
