// Which SSD kernels and tiling run a parameter block (host side, no CUDA types).
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "mamba_kernels.h"

namespace mamba_cuda {

struct SsdPlan {
  enum Kind { kNothing, kCopyState, kDecode, kPrefill } kind;
  int nt;          // prefill: states padded to 64, 128 or 256 columns
  int ptiles;      // prefill: blocks per head along the head dim
  int segments;    // prefill: segments per (batch, head), > 1 with ssd_segment_states (ssd_prefill.cuh)
  int seg_chunks;  // prefill: chunks per segment
};

// Blocks per multiprocessor of the prefill kernel's two forms (full, states only).
struct SsdOccupancy {
  int full, states;
};

// The environment variable MAMBA_KERNELS_SSD_SEGMENT = chunks per segment forces the
// segmentation of a prefill (for benchmarks, and for tests that reach every code path).
SsdPlan plan_ssd(const mamba_ssd_scan_params& p, int multiprocessors, SsdOccupancy occupancy);

// Workspace bytes of a plan: a prefill's per-step values (ssd_steps_bytes, first), then the
// segments' states and log decays.
size_t ssd_workspace_bytes(const mamba_ssd_scan_params& p, const SsdPlan& plan);
size_t ssd_steps_bytes(const mamba_ssd_scan_params& p);

}  // namespace mamba_cuda
