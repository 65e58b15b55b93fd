// The selective scan kernels for __half activations (one file per type: they compile in parallel).
#include "scan_launch.cuh"

namespace mamba_cuda {
template cudaError_t launch_scan<__half>(const mamba_selective_scan_params&, const Plan&, cudaStream_t);
}
