// Which kernel and tiling runs a parameter block (host side, no CUDA types).
#pragma once

#include "mamba_kernels.h"

namespace mamba_cuda {

// The kernels, by tiling (scan_launch.cuh): the decode step; for dstate <= 16 the chained
// prefill (a warp per channel, its sub-chunks side by side, for few channels) and the fused
// one with 8 or 4 lanes per channel; one prefill tiling per larger dstate bucket.
enum class Kernel {
  kDecode4,
  kDecode8,
  kChained16,
  kFused16r8,
  kFused16,
  kDirect32,
  kDirect64,
  kDirect128,
  kDirect256,
};

struct Plan {
  Kernel kernel;
  int decode_lanes;  // decode: threads per channel (a power of two up to 32)
};

// multiprocessors: of the device that runs the scan. The environment variable
// MAMBA_KERNELS_SCAN_PLAN = chained, fused_r8 or fused forces the tiling of a
// prefill with dstate <= 16, decode4 or decode8 the states per lane of a decode step with
// dstate <= 128 (for benchmarks, and for tests that reach every code path; other values are
// ignored).
Plan plan_scan(const mamba_selective_scan_params& p, int multiprocessors);

}  // namespace mamba_cuda
