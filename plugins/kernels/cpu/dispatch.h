// How the CPU kernels run their tasks: each kernel's task body is compiled for the portable
// baseline, for AVX2 + FMA (8 floats a vector, fused multiply-add) and, where the kernel asks
// for it, for AVX-512 (16 floats a vector, 32 registers); the widest variant the CPU supports
// is picked at run time (the environment variable MAMBA_EXPORT_CPU_ISA=avx2 or baseline caps
// it, to test or compare the variants on one machine), and the tasks go to the caller's
// parallel_for.
//
// A kernel is a type with
//   static constexpr bool kAvx512;  // whether an AVX-512 variant pays for this kernel
//   template <typename T> static MAMBA_INLINE void run(const void* plan, size_t task);
// instantiated for T = float, half_t and bf16_t (the activation types). run and everything
// it calls must be MAMBA_INLINE, so that it is compiled again inside each variant.
#ifndef MAMBA_CPU_DISPATCH_H
#define MAMBA_CPU_DISPATCH_H

#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "float_types.h"
#include "mamba_kernels.h"

namespace mamba_cpu {

enum class Isa { kBaseline, kAvx2, kAvx512 };

// The widest instruction set the CPU has of those the tasks are compiled for, capped by
// MAMBA_EXPORT_CPU_ISA (read once).
inline Isa cpu_isa() {
#if defined(__x86_64__)
  static const Isa isa = [] {
    const char* cap = std::getenv("MAMBA_EXPORT_CPU_ISA");
    const Isa widest = cap && !std::strcmp(cap, "baseline") ? Isa::kBaseline
                       : cap && !std::strcmp(cap, "avx2")   ? Isa::kAvx2
                                                            : Isa::kAvx512;
    __builtin_cpu_init();
    if (widest == Isa::kBaseline || !__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
      return Isa::kBaseline;
    }
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    return avx512 && widest == Isa::kAvx512 ? Isa::kAvx512 : Isa::kAvx2;
  }();
  return isa;
#else
  return Isa::kBaseline;
#endif
}

// The variant Kernel's tasks run as on this CPU (its plan may depend on it: vector widths).
template <typename Kernel>
Isa kernel_isa() {
  const Isa isa = cpu_isa();
  return isa == Isa::kAvx512 && !Kernel::kAvx512 ? Isa::kAvx2 : isa;
}

template <typename Kernel, typename T>
void run_task(void* plan, size_t task) {
  Kernel::template run<T>(plan, task);
}

#if defined(__x86_64__)
template <typename Kernel, typename T>
__attribute__((target("avx2,fma"))) void run_task_avx2(void* plan, size_t task) {
  Kernel::template run<T>(plan, task);
}

// prefer-vector-width=512: GCC otherwise vectorises with 256-bit vectors even here.
template <typename Kernel, typename T>
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512"))) void
run_task_avx512(void* plan, size_t task) {
  Kernel::template run<T>(plan, task);
}
#endif

template <typename Kernel, typename T>
mamba_task_fn task_for_cpu() {
#if defined(__x86_64__)
  const Isa isa = kernel_isa<Kernel>();
  if constexpr (Kernel::kAvx512) {
    if (isa == Isa::kAvx512) return run_task_avx512<Kernel, T>;
  }
  if (isa == Isa::kAvx2) return run_task_avx2<Kernel, T>;
#endif
  return run_task<Kernel, T>;
}

// Runs Kernel's tasks [0, tasks) on `plan` for activation type `dtype` (a checked block's).
template <typename Kernel>
void run_tasks(mamba_dtype dtype, const void* plan, size_t tasks, mamba_parallel_for_fn parallel_for,
               void* parallel_ctx) {
  const mamba_task_fn fn = dtype == MAMBA_FLOAT16    ? task_for_cpu<Kernel, half_t>()
                           : dtype == MAMBA_BFLOAT16 ? task_for_cpu<Kernel, bf16_t>()
                                                     : task_for_cpu<Kernel, float>();
  void* fn_ctx = const_cast<void*>(plan);  // mamba_task_fn's context is not const; the tasks only read it
  if (parallel_for && tasks > 1) {
    parallel_for(parallel_ctx, tasks, fn, fn_ctx);
  } else {
    for (size_t i = 0; i < tasks; ++i) fn(fn_ctx, i);
  }
}

}  // namespace mamba_cpu

#endif  // MAMBA_CPU_DISPATCH_H
