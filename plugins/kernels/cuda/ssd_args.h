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
  // Workspace of a segmented prefill: per (batch, head) and segment, the state entering the
  // segment [P, N] (first the segment's own end state from zero), and the log of the
  // segment's total decay.
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

}  // namespace mamba_cuda
