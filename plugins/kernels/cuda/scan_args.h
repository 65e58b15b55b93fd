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

}  // namespace mamba_cuda
