// The global side of a tile of the dstate <= 16 prefill kernels (scan_fused.cuh,
// scan_chained.cuh): loads issued a tile ahead of their use, kept as the raw words they were
// loaded as, and the staging of B and C into shared memory as float32. Free functions of the
// packs they fill: shared as a struct holding the packs, the fused kernel's code came out
// 1-11% slower on the H100.
#pragma once

#include "scan_args.h"
#include "scan_device.cuh"

namespace mamba_cuda {

// The tile at step t0 of the thread's channel: VE steps of u, delta and z (z may be null; the
// channel's run starts at step e0 of a tile). Nothing past L is read; an absent channel reads
// nothing.
template <typename T, int VE>
__device__ __forceinline__ void load_run_packs(Pack<T, VE>& pu, Pack<T, VE>& pd, Pack<T, VE>& pz, const T* u,
                                               const T* delta, const T* z, int t0, int L, int e0, bool channel_ok,
                                               unsigned vec) {
  const int v = channel_ok ? min(max(L - t0 - e0, 0), VE) : 0;
  load_pack(pu, u + t0, v, vec & kVecU);
  load_pack(pd, delta + t0, v, vec & kVecDelta);
  if (z) load_pack(pz, z + t0, v, vec & kVecZ);
}

// The tile at step t0 of one B and one C row: VB steps from step bt; an absent row reads
// nothing.
template <typename T, int VB>
__device__ __forceinline__ void load_bc_packs(Pack<T, VB>& pb, Pack<T, VB>& pc, const T* B, const T* C, int t0, int L,
                                              int bt, bool row_ok, unsigned vec) {
  const int vb = row_ok ? min(max(L - t0 - bt, 0), VB) : 0;
  load_pack(pb, B + t0, vb, vec & kVecB);
  load_pack(pc, C + t0, vb, vec & kVecC);
}

// B's run at dst and C's c_offset floats on, as float32.
template <typename T, int VB>
__device__ __forceinline__ void stage_bc_packs(float* dst, int c_offset, const Pack<T, VB>& pb, const Pack<T, VB>& pc) {
  float fb[VB], fc[VB];
#pragma unroll
  for (int k = 0; k < VB; ++k) fb[k] = pb.get(k), fc[k] = pc.get(k);
  store_shared<VB>(dst, fb);
  store_shared<VB>(dst + c_offset, fc);
}

}  // namespace mamba_cuda
