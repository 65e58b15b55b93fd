// The decode step (seqlen == 1): one state update per (batch, channel), bound by reading
// and writing the state. R consecutive lanes share a channel, each holding NS states
// (16-byte accesses when N allows); a butterfly over those lanes sums C*h.
#pragma once

#include "scan_args.h"
#include "scan_device.cuh"

namespace mamba_cuda {

template <typename T, int NS>
__global__ void __launch_bounds__(64) scan_decode(const ScanArgs a, int log2_lanes, int64_t rows) {
  // Shifts and 32-bit divisions only: 64-bit division is a long software sequence that
  // would delay every load of this latency-bound kernel.
  const int64_t gid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int R = 1 << log2_lanes;
  const int64_t row64 = gid >> log2_lanes;  // (b, d)
  const int sg = int(gid & (R - 1));
  const bool active = row64 < rows;
  const unsigned lanes = __ballot_sync(~0u, active);  // whole channels: R divides 32
  if (!active) return;
  const int row = int(row64);  // batch * dim < 2^31 (mamba_selective_scan_cuda_check)
  const int b = row / int(a.dim);
  const int d = row - b * int(a.dim);
  const int N = a.N;
  const int n0 = sg * NS;
  const int valid = max(0, min(NS, N - n0));
  const bool vec = a.vec & kVecState;

  // Every load first: the stores below may alias nothing, but the compiler cannot know.
  const float delta = to_float(static_cast<const T*>(a.delta)[row]);
  const float bias = a.delta_bias ? a.delta_bias[d] : 0.f;
  const float u = to_float(static_cast<const T*>(a.u)[row]);
  const float Dv = a.D ? a.D[d] : 0.f;
  const float zv = a.z ? to_float(static_cast<const T*>(a.z)[row]) : 0.f;
  const int64_t bc = (int64_t(b) * a.G + d / a.cpg) * N + n0;
  Pack<float, NS> A, h;
  Pack<T, NS> Bv, Cv;
  load_pack(A, a.A + int64_t(d) * N + n0, valid, vec);
  load_pack(h, a.h0 ? a.h0 + int64_t(row) * N + n0 : nullptr, a.h0 ? valid : 0, vec);
  load_pack(Bv, static_cast<const T*>(a.B) + bc, valid, a.vec & kVecB);
  load_pack(Cv, static_cast<const T*>(a.C) + bc, valid, a.vec & kVecC);

  const float dt = a.softplus ? softplus(delta + bias) : delta + bias;
  const float du = dt * u;
  float acc = 0.f;
#pragma unroll
  for (int q = 0; q < NS; ++q) {
    const float hq = fmaf(ex2(dt * A.get(q) * kLog2e), h.get(q), du * Bv.get(q));
    h.set(q, hq);
    acc = fmaf(Cv.get(q), hq, acc);
  }
  store_pack(h, a.hT + int64_t(row) * N + n0, valid, vec);
  for (int m = 1; m < R; m <<= 1) acc += __shfl_xor_sync(lanes, acc, m);
  if (sg == 0) {
    const float y = fmaf(Dv, u, acc);
    static_cast<T*>(a.y)[row] = from_float<T>(a.z ? y * silu(zv) : y);
  }
}

}  // namespace mamba_cuda
