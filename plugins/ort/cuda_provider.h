// The CUDA execution provider of the mamba ops (custom_op.h): plugins/kernels/cuda
// (libmamba_kernels.so, through its C ABI) on ORT's compute stream. Built only when the CUDA
// kernels are (MAMBA_ORT_WITH_CUDA).
#ifndef MAMBA_ORT_CUDA_PROVIDER_H
#define MAMBA_ORT_CUDA_PROVIDER_H

#include "custom_op.h"

namespace mamba_ort {

struct CudaProvider {
  static constexpr const char* kName = "CUDAExecutionProvider";
  // Inputs and outputs are device memory of the session's GPU; only their shapes are on the host.
  static void launch(const mamba_selective_scan_params& p, Ort::KernelContext& context);
  static void launch(const mamba_ssd_scan_params& p, Ort::KernelContext& context);
};

}  // namespace mamba_ort

#endif  // MAMBA_ORT_CUDA_PROVIDER_H
