/* The kernels' C ABI: one parameter block per op (docs/ops.md), no framework types.
 *
 * The CPU kernels (plugins/kernels/cpu) and the CUDA kernels (plugins/kernels/cuda)
 * implement these entry points; the ONNX Runtime op library, the TensorRT plugin and the
 * torch op (through ctypes) are thin adapters that fill the block and call them.
 * All tensors are dense and row-major in the shapes of docs/ops.md.
 */
#ifndef MAMBA_KERNELS_H
#define MAMBA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MAMBA_API __declspec(dllexport)
#else
#define MAMBA_API __attribute__((visibility("default")))
#endif

/* Element type of the activation tensors (T in docs/ops.md). */
typedef enum { MAMBA_FLOAT32 = 0, MAMBA_FLOAT16 = 1, MAMBA_BFLOAT16 = 2 } mamba_dtype;

/* mamba.SelectiveScan. Optional inputs are NULL when absent. */
typedef struct {
  int64_t batch, dim, seqlen, dstate, groups;
  mamba_dtype dtype;
  const void* u;             /* [batch, dim, seqlen]          T */
  const void* delta;         /* [batch, dim, seqlen]          T */
  const float* A;            /* [dim, dstate]                 f32 */
  const void* B;             /* [batch, groups, dstate, seqlen] T */
  const void* C;             /* [batch, groups, dstate, seqlen] T */
  const float* D;            /* [dim] or NULL */
  const void* z;             /* [batch, dim, seqlen] T or NULL */
  const float* delta_bias;   /* [dim] or NULL */
  const float* initial_state;/* [batch, dim, dstate] or NULL (zeros) */
  int delta_softplus;        /* 0 or 1 */
  void* y;                   /* out: [batch, dim, seqlen]   T */
  float* final_state;        /* out: [batch, dim, dstate]   f32 */
} mamba_selective_scan_params;

/* Returns NULL when the block satisfies docs/ops.md's limits for a kernel (sizes, group
 * divisibility, non-NULL required pointers), else a static message naming the problem.
 * Adapters check shapes against their framework first; this is the last line of defence. */
MAMBA_API const char* mamba_selective_scan_check(const mamba_selective_scan_params* p);

/* CPU: parallel_for(ctx, n, fn, fn_ctx) must call fn(fn_ctx, i) for every i in [0, n),
 * possibly concurrently; pass NULL to run on the calling thread. */
typedef void (*mamba_task_fn)(void* fn_ctx, size_t i);
typedef void (*mamba_parallel_for_fn)(void* ctx, size_t n, mamba_task_fn fn, void* fn_ctx);
MAMBA_API void mamba_selective_scan_cpu(const mamba_selective_scan_params* p, mamba_parallel_for_fn parallel_for,
                                        void* parallel_ctx);

/* CUDA (libmamba_kernels.so): enqueues on `stream` (a cudaStream_t) on the calling thread's
 * current device; all pointers are device memory of that device. workspace must hold
 * mamba_selective_scan_cuda_workspace_size(p) bytes of device memory (may be 0 -> NULL ok).
 * Returns a cudaError_t (0 = success) of the launch; cudaErrorInvalidValue (1) for a block
 * that mamba_selective_scan_cuda_check rejects.
 * final_state may be the same buffer as initial_state (the state updated in place, as in a
 * generation loop); no other outputs may overlap inputs.
 * mamba_selective_scan_cuda_check is the contract check plus the CUDA kernels' limits:
 * dstate <= 256, batch * dim < 2^31 and seqlen < 2^31. */
MAMBA_API const char* mamba_selective_scan_cuda_check(const mamba_selective_scan_params* p);
MAMBA_API size_t mamba_selective_scan_cuda_workspace_size(const mamba_selective_scan_params* p);
MAMBA_API int mamba_selective_scan_cuda(const mamba_selective_scan_params* p, void* workspace, void* stream);

/* mamba.SSDScan (Mamba-2). Optional inputs are NULL when absent. */
typedef struct {
  int64_t batch, seqlen, nheads, headdim, dstate, groups;
  mamba_dtype dtype;
  const void* x;             /* [batch, seqlen, nheads, headdim] T */
  const void* dt;            /* [batch, seqlen, nheads]        T */
  const float* A;            /* [nheads]                       f32 */
  const void* B;             /* [batch, seqlen, groups, dstate] T */
  const void* C;             /* [batch, seqlen, groups, dstate] T */
  const float* D;            /* [nheads] or NULL */
  const void* z;             /* [batch, seqlen, nheads, headdim] T or NULL */
  const float* dt_bias;      /* [nheads] or NULL */
  const float* initial_state;/* [batch, nheads, headdim, dstate] or NULL (zeros) */
  int dt_softplus;           /* 0 or 1 */
  float dt_min, dt_max;      /* clamp after softplus; 0 and +INFINITY leave it open */
  void* y;                   /* out: [batch, seqlen, nheads, headdim] T */
  float* final_state;        /* out: [batch, nheads, headdim, dstate] f32 */
} mamba_ssd_scan_params;

/* As mamba_selective_scan_check; final_state may be the same buffer as initial_state. */
MAMBA_API const char* mamba_ssd_scan_check(const mamba_ssd_scan_params* p);
MAMBA_API void mamba_ssd_scan_cpu(const mamba_ssd_scan_params* p, mamba_parallel_for_fn parallel_for,
                                  void* parallel_ctx);
/* As mamba_selective_scan_cuda. mamba_ssd_scan_cuda_check is the contract check plus the CUDA
 * kernels' limits: dstate <= 256, batch * nheads * headdim < 2^31 and seqlen < 2^31. The
 * workspace size depends on the shapes and the current device; the workspace must be 16-byte
 * aligned (as every CUDA allocator's is), else cudaErrorInvalidValue. */
MAMBA_API const char* mamba_ssd_scan_cuda_check(const mamba_ssd_scan_params* p);
MAMBA_API size_t mamba_ssd_scan_cuda_workspace_size(const mamba_ssd_scan_params* p);
MAMBA_API int mamba_ssd_scan_cuda(const mamba_ssd_scan_params* p, void* workspace, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* MAMBA_KERNELS_H */
