// The SSD decode step (seqlen == 1): S = exp(dt A) S + dt x B^T per (batch, head), y = C.S
// + D x, gated; bound by reading and writing the [P, N] states. R consecutive lanes share a
// row (batch, head, p), each holding NS states (16-byte accesses where N allows); a
// butterfly over those lanes sums C.S.
#pragma once

#include "ssd_args.h"
#include "ssd_prefill.cuh"

namespace mamba_cuda {

template <typename T, int NS>
__global__ void __launch_bounds__(128) ssd_decode(const SsdArgs a, int log2_lanes, int64_t rows) {
  const int64_t gid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int R = 1 << log2_lanes;
  const int64_t row64 = gid >> log2_lanes;  // (b, h, p)
  const int sg = int(gid & (R - 1));
  const bool active = row64 < rows;
  const unsigned lanes = __ballot_sync(~0u, active);  // whole rows: R divides 32
  if (!active) return;
  const int row = int(row64);  // batch * nheads * headdim < 2^31 (mamba_ssd_scan_cuda_check)
  const int bh = row / a.P;
  const int h = bh % a.H, b = bh / a.H;
  const int n0 = sg * NS;
  const int valid = max(0, min(NS, a.N - n0));
  const bool vec = a.vec & kSsdVecState;

  // Every load first: the stores below may alias nothing, but the compiler cannot know.
  const float raw = to_float(static_cast<const T*>(a.dt)[bh]);
  const float bias = a.dt_bias ? a.dt_bias[h] : 0.f;
  const float A_h = a.A[h];
  const float xv = to_float(static_cast<const T*>(a.x)[row]);
  const float Dh = a.D ? a.D[h] : 0.f;
  const float zv = a.z ? to_float(static_cast<const T*>(a.z)[row]) : 0.f;
  const int64_t bc = (int64_t(b) * a.G + h / a.heads_per_group) * a.N + n0;
  Pack<float, NS> S;
  Pack<T, NS> Bv, Cv;
  load_pack(S, a.h0 ? a.h0 + int64_t(row) * a.N + n0 : nullptr, a.h0 ? valid : 0, vec);
  load_pack(Bv, static_cast<const T*>(a.B) + bc, valid, a.vec & kSsdVecBC);
  load_pack(Cv, static_cast<const T*>(a.C) + bc, valid, a.vec & kSsdVecBC);

  const float dt = ssd_time_step(raw, bias, a.softplus, a.dt_min, a.dt_max);
  const float decay = exp2_accurate(dt * A_h * kLog2e), dx = dt * xv;
  float acc = 0.f;
#pragma unroll
  for (int q = 0; q < NS; ++q) {
    const float s = fmaf(decay, S.get(q), dx * Bv.get(q));
    S.set(q, s);
    acc = fmaf(Cv.get(q), s, acc);
  }
  store_pack(S, a.hT + int64_t(row) * a.N + n0, valid, vec);
  for (int m = 1; m < R; m <<= 1) acc += __shfl_xor_sync(lanes, acc, m);
  if (sg == 0) {
    const float y = fmaf(Dh, xv, acc);
    static_cast<T*>(a.y)[row] = from_float<T>(a.z ? y * silu(zv) : y);
  }
}

}  // namespace mamba_cuda
