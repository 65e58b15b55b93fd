/* The contract checks of a mamba_selective_scan_params block (docs/ops.md), written once
 * for every kernel library: header-only, so the CPU and the CUDA libraries each compile
 * the same code without sharing a symbol. Each library's own limits come on top of it.
 */
#ifndef MAMBA_SELECTIVE_SCAN_CHECK_H
#define MAMBA_SELECTIVE_SCAN_CHECK_H

#include <stdint.h>

#include "mamba_kernels.h"

/* a * b * c ... into *out; 0 when a factor is negative or the product overflows int64. */
static inline int mamba_element_count(const int64_t* dims, int count, int64_t* out) {
  int64_t n = 1;
  for (int i = 0; i < count; ++i) {
    if (dims[i] < 0 || __builtin_mul_overflow(n, dims[i], &n)) return 0;
  }
  *out = n;
  return 1;
}

static inline int mamba_dtype_is_valid(mamba_dtype dtype) {
  return dtype == MAMBA_FLOAT32 || dtype == MAMBA_FLOAT16 || dtype == MAMBA_BFLOAT16;
}

/* NULL when the block satisfies docs/ops.md, else a static message naming the problem. */
static inline const char* mamba_selective_scan_contract_error(const mamba_selective_scan_params* p) {
  if (!p) return "mamba_selective_scan: parameter block is NULL";
  if (p->batch < 0 || p->dim < 0 || p->seqlen < 0 || p->dstate < 0) {
    return "mamba_selective_scan: batch, dim, seqlen and dstate must be >= 0";
  }
  if (p->groups < 1) return "mamba_selective_scan: groups must be >= 1";
  if (p->dim % p->groups != 0) return "mamba_selective_scan: dim must be a multiple of groups";
  if (!mamba_dtype_is_valid(p->dtype)) {
    return "mamba_selective_scan: dtype must be float32, float16 or bfloat16";
  }
  if (p->delta_softplus != 0 && p->delta_softplus != 1) return "mamba_selective_scan: delta_softplus must be 0 or 1";
  const int64_t activation_dims[] = {p->batch, p->dim, p->seqlen};
  const int64_t state_dims[] = {p->batch, p->dim, p->dstate};
  const int64_t a_dims[] = {p->dim, p->dstate};
  const int64_t bc_dims[] = {p->batch, p->groups, p->dstate, p->seqlen};
  int64_t activations, states, a_size, bc_size;
  if (!mamba_element_count(activation_dims, 3, &activations) || !mamba_element_count(state_dims, 3, &states) ||
      !mamba_element_count(a_dims, 2, &a_size) || !mamba_element_count(bc_dims, 4, &bc_size)) {
    return "mamba_selective_scan: tensor sizes overflow";
  }
  if (activations > 0 && (!p->u || !p->delta || !p->y)) return "mamba_selective_scan: u, delta and y must not be NULL";
  if (a_size > 0 && !p->A) return "mamba_selective_scan: A must not be NULL";
  if (bc_size > 0 && (!p->B || !p->C)) return "mamba_selective_scan: B and C must not be NULL";
  if (states > 0 && !p->final_state) return "mamba_selective_scan: final_state must not be NULL";
  return 0;
}

#endif /* MAMBA_SELECTIVE_SCAN_CHECK_H */
