// Host side: launches the kernel and tiling that a Plan names.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "mamba_kernels.h"
#include "scan_args.h"
#include "scan_chained.cuh"
#include "scan_decode.cuh"
#include "scan_fused.cuh"
#include "scan_plan.h"
#include "scan_prefill.cuh"

namespace mamba_cuda {

// The tilings (Tiling<NS, R, WC, max registers per thread>). All blocks run the whole
// sequence, so they must be resident at once (a second wave would double the time): the
// register caps leave room for the blocks the benchmark shapes need.
using Direct32 = Tiling<4, 8, 4, 128>;    // N <= 32
using Direct64 = Tiling<4, 16, 4, 128>;   // N <= 64
using Direct128 = Tiling<4, 32, 8, 128>;  // N <= 128
using Direct256 = Tiling<8, 32, 8, 255>;  // N <= 256
// The fused kernel for N <= 16 (FusedTiling<NS, R, Tl, WC, max registers>): 4 lanes per
// channel in blocks of 4 warps (whose 32 channels share the staging of B and C: 1-8%
// faster than 2 warps on the H100, 8 warps were slower), or 8 lanes for fewer channels.
using Fused16 = FusedTiling<4, 4, 32, 4, 128>;
using Fused16r8 = FusedTiling<2, 8, 32, 2, 128>;
// The chained kernel for N <= 16 and few channels (ChainedTiling<NS, R, TR, WC, max
// registers, keep dt*B*u>): a channel per warp in 8 sub-chunks; for the 16-bit types of 16
// steps with dt*B*u recomputed in pass two (keeping both would spill), 6-12% faster on the
// H100 than sub-chunks of 8; float32 (whose tile-end re-anchoring takes registers too) would
// spill even so, and keeps sub-chunks of 8 steps.
template <typename T>
using Chained16 =
    std::conditional_t<sizeof(T) == 4, ChainedTiling<4, 4, 8, 4, 168>, ChainedTiling<4, 4, 16, 4, 168, false>>;

inline bool aligned(const void* p, int64_t row_elements, int element_bytes, int width) {
  return reinterpret_cast<uintptr_t>(p) % width == 0 && (row_elements * element_bytes) % width == 0;
}

// Launches a prefill kernel over blocks of Dc channels of one group, with VE-element runs
// of u, delta, z, y and VB-element runs of B, C per thread.
template <typename T, int VE, int VB, int Dc, int kThreads>
cudaError_t launch_tiles(void (*kernel)(ScanArgs), ScanArgs a, int64_t batch, size_t smem, cudaStream_t stream) {
  a.bpg = (a.cpg + Dc - 1) / Dc;
  constexpr int wu = pack_align<T, VE>(), wb = pack_align<T, VB>(), e = sizeof(T);
  a.vec = (aligned(a.u, a.L, e, wu) ? kVecU : 0) | (aligned(a.delta, a.L, e, wu) ? kVecDelta : 0) |
          (a.z && aligned(a.z, a.L, e, wu) ? kVecZ : 0) | (aligned(a.y, a.L, e, wu) ? kVecY : 0) |
          (aligned(a.B, a.L, e, wb) ? kVecB : 0) | (aligned(a.C, a.L, e, wb) ? kVecC : 0);
  const int64_t blocks = batch * a.G * a.bpg;
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<unsigned(blocks), kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, class K>
cudaError_t launch_prefill(ScanArgs a, int64_t batch, cudaStream_t stream) {
  return launch_tiles<T, Roles<T, K>::VE, Roles<T, K>::VB, K::Dc, K::kThreads>(
      scan_prefill<T, K>, a, batch, size_t(K::kSmemFloats) * sizeof(float), stream);
}

template <typename T, class K>
cudaError_t launch_fused(ScanArgs a, int64_t batch, cudaStream_t stream) {
  return launch_tiles<T, K::VE, K::VB, K::Dc, K::kThreads>(scan_fused<T, K>, a, batch,
                                                            size_t(K::kSmemFloats) * sizeof(float), stream);
}

template <typename T, class K>
cudaError_t launch_chained(ScanArgs a, int64_t batch, cudaStream_t stream) {
  return launch_tiles<T, K::VE, K::VB, K::Dc, K::kThreads>(scan_chained<T, K>, a, batch,
                                                            size_t(K::kSmemFloats) * sizeof(float), stream);
}

template <typename T, int NS, int R>
cudaError_t launch_decode_lanes(const ScanArgs& a, int64_t batch, cudaStream_t stream) {
  // One grid row per batch row (a grid row loops when batch exceeds the grid's 65535).
  const dim3 grid(unsigned((a.dim + kDecodeThreads / R - 1) / (kDecodeThreads / R)),
                  unsigned(batch < 65535 ? batch : 65535));
  const bool full = a.N == R * NS && a.vec == (kVecState | kVecB | kVecC) && a.G == 1 && a.h0 &&
                    batch * a.N < (int64_t{1} << 31) && a.dim * a.N < (int64_t{1} << 31);
  if (full) {
    scan_decode<T, NS, R, true><<<grid, kDecodeThreads, 0, stream>>>(a, int(batch));
  } else {
    scan_decode<T, NS, R, false><<<grid, kDecodeThreads, 0, stream>>>(a, int(batch));
  }
  return cudaGetLastError();
}

template <typename T, int NS>
cudaError_t launch_decode(ScanArgs a, int R, int64_t batch, cudaStream_t stream) {
  constexpr int ws = pack_align<float, NS>(), wbc = pack_align<T, NS>(), e = sizeof(T);
  const bool state = aligned(a.A, a.N, 4, ws) && aligned(a.hT, a.N, 4, ws) && (!a.h0 || aligned(a.h0, a.N, 4, ws));
  a.vec = (state ? kVecState : 0) | (aligned(a.B, a.N, e, wbc) ? kVecB : 0) | (aligned(a.C, a.N, e, wbc) ? kVecC : 0);
  switch (R) {
    case 1: return launch_decode_lanes<T, NS, 1>(a, batch, stream);
    case 2: return launch_decode_lanes<T, NS, 2>(a, batch, stream);
    case 4: return launch_decode_lanes<T, NS, 4>(a, batch, stream);
    case 8: return launch_decode_lanes<T, NS, 8>(a, batch, stream);
    case 16: return launch_decode_lanes<T, NS, 16>(a, batch, stream);
    case 32: return launch_decode_lanes<T, NS, 32>(a, batch, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t launch_scan(const mamba_selective_scan_params& p, const Plan& plan, cudaStream_t stream) {
  ScanArgs a{};
  a.u = p.u, a.delta = p.delta, a.A = p.A, a.B = p.B, a.C = p.C, a.D = p.D, a.z = p.z;
  a.delta_bias = p.delta_bias, a.h0 = p.initial_state, a.y = p.y, a.hT = p.final_state;
  a.L = p.seqlen, a.dim = p.dim, a.N = int(p.dstate), a.G = int(p.groups), a.cpg = int(p.dim / p.groups);
  a.softplus = p.delta_softplus;
  switch (plan.kernel) {
    case Kernel::kDecode4: return launch_decode<T, 4>(a, plan.decode_lanes, p.batch, stream);
    case Kernel::kDecode8: return launch_decode<T, 8>(a, plan.decode_lanes, p.batch, stream);
    case Kernel::kChained16: return launch_chained<T, Chained16<T>>(a, p.batch, stream);
    case Kernel::kFused16r8: return launch_fused<T, Fused16r8>(a, p.batch, stream);
    case Kernel::kFused16: return launch_fused<T, Fused16>(a, p.batch, stream);
    case Kernel::kDirect32: return launch_prefill<T, Direct32>(a, p.batch, stream);
    case Kernel::kDirect64: return launch_prefill<T, Direct64>(a, p.batch, stream);
    case Kernel::kDirect128: return launch_prefill<T, Direct128>(a, p.batch, stream);
    case Kernel::kDirect256: return launch_prefill<T, Direct256>(a, p.batch, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mamba_cuda
