// The prefill selective scan for few channels (batch 1: below ~16 channels per SM),
// dstate <= 16: one warp per channel, and the time split over its lanes, so that no block
// barrier sits between the parts of a tile.
//
// Lane (sg, j) holds states sg*NS .. sg*NS+NS-1 of its channel in sub-chunk j: a tile of
// Tl = J*TR steps is J sub-chunks of TR steps, scanned side by side. Per tile:
//   1. each lane turns VE steps of u, delta into (dt, dt*u) into the warp's shared memory;
//   2. pass one: the lane's sub-chunk from a zero state, keeping exp(dt*A) (and, with
//      kKeepBu, dt*B*u) in registers, so that every exponential is evaluated once; and the
//      sub-chunk's decay;
//   3. the chain: an inclusive scan over the J sub-chunks with shuffles (the tile's start
//      state folded into sub-chunk 0), which gives each sub-chunk its true start state and
//      the next tile its start state;
//   4. pass two: the recurrence again from the true start with the kept factors (two FMAs
//      per state and step, and a multiply to recompute dt*B*u without kKeepBu), partial
//      sums of C*h into the warp's shared memory; each lane
//      then sums the R partials of its VE steps, adds D*u, gates with silu(z), stores y;
//   5. the block stages the next tile's B and C (shared by its channels) into the other half
//      of a double buffer: the one block barrier per tile.
// (An earlier form spread the sub-chunks over the warps of a block: five block barriers per
// tile and most threads idle in the chain, 9-28% slower on the H100.)
//
// float32 activations re-anchor the state at every tile end, as in scan_prefill.cuh.
#pragma once

#include "scan_args.h"
#include "scan_device.cuh"
#include "scan_tile_loads.cuh"

namespace mamba_cuda {

// A tiling: R state groups of NS states x J = 32 / R sub-chunks of TR steps per warp, WC
// warps (channels) per block.
template <int NS_, int R_, int TR_, int WC_, int kMaxRegisters_, bool kKeepBu_ = true>
struct ChainedTiling {
  static constexpr int NS = NS_, R = R_, TR = TR_, WC = WC_, kMaxRegisters = kMaxRegisters_;
  static constexpr bool kKeepBu = kKeepBu_;  // keep dt*B*u from pass one, or recompute it in pass two
  static constexpr int J = 32 / R;           // sub-chunks per tile
  static constexpr int Dc = WC;              // channels per block
  static constexpr int Np = NS * R;          // states per channel, padded
  static constexpr int Tl = J * TR;          // tile length
  static constexpr int VE = TR / R;          // steps of per-step work per lane and tile
  static constexpr int kThreads = 32 * WC;
  static constexpr int VB = Np * Tl / kThreads;  // steps of a B and a C row per thread
  // Padded strides, so that the 8 lanes of a quarter warp (one state group, 8 sub-chunks)
  // hit distinct banks: a sub-chunk's run in a B, C or partial-sum row; a B or C row; the
  // (dt, dt*u) pairs of a sub-chunk.
  static constexpr int TRp = TR + 4, SB = J * TRp, SDJ = 2 * TR + 4, SYG = J * TRp;
  static constexpr int kWarpFloats = J * SDJ + R * SYG;
  static constexpr int kSmemFloats = 4 * Np * SB + WC * kWarpFloats;
  static_assert(J * R == 32 && TR % 4 == 0 && VE % 2 == 0 && Np * Tl % kThreads == 0 && TR % VB == 0,
                "chained tile shape");
};

template <typename T, class K>
__global__ void __launch_bounds__(K::kThreads) __maxnreg__(K::kMaxRegisters) scan_chained(const ScanArgs a) {
  constexpr int NS = K::NS, R = K::R, J = K::J, TR = K::TR, Np = K::Np, Tl = K::Tl, VE = K::VE, VB = K::VB;
  constexpr int TRp = K::TRp, SB = K::SB, SDJ = K::SDJ, SYG = K::SYG;
  constexpr bool kAnchor = sizeof(T) == 4;
  extern __shared__ float4 smem_f4[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float* sB = reinterpret_cast<float*>(smem_f4);               // [2][Np][SB]: B, row n, sub-chunk runs
  float* sC = sB + 2 * Np * SB;                                // [2][Np][SB]: C, same layout
  float* sDT = sC + 2 * Np * SB + warp * K::kWarpFloats;       // [J][SDJ]: (dt, dt*u) per step
  float* sY = sDT + J * SDJ;                                   // [R][SYG]: partial sums of C*h

  const auto [b, g, d0, cvalid] = block_channels(a, K::Dc);
  const int L = int(a.L);  // < 2^30 (mamba_selective_scan_cuda_check)
  const int N = a.N;
  const int sg = lane / J, j = lane % J;  // state group; sub-chunk (consecutive lanes, for the scan)
  const bool c_ok = warp < cvalid;
  const int d = d0 + warp;
  const int64_t row = int64_t(b) * a.dim + d;  // row (b, d) of u, delta, z, y and the states

  float A2[NS], H[NS];  // H: the state at the tile start (the same in every sub-chunk lane)
#pragma unroll
  for (int q = 0; q < NS; ++q) {
    const int n = sg * NS + q;
    const bool ok = c_ok && n < N;
    A2[q] = ok ? a.A[int64_t(d) * N + n] * kLog2e : 0.f;  // padding states stay 0
    H[q] = ok && a.h0 ? a.h0[row * N + n] : 0.f;
  }
  const float bias = c_ok && a.delta_bias ? a.delta_bias[d] : 0.f;
  const float Dv = c_ok && a.D ? a.D[d] : 0.f;
  const int e0 = j * TR + sg * VE;  // the lane's first step of per-step work (and of y) in a tile
  const int64_t at = row * a.L + e0;
  const T* u = static_cast<const T*>(a.u) + at;
  const T* delta = static_cast<const T*>(a.delta) + at;
  const T* z = a.z ? static_cast<const T*>(a.z) + at : nullptr;
  T* y = static_cast<T*>(a.y) + at;
  // B and C roles: VB consecutive steps of row bn (every thread has one; VB divides TR).
  const int bn = tid * VB / Tl, bt = tid * VB % Tl;
  const bool bn_ok = bn < N;
  const int64_t bat = ((int64_t(b) * a.G + g) * N + bn) * a.L + bt;
  const T* Bg = static_cast<const T*>(a.B) + bat;
  const T* Cg = static_cast<const T*>(a.C) + bat;
  float* sB_p = sB + bn * SB + (bt / TR) * TRp + bt % TR;

  Pack<T, VE> nu, nd, nz, cu, cd, cz;  // next tile's u, delta, z (a tile ahead); this tile's
  Pack<T, VB> nb, nc;
  auto load_tile = [&](int t0) {
    load_run_packs(nu, nd, nz, u, delta, z, t0, L, e0, c_ok, a.vec);
    load_bc_packs(nb, nc, Bg, Cg, t0, L, bt, bn_ok, a.vec);
  };
  auto stage_bc = [&](int buf) { stage_bc_packs(sB_p + buf * Np * SB, 2 * Np * SB, nb, nc); };

  {  // tile 0's and tile 1's loads issued together
    Pack<T, VB> b0, c0;
    load_run_packs(cu, cd, cz, u, delta, z, 0, L, e0, c_ok, a.vec);
    load_bc_packs(b0, c0, Bg, Cg, 0, L, bt, bn_ok, a.vec);
    load_tile(Tl);
    stage_bc_packs(sB_p, 2 * Np * SB, b0, c0);
  }
  __syncthreads();

  for (int t0 = 0, cur = 0; t0 < L; t0 += Tl, cur ^= 1) {
    // 1. dt and dt*u of the lane's VE steps, then the TR steps of its sub-chunk.
    {
      float pairs[2 * VE];
#pragma unroll
      for (int k = 0; k < VE; ++k) {
        float x = cd.get(k) + bias;
        if (a.softplus) x = softplus(x);
        pairs[2 * k] = c_ok && t0 + e0 + k < L ? x : 0.f;  // a zero step leaves the state as it is
        pairs[2 * k + 1] = pairs[2 * k] * cu.get(k);
      }
      store_shared<2 * VE>(sDT + j * SDJ + 2 * sg * VE, pairs);
    }
    __syncwarp();
    float s[2 * TR];
    load_shared<2 * TR>(s, sDT + j * SDJ);
    float span = 0.f;
#pragma unroll
    for (int t = 0; t < TR; ++t) span += s[2 * t];

    // 2. Pass one: the sub-chunk from a zero state; E its end state, P its decay.
    const float* Bp = sB + cur * Np * SB + sg * NS * SB + j * TRp;
    const float* Cp = Bp + 2 * Np * SB;
    float dA[TR][NS], dBu[K::kKeepBu ? TR : 1][NS], E[NS], P[NS];
#pragma unroll
    for (int q = 0; q < NS; ++q) {
      float bq[TR];
      load_shared<TR>(bq, Bp + q * SB);
      float hl = 0.f;
#pragma unroll
      for (int t = 0; t < TR; ++t) {
        dA[t][q] = ex2(s[2 * t] * A2[q]);
        const float bu = s[2 * t + 1] * bq[t];
        if constexpr (K::kKeepBu) dBu[t][q] = bu;
        hl = fmaf(dA[t][q], hl, bu);
      }
      P[q] = ex2(A2[q] * span);
      E[q] = j == 0 ? fmaf(P[q], H[q], hl) : hl;  // sub-chunk 0 starts from the tile's start state
    }

    // 3. The chain: inclusive scan of (P, E) over the sub-chunks; E becomes the true end state.
    float Sp = span;  // with re-anchoring: the sum of dt up to the sub-chunk's end
#pragma unroll
    for (int o = 1; o < J; o <<= 1) {
#pragma unroll
      for (int q = 0; q < NS; ++q) {
        const float Eo = __shfl_up_sync(~0u, E[q], o, J), Po = __shfl_up_sync(~0u, P[q], o, J);
        if (j >= o) E[q] = fmaf(P[q], Eo, E[q]), P[q] *= Po;
      }
      if constexpr (kAnchor) {
        const float So = __shfl_up_sync(~0u, Sp, o, J);
        if (j >= o) Sp += So;
      }
    }
    float hs[NS];  // the sub-chunk's true start state
    const int last = sg * J + J - 1;
#pragma unroll
    for (int q = 0; q < NS; ++q) {
      const float prev = __shfl_up_sync(~0u, E[q], 1, J);
      hs[q] = j == 0 ? H[q] : prev;
      const float end = __shfl_sync(~0u, E[q], last);
      if constexpr (kAnchor) {
        // end = (product of the approximate decays) H + G, G the tile's scan from zero: the
        // start of the next tile takes the tile's decay from exp2_accurate instead.
        const float decay = __shfl_sync(~0u, P[q], last), total = __shfl_sync(~0u, Sp, last);
        H[q] = fmaf(exp2_accurate(A2[q] * total), H[q], fmaf(-decay, H[q], end));
      } else {
        H[q] = end;
      }
    }

    // 4. Pass two: from the true start, with the kept factors; then y of the lane's VE steps.
    {
      float acc[TR];
#pragma unroll
      for (int t = 0; t < TR; ++t) acc[t] = 0.f;
#pragma unroll
      for (int q = 0; q < NS; ++q) {
        float cq[TR], bq[TR];
        load_shared<TR>(cq, Cp + q * SB);
        if constexpr (!K::kKeepBu) load_shared<TR>(bq, Bp + q * SB);
        float h = hs[q];
#pragma unroll
        for (int t = 0; t < TR; ++t) {
          h = fmaf(dA[t][q], h, K::kKeepBu ? dBu[t][q] : s[2 * t + 1] * bq[t]);
          acc[t] = fmaf(cq[t], h, acc[t]);
        }
      }
      store_shared<TR>(sY + sg * SYG + j * TRp, acc);
    }
    __syncwarp();
    {  // y: as the fused kernel's (kept apart for float32's speed: docs/performance.md, item 15)
      float yv[VE], part[VE];
      load_shared<VE>(yv, sY + j * TRp + sg * VE);
#pragma unroll
      for (int r = 1; r < R; ++r) {
        load_shared<VE>(part, sY + r * SYG + j * TRp + sg * VE);
#pragma unroll
        for (int k = 0; k < VE; ++k) yv[k] += part[k];
      }
      Pack<T, VE> out;
#pragma unroll
      for (int k = 0; k < VE; ++k) {
        yv[k] = fmaf(Dv, cu.get(k), yv[k]);
        if (z) yv[k] *= silu(cz.get(k));
      }
#pragma unroll
      for (int k = 0; k < VE; k += 2) out.set2(k, yv[k], yv[k + 1]);
      store_pack(out, y + t0, c_ok ? min(L - t0 - e0, VE) : 0, a.vec & kVecY);
    }

    // 5. The next tile's B and C, and the loads of the one after.
    stage_bc(cur ^ 1);
    cu = nu, cd = nd, cz = nz;
    load_tile(t0 + 2 * Tl);
    __syncthreads();
  }

  if (j == 0) {
#pragma unroll
    for (int q = 0; q < NS; ++q) {
      const int n = sg * NS + q;
      if (c_ok && n < N) a.hT[row * N + n] = H[q];
    }
  }
}

}  // namespace mamba_cuda
