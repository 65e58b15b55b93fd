/* The contract checks of a mamba_ssd_scan_params block (docs/ops.md), header-only like
 * selective_scan_check.h, whose helpers it shares. Each library's own limits come on top.
 */
#ifndef MAMBA_SSD_SCAN_CHECK_H
#define MAMBA_SSD_SCAN_CHECK_H

#include <stdint.h>

#include "mamba_kernels.h"
#include "selective_scan_check.h"

/* NULL when the block satisfies docs/ops.md, else a static message naming the problem. */
static inline const char* mamba_ssd_scan_contract_error(const mamba_ssd_scan_params* p) {
  if (!p) return "mamba_ssd_scan: parameter block is NULL";
  if (p->batch < 0 || p->seqlen < 0 || p->nheads < 0 || p->headdim < 0 || p->dstate < 0) {
    return "mamba_ssd_scan: batch, seqlen, nheads, headdim and dstate must be >= 0";
  }
  if (p->groups < 1) return "mamba_ssd_scan: groups must be >= 1";
  if (p->nheads % p->groups != 0) return "mamba_ssd_scan: nheads must be a multiple of groups";
  if (!mamba_dtype_is_valid(p->dtype)) return "mamba_ssd_scan: dtype must be float32, float16 or bfloat16";
  if (p->dt_softplus != 0 && p->dt_softplus != 1) return "mamba_ssd_scan: dt_softplus must be 0 or 1";
  /* x != x: NaN, without <math.h>. A NaN bound or an empty range has no clamp to apply. */
  if (p->dt_min != p->dt_min || p->dt_max != p->dt_max) return "mamba_ssd_scan: dt_min and dt_max must not be NaN";
  if (p->dt_min > p->dt_max) return "mamba_ssd_scan: dt_min must be <= dt_max";
  const int64_t activation_dims[] = {p->batch, p->seqlen, p->nheads, p->headdim};
  const int64_t step_dims[] = {p->batch, p->seqlen, p->nheads};
  const int64_t bc_dims[] = {p->batch, p->seqlen, p->groups, p->dstate};
  const int64_t state_dims[] = {p->batch, p->nheads, p->headdim, p->dstate};
  int64_t activations, steps, bc_size, states;
  if (!mamba_element_count(activation_dims, 4, &activations) || !mamba_element_count(step_dims, 3, &steps) ||
      !mamba_element_count(bc_dims, 4, &bc_size) || !mamba_element_count(state_dims, 4, &states)) {
    return "mamba_ssd_scan: tensor sizes overflow";
  }
  if (activations > 0 && (!p->x || !p->y)) return "mamba_ssd_scan: x and y must not be NULL";
  if (steps > 0 && !p->dt) return "mamba_ssd_scan: dt must not be NULL";
  if (p->nheads > 0 && !p->A) return "mamba_ssd_scan: A must not be NULL";
  if (bc_size > 0 && (!p->B || !p->C)) return "mamba_ssd_scan: B and C must not be NULL";
  if (states > 0 && !p->final_state) return "mamba_ssd_scan: final_state must not be NULL";
  return 0;
}

#endif /* MAMBA_SSD_SCAN_CHECK_H */
