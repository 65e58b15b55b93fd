// Host side of the SSD scan: launches the kernels a plan names, for activations of type T.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "mamba_kernels.h"
#include "ssd_args.h"
#include "ssd_decode.cuh"
#include "ssd_plan.h"
#include "ssd_prefill.cuh"

namespace mamba_cuda {

// p and every row of row_elements elements are aligned to `width` bytes.
inline bool rows_aligned(const void* p, int64_t row_elements, int element_bytes, int width) {
  return reinterpret_cast<uintptr_t>(p) % width == 0 && (row_elements * element_bytes) % width == 0;
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, int smem) {
  return smem > 48 * 1024 ? cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem)
                          : cudaSuccess;
}

template <typename T, int NT>
SsdOccupancy prefill_occupancy() {
  using K = SsdTiling<T, NT>;
  SsdOccupancy o{1, 1};
  if (allow_smem(ssd_prefill<T, NT, false>, K::kSmemBytes) == cudaSuccess &&
      allow_smem(ssd_prefill<T, NT, true>, K::kSmemBytes) == cudaSuccess) {
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.full, ssd_prefill<T, NT, false>, K::kThreads, K::kSmemBytes);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.states, ssd_prefill<T, NT, true>, K::kThreads, K::kSmemBytes);
  }
  o.full = o.full > 0 ? o.full : 1;
  o.states = o.states > 0 ? o.states : 1;
  return o;
}

template <typename T>
SsdOccupancy ssd_occupancy(int nt) {
  return nt == 64 ? prefill_occupancy<T, 64>() : nt == 128 ? prefill_occupancy<T, 128>() : prefill_occupancy<T, 256>();
}

template <typename T, int NT>
cudaError_t launch_ssd_prefill(SsdArgs a, int multiprocessors, cudaStream_t stream) {
  using K = SsdTiling<T, NT>;
  const int e = sizeof(T);
  a.vec = (a.N > 0 && rows_aligned(a.x, a.P, e, 16) ? kSsdVecX : 0) |
          (a.N > 0 && rows_aligned(a.B, a.N, e, 16) && rows_aligned(a.C, a.N, e, 16) ? kSsdVecBC : 0) |
          (rows_aligned(a.y, a.P, e, 2 * e) && (!a.z || rows_aligned(a.z, a.P, e, 2 * e)) ? kSsdVecYZ : 0) |
          (rows_aligned(a.hT, a.N, 4, 8) && (!a.h0 || rows_aligned(a.h0, a.N, 4, 8)) ? kSsdVecState : 0);
  const int64_t chains = int64_t(a.batch) * a.H * a.ptiles;
  const int64_t chunk_items = int64_t(a.batch) * a.H * ssd_chunks(a.L);
  ssd_chunk_steps<T><<<unsigned((chunk_items + 3) / 4), 128, 0, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (a.segments > 1) {
    if ((err = allow_smem(ssd_prefill<T, NT, true>, K::kSmemBytes)) != cudaSuccess) return err;
    ssd_prefill<T, NT, true><<<unsigned(chains * (a.segments - 1)), K::kThreads, K::kSmemBytes, stream>>>(a);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (a.segments > kSsdBlockChainMax) {
      const int64_t elements = int64_t(a.batch) * a.H * a.P * a.N;
      const int64_t blocks = (elements + 255) / 256, cap = int64_t(multiprocessors) * 8;
      ssd_pass_segments<8><<<unsigned(blocks < cap ? blocks : cap), 256, 0, stream>>>(a);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
  }
  if ((err = allow_smem(ssd_prefill<T, NT, false>, K::kSmemBytes)) != cudaSuccess) return err;
  ssd_prefill<T, NT, false><<<unsigned(chains * a.segments), K::kThreads, K::kSmemBytes, stream>>>(a);
  return cudaGetLastError();
}

template <typename T, int NS>
cudaError_t launch_ssd_decode(SsdArgs a, cudaStream_t stream) {
  const int groups = (a.N + NS - 1) / NS;
  int log2_lanes = 0;
  while ((1 << log2_lanes) < groups) ++log2_lanes;
  constexpr int ws = pack_align<float, NS>(), wbc = pack_align<T, NS>();
  const int e = sizeof(T);
  a.vec = (rows_aligned(a.hT, a.N, 4, ws) && (!a.h0 || rows_aligned(a.h0, a.N, 4, ws)) ? kSsdVecState : 0) |
          (rows_aligned(a.B, a.N, e, wbc) && rows_aligned(a.C, a.N, e, wbc) ? kSsdVecBC : 0);
  const int64_t rows = int64_t(a.batch) * a.H * a.P;
  constexpr int kThreads = 128;
  const int64_t blocks = ((rows << log2_lanes) + kThreads - 1) / kThreads;
  ssd_decode<T, NS><<<unsigned(blocks), kThreads, 0, stream>>>(a, log2_lanes, rows);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_ssd(const mamba_ssd_scan_params& p, const SsdPlan& plan, void* workspace, int multiprocessors,
                       cudaStream_t stream) {
  SsdArgs a{};
  a.x = p.x, a.dt = p.dt, a.A = p.A, a.B = p.B, a.C = p.C, a.D = p.D, a.z = p.z, a.dt_bias = p.dt_bias;
  a.h0 = p.initial_state, a.y = p.y, a.hT = p.final_state;
  a.L = p.seqlen, a.batch = int(p.batch), a.H = int(p.nheads), a.P = int(p.headdim), a.N = int(p.dstate);
  a.G = int(p.groups), a.heads_per_group = int(p.nheads / p.groups);
  a.softplus = p.dt_softplus, a.dt_min = p.dt_min, a.dt_max = p.dt_max;
  a.ptiles = plan.ptiles, a.segments = plan.segments, a.seg_chunks = plan.seg_chunks;
  if (plan.kind == SsdPlan::kPrefill) {
    a.steps = static_cast<unsigned char*>(workspace);
    if (plan.segments > 1) {
      a.seg_states = reinterpret_cast<float*>(a.steps + ssd_steps_bytes(p));
      a.seg_log_decay = a.seg_states + int64_t(plan.segments - 1) * p.batch * p.nheads * p.headdim * p.dstate;
    }
  }
  switch (plan.kind) {
    case SsdPlan::kNothing: return cudaSuccess;
    case SsdPlan::kCopyState: {
      const size_t bytes = size_t(p.batch * p.nheads * p.headdim * p.dstate) * sizeof(float);
      if (!p.initial_state) return cudaMemsetAsync(p.final_state, 0, bytes, stream);
      if (p.initial_state == p.final_state) return cudaSuccess;
      return cudaMemcpyAsync(p.final_state, p.initial_state, bytes, cudaMemcpyDeviceToDevice, stream);
    }
    case SsdPlan::kDecode:
      return p.dstate > 128 ? launch_ssd_decode<T, 8>(a, stream) : launch_ssd_decode<T, 4>(a, stream);
    case SsdPlan::kPrefill:
      if (plan.nt == 64) return launch_ssd_prefill<T, 64>(a, multiprocessors, stream);
      if (plan.nt == 128) return launch_ssd_prefill<T, 128>(a, multiprocessors, stream);
      return launch_ssd_prefill<T, 256>(a, multiprocessors, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace mamba_cuda
