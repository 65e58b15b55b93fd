// How the CPU kernels run their tasks: each kernel's task body is compiled twice, for the
// portable baseline and for AVX2 + FMA (8 floats a vector, fused multiply-add), and the
// variant the CPU supports is picked at run time; the tasks go to the caller's parallel_for.
//
// A kernel is a type with
//   template <typename T> static MAMBA_INLINE void run(const void* plan, size_t task);
// instantiated for T = float, half_t and bf16_t (the activation types). run and everything
// it calls must be MAMBA_INLINE, so that it is compiled again inside the AVX2 variant.
#ifndef MAMBA_CPU_DISPATCH_H
#define MAMBA_CPU_DISPATCH_H

#include <cstddef>

#include "float_types.h"
#include "mamba_kernels.h"

namespace mamba_cpu {

template <typename Kernel, typename T>
void run_task(void* plan, size_t task) {
  Kernel::template run<T>(plan, task);
}

#if defined(__x86_64__)
template <typename Kernel, typename T>
__attribute__((target("avx2,fma"))) void run_task_avx2(void* plan, size_t task) {
  Kernel::template run<T>(plan, task);
}

inline bool has_avx2_fma() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

template <typename Kernel, typename T>
mamba_task_fn task_for_cpu() {
#if defined(__x86_64__)
  static const bool avx2 = has_avx2_fma();
  if (avx2) return run_task_avx2<Kernel, T>;
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
