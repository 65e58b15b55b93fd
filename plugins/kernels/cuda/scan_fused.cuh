// The fused prefill selective scan (seqlen != 1, dstate <= 16, from ~16 channels per SM):
// one stream of instructions per warp, laid out so that the special-function unit can set
// the pace (measured on the H100 it is latency-bound instead: docs/performance.md).
//
// The recurrence costs one MUFU.EX2 per state and step, and the unit does 16 per SM and
// clock, so it is the floor; everything else (softplus, the gate, loads, the sum over states)
// has to fit in the issue slots the exponentials leave free. A warp therefore owns CW channels
// end to end: lane (c, sg) holds states sg*NS .. sg*NS+NS-1 of channel c, and the R lanes of a
// channel also do its per-step work, VE consecutive steps each. Per tile of Tl steps:
//   A. the recurrence of tile i, fully unrolled in groups of 4 steps, with the next tile's
//      per-step work (dt = softplus(delta + bias), dt*u) woven in, one step per group: one
//      basic block, so the compiler can fill the gaps between exponentials with it (it
//      hoists that work to the top of the block: the loads it needs must be in by then);
//   then u, delta and z of the tile after next are loaded, so that B, C and the barrier
//   hide their latency (issued at C's end, every tile began with a wait for memory);
//   B. (after a warp sync) each lane sums the R partial C*h of its steps, adds D*u, gates with
//      silu(z) and stores y;
//   C. the block stages the next tile's B and C (shared by its channels) into the other half of
//      a double buffer; one block barrier per tile.
// (dt, dt*u) and the partial sums live in the warp's own shared memory, so nothing but B and
// C waits for other warps.
//
// float32 activations re-anchor the state at every tile end, as in scan_prefill.cuh.
#pragma once

#include "scan_args.h"
#include "scan_device.cuh"
#include "scan_tile_loads.cuh"

namespace mamba_cuda {

// A tiling of the fused kernel: lanes R state groups x CW channels, WC warps per block.
template <int NS_, int R_, int Tl_, int WC_, int kMaxRegisters_>
struct FusedTiling {
  static constexpr int NS = NS_, R = R_, Tl = Tl_, WC = WC_, kMaxRegisters = kMaxRegisters_;
  static constexpr int CW = 32 / R;         // channels per warp
  static constexpr int Dc = CW * WC;        // channels per block
  static constexpr int Np = NS * R;         // states per channel, padded
  static constexpr int VE = Tl / R;         // steps of its channel per lane and tile
  static constexpr int kGroups = Tl / 4;    // recurrence groups of 4 steps
  static constexpr int kThreads = 32 * WC;
  static constexpr int VB = Np * Tl / kThreads;  // steps of a B and a C row per thread
  // Row strides, padded so that the accesses of a quarter warp hit distinct banks: (dt, dt*u)
  // per channel; B or C per state; partial sums per (state group, channel), each state
  // group's block shifted by 8 more floats.
  static constexpr int SDT = 2 * Tl + 4, SB = Tl + 4, SY = Tl + 4, SYG = CW * SY + 8;
  static constexpr int kWarpFloats = 2 * CW * SDT + R * SYG;
  static constexpr int kSmemFloats = 4 * Np * SB + WC * kWarpFloats;
  static_assert(CW * R == 32 && Tl % 4 == 0 && VE % 2 == 0 && Np * Tl % kThreads == 0 && Tl % VB == 0,
                "fused tile shape");
};

// p ? x : y, opaque to the compiler: with a plain select it moves the work of x under a
// branch, which would split the unrolled recurrence that x is woven into.
__device__ __forceinline__ float select(bool p, float x, float y) {
  float r;
  asm("{\n\t.reg .pred q;\n\tsetp.ne.u32 q, %3, 0;\n\tselp.f32 %0, %1, %2, q;\n\t}"
      : "=f"(r)
      : "f"(x), "f"(y), "r"(unsigned(p)));
  return r;
}

template <typename T, class K>
__global__ void __launch_bounds__(K::kThreads) __maxnreg__(K::kMaxRegisters) scan_fused(const ScanArgs a) {
  constexpr int NS = K::NS, R = K::R, CW = K::CW, Dc = K::Dc, Np = K::Np, Tl = K::Tl, VE = K::VE;
  constexpr int VB = K::VB, SDT = K::SDT, SB = K::SB, SY = K::SY, SYG = K::SYG, kGroups = K::kGroups;
  constexpr bool kAnchor = sizeof(T) == 4;
  extern __shared__ float4 smem_f4[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float* sB = reinterpret_cast<float*>(smem_f4);      // [2][Np][SB]: B, row (n % NS) * R + n / NS
  float* sC = sB + 2 * Np * SB;                       // [2][Np][SB]: C, same rows
  float* sDT = sC + 2 * Np * SB + warp * K::kWarpFloats;  // [2][CW][SDT]: (dt, dt*u) per step
  float* sY = sDT + 2 * CW * SDT;                     // [R][SYG]: partial sums of C*h

  const auto [b, g, d0, cvalid] = block_channels(a, Dc);
  const int L = int(a.L);  // < 2^30 (mamba_selective_scan_cuda_check)
  const int N = a.N;
  const int c = lane / R, sg = lane % R;  // channel in the warp, state group
  const int cc = warp * CW + c;           // channel in the block
  const bool c_ok = cc < cvalid;
  const int64_t row = int64_t(b) * a.dim + d0 + cc;  // row (b, d) of u, delta, z, y and the states

  float A2[NS], h[NS];
#pragma unroll
  for (int q = 0; q < NS; ++q) {
    const int n = sg * NS + q;
    const bool ok = c_ok && n < N;
    A2[q] = ok ? a.A[int64_t(d0 + cc) * N + n] * kLog2e : 0.f;  // padding states stay 0
    h[q] = ok && a.h0 ? a.h0[row * N + n] : 0.f;
  }
  const float bias = c_ok && a.delta_bias ? a.delta_bias[d0 + cc] : 0.f;
  const float Dv = c_ok && a.D ? a.D[d0 + cc] : 0.f;
  const int lt = sg * VE;  // the lane's first step in a tile
  const int64_t at = row * a.L + lt;
  const T* u = static_cast<const T*>(a.u) + at;
  const T* delta = static_cast<const T*>(a.delta) + at;
  const T* z = a.z ? static_cast<const T*>(a.z) + at : nullptr;
  T* y = static_cast<T*>(a.y) + at;
  // B and C roles: VB consecutive steps of row bn (every thread has one).
  const int bn = tid * VB / Tl, bt = tid * VB % Tl;
  const bool bn_ok = bn < N;
  const int64_t bat = ((int64_t(b) * a.G + g) * N + bn) * a.L + bt;
  const T* Bg = static_cast<const T*>(a.B) + bat;
  const T* Cg = static_cast<const T*>(a.C) + bat;
  float* sB_p = sB + ((bn % NS) * R + bn / NS) * SB + bt;

  // u, delta, z of this tile (cu, cz), of the next (nu, nd, nz) and of the one after (fu, fd,
  // fz, in flight across parts B and C); B and C of the next tile.
  Pack<T, VE> fu, fd, fz, nu, nd, nz, cu, cz;
  Pack<T, VB> nb, nc;
  auto stage_bc = [&](int buf) { stage_bc_packs(sB_p + buf * Np * SB, 2 * Np * SB, nb, nc); };
  // Step e of the lane's run in the tile at t0: dt and dt*u into buffer buf (written in
  // pairs), dt added to span. Branch-free, so that it can sit inside the unrolled recurrence.
  float pdt = 0.f, pdu = 0.f;  // the even step of a pair
  auto step_work = [&](int e, int t0, int buf, float& span, const Pack<T, VE>& pu, const Pack<T, VE>& pd) {
    const float x = select(a.softplus, softplus(pd.get(e) + bias), pd.get(e) + bias);
    const float dt = c_ok && t0 + lt + e < L ? x : 0.f;  // a zero step leaves the state as it is
    const float du = dt * pu.get(e);
    span += dt;
    if (e % 2 == 0) {
      pdt = dt, pdu = du;
    } else {
      *reinterpret_cast<float4*>(sDT + buf * CW * SDT + c * SDT + 2 * (lt + e - 1)) = make_float4(pdt, pdu, dt, du);
    }
  };
  // The sum of dt over the tile for the re-anchoring: the R lanes of a channel are adjacent.
  auto channel_sum = [&](float s) {
#pragma unroll
    for (int m = 1; m < R; m <<= 1) s += __shfl_xor_sync(~0u, s, m);
    return s;
  };

  // Prologue: tile 0's and tile 1's loads issued together; tile 0's per-step work and B, C.
  float span = 0.f;
  {
    Pack<T, VE> d0;
    Pack<T, VB> b0, c0;
    load_run_packs(cu, d0, cz, u, delta, z, 0, L, lt, c_ok, a.vec);
    load_bc_packs(b0, c0, Bg, Cg, 0, L, bt, bn_ok, a.vec);
    load_run_packs(nu, nd, nz, u, delta, z, Tl, L, lt, c_ok, a.vec);
    load_bc_packs(nb, nc, Bg, Cg, Tl, L, bt, bn_ok, a.vec);
#pragma unroll
    for (int e = 0; e < VE; ++e) step_work(e, 0, 0, span, cu, d0);
    stage_bc_packs(sB_p, 2 * Np * SB, b0, c0);
  }
  span = channel_sum(span);
  __syncthreads();

  for (int t0 = 0, cur = 0; t0 < L; t0 += Tl, cur ^= 1) {
    // A. The recurrence of this tile, with the next tile's per-step work woven in.
    const float* dtp = sDT + cur * CW * SDT + c * SDT;
    const float* Bp = sB + cur * Np * SB + sg * SB;
    const float* Cp = Bp + 2 * Np * SB;
    float hs[NS], hl[NS];  // float32: the state at the tile start, and the tile's scan from zero
    if constexpr (kAnchor) {
#pragma unroll
      for (int q = 0; q < NS; ++q) hs[q] = h[q], hl[q] = 0.f;
    }
    float span_next = 0.f;
#pragma unroll
    for (int gr = 0; gr < kGroups; ++gr) {
      float s[8], acc[4] = {0.f, 0.f, 0.f, 0.f};
      load_shared<8>(s, dtp + 8 * gr);  // dt, dt*u of steps 4 gr .. 4 gr + 3
      scan4<NS, kAnchor>(s, A2, Bp + 4 * gr, Cp + 4 * gr, R * SB, h, hl, acc);
      store_shared<4>(sY + sg * SYG + c * SY + 4 * gr, acc);
#pragma unroll
      for (int e = 0; e < VE; ++e) {
        if (e * kGroups / VE == gr) step_work(e, t0 + Tl, cur ^ 1, span_next, nu, nd);
      }
    }
    if constexpr (kAnchor) {
#pragma unroll
      for (int q = 0; q < NS; ++q) h[q] = fmaf(exp2_accurate(A2[q] * span), hs[q], hl[q]);
    }
    span = channel_sum(span_next);
    __syncwarp();

    // The tile after next's u, delta, z (see the top of the file).
    load_run_packs(fu, fd, fz, u, delta, z, t0 + 2 * Tl, L, lt, c_ok, a.vec);

    // B. y of the lane's steps: the partial sums of the R state groups, skip, gate.
    // (The chained kernel finishes y the same way; as one shared function the float32
    // kernels ran up to 4% slower: docs/performance.md, item 15.)
    {
      float yv[VE], part[VE];
      load_shared<VE>(yv, sY + c * SY + lt);
#pragma unroll
      for (int s = 1; s < R; ++s) {
        load_shared<VE>(part, sY + s * SYG + c * SY + lt);
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
      store_pack(out, y + t0, c_ok ? min(L - t0 - lt, VE) : 0, a.vec & kVecY);
    }

    // C. The next tile's B and C staged, and the B and C of the one after loaded.
    stage_bc(cur ^ 1);
    cu = nu, cz = nz, nu = fu, nd = fd, nz = fz;
    load_bc_packs(nb, nc, Bg, Cg, t0 + 2 * Tl, L, bt, bn_ok, a.vec);
    __syncthreads();
  }

#pragma unroll
  for (int q = 0; q < NS; ++q) {
    const int n = sg * NS + q;
    if (c_ok && n < N) a.hT[row * N + n] = h[q];
  }
}

}  // namespace mamba_cuda
