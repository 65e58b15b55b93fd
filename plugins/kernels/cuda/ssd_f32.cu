// The SSD scan kernels for float activations (one file per type: they compile in parallel).
#include "ssd_launch.cuh"

namespace mamba_cuda {
template SsdOccupancy ssd_occupancy<float>(int);
template cudaError_t launch_ssd<float>(const mamba_ssd_scan_params&, const SsdPlan&, void*, int, cudaStream_t);
}  // namespace mamba_cuda
