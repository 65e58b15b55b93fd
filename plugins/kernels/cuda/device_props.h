// Properties of the current CUDA device that the kernels' plans depend on.
#pragma once

#include <cuda_runtime.h>

namespace mamba_cuda {

// Multiprocessors of the calling thread's current device (132 if it cannot be read);
// cached per device (a benign race writes the same value).
inline int multiprocessor_count() {
  static int count[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 132;
  if (!count[device]) cudaDeviceGetAttribute(&count[device], cudaDevAttrMultiProcessorCount, device);
  return count[device] > 0 ? count[device] : 132;
}

}  // namespace mamba_cuda
