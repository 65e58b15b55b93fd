// The CPU execution provider of mamba.SelectiveScan: the shared op (selective_scan_op.h)
// running plugins/kernels/cpu on ORT's intra-op thread pool.
#ifndef MAMBA_ORT_SELECTIVE_SCAN_CPU_H
#define MAMBA_ORT_SELECTIVE_SCAN_CPU_H

#include "selective_scan_op.h"

namespace mamba_ort {

struct CpuProvider {
  static constexpr const char* kName = "CPUExecutionProvider";
  static void launch(const mamba_selective_scan_params& p, Ort::KernelContext& context);
};

}  // namespace mamba_ort

#endif  // MAMBA_ORT_SELECTIVE_SCAN_CPU_H
