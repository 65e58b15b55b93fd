// The CPU execution provider of the mamba ops (custom_op.h): plugins/kernels/cpu on ORT's
// intra-op thread pool.
#ifndef MAMBA_ORT_CPU_PROVIDER_H
#define MAMBA_ORT_CPU_PROVIDER_H

#include "custom_op.h"

namespace mamba_ort {

struct CpuProvider {
  static constexpr const char* kName = "CPUExecutionProvider";
  static void launch(const mamba_selective_scan_params& p, Ort::KernelContext& context);
  static void launch(const mamba_ssd_scan_params& p, Ort::KernelContext& context);
};

}  // namespace mamba_ort

#endif  // MAMBA_ORT_CPU_PROVIDER_H
