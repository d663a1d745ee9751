// Run-time instruction-set dispatch of the CPU kernels, in one place. The baseline build targets plain
// x86-64 (SSE2); hot loops are also compiled for wider instruction sets (clones with a target attribute)
// and one is picked per call by the checks below, each made once per process.
//   VOLT_X86_DISPATCH     1 where clones are compiled: x86-64 with GCC-style target attributes and
//                         __builtin_cpu_supports (GCC; clang defines __GNUC__ too), else 0.
//   VOLT_TARGET_AVX2      clones of auto-vectorized loops (voxelize, patchify), run when cpu_has_avx2().
//   VOLT_TARGET_AVX512    their AVX-512 clones, run when cpu_has_avx512() (F, DQ, VL and BW).
//   VOLT_TARGET_TILES_*   the register tiles (cpu/sparse_conv_tiles.h), picked by isa_level().
// Users: cpu/voxel_keys.h, cpu/voxelize.cpp, cpu/patchify.cpp, cpu/sparse_conv_tiles.h (for
// cpu/sparse_conv.cpp and cpu/slot_matmul.cpp).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#define VOLT_X86_DISPATCH 1
#define VOLT_TARGET_AVX2 __attribute__((target("avx2")))
// F (512-bit lanes), DQ (64-bit products and conversions), VL and BW (narrower lanes).
#define VOLT_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw")))
#define VOLT_TARGET_TILES_AVX2 __attribute__((target("avx2,fma")))
#define VOLT_TARGET_TILES_AVX512 __attribute__((target("avx512f")))
#else
#define VOLT_X86_DISPATCH 0  // the target macros stay undefined: code using them must be under the guard
#endif

namespace volt {
namespace cpu {

#if VOLT_X86_DISPATCH
inline bool cpu_has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

// What VOLT_TARGET_AVX512 clones may use.
inline bool cpu_has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  return yes;
}

// Register-tile level: 2 = AVX-512 F, 1 = AVX2 + FMA, 0 = baseline.
inline int isa_level() {
  static const int level = __builtin_cpu_supports("avx512f")                                      ? 2
                           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1
                                                                                             : 0;
  return level;
}
#else
inline bool cpu_has_avx2() { return false; }
inline bool cpu_has_avx512() { return false; }
inline int isa_level() { return 0; }
#endif

}  // namespace cpu
}  // namespace volt
