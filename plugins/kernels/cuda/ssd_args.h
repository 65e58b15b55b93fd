// The SSD scan kernels' argument block: the C ABI's parameters plus what the launcher derives.
#pragma once

#include <stdint.h>

namespace mamba_cuda {

struct SsdArgs {
  const void* x;
  const void* dt;
  const float* A;
  const void* B;
  const void* C;
  const float* D;        // or null
  const void* z;         // or null
  const float* dt_bias;  // or null
  const float* h0;       // initial state, or null (zeros)
  void* y;
  float* hT;  // final state
  // Workspace of a segmented prefill: per (batch, head) and segment but the last, the
  // segment's end state from a zero state [P, N] and the log of its total decay; with more
  // than kSsdBlockChainMax segments, ssd_pass_segments then turns each into the true end state.
  float* seg_states;
  float* seg_log_decay;
  // Workspace of every prefill: the per-step values of each (batch, head, chunk), ssd_steps.cuh.
  unsigned char* steps;
  int64_t L;
  int batch, H, P, N, G, heads_per_group;
  int ptiles;      // blocks per head along P
  int segments;    // segments per (batch, head): sequence pieces scanned in parallel
  int seg_chunks;  // chunks per segment
  int softplus;
  float dt_min, dt_max;
  unsigned vec;  // kSsdVec* bits: which tensors allow 16-byte (x, B, C) or paired (y, z) accesses
};

enum : unsigned { kSsdVecX = 1, kSsdVecBC = 2, kSsdVecYZ = 4, kSsdVecState = 8 };

// Segments up to which each block of the full kernel chains the earlier segments' states itself;
// beyond, every block of the last segments would read too many of them (from L2, one after the
// other: at 11 segments it cost more than the chaining kernel it saves), and ssd_pass_segments
// chains them first.
constexpr int kSsdBlockChainMax = 4;

}  // namespace mamba_cuda
