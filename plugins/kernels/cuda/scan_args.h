// The kernels' argument block: the C ABI's parameters plus what the launcher derives.
#pragma once

#include <stdint.h>

namespace mamba_cuda {

struct ScanArgs {
  const void* u;
  const void* delta;
  const float* A;
  const void* B;
  const void* C;
  const float* D;           // or null
  const void* z;            // or null
  const float* delta_bias;  // or null
  const float* h0;          // initial state, or null (zeros)
  void* y;
  float* hT;  // final state
  int64_t L, dim;
  int N, G, cpg;  // cpg: channels per group
  int bpg;        // prefill: blocks per group
  int softplus;
  unsigned vec;  // kVec* bits: which tensors allow the kernel's vector accesses
};

enum : unsigned { kVecU = 1, kVecDelta = 2, kVecZ = 4, kVecY = 8, kVecB = 16, kVecC = 32, kVecState = 64 };

#ifdef __CUDACC__
// The channels of a prefill block (a.bpg blocks of Dc channels per group): batch b, group g,
// the first channel d0, and how many of its Dc channels lie inside the group.
struct BlockChannels {
  int b, g, d0, valid;
};

__device__ __forceinline__ BlockChannels block_channels(const ScanArgs& a, int Dc) {
  const int per_batch = a.G * a.bpg;
  const int b = blockIdx.x / per_batch;
  const int g = (blockIdx.x - b * per_batch) / a.bpg;
  const int cb = blockIdx.x - b * per_batch - g * a.bpg;
  return {b, g, g * a.cpg + cb * Dc, min(Dc, a.cpg - cb * Dc)};
}
#endif

}  // namespace mamba_cuda
