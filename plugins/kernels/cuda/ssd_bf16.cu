// The SSD scan kernels for __nv_bfloat16 activations (one file per type: they compile in parallel).
#include "ssd_launch.cuh"

namespace mamba_cuda {
template SsdOccupancy ssd_occupancy<__nv_bfloat16>(int);
template cudaError_t launch_ssd<__nv_bfloat16>(const mamba_ssd_scan_params&, const SsdPlan&, void*, int, cudaStream_t);
}  // namespace mamba_cuda
