// The prefill selective scan (seqlen != 1) for dstate > 16 (scan_fused.cuh and
// scan_chained.cuh cover dstate <= 16).
//
// A thread owns NS states of one channel (thread state group sg holds states sg*NS ..
// sg*NS+NS-1; R groups per channel). A block holds Dc channels of one group (they share B
// and C) and walks the whole sequence in tiles, so the state never leaves the chip. Per tile:
//   1. threads turn their own run of steps of u, delta, z into dt = softplus(delta+bias),
//      dt*u, D*u and silu(z) (once per channel and step), and their share of B, C into
//      float32 rows of shared memory; the next tile's loads are issued right after;
//   2. the recurrence runs from shared memory, one ex2 per state and step; each thread's
//      partial sums of C*h over its NS states go to shared memory;
//   3. the same element threads sum the R partials of their steps, add D*u, gate, and store
//      y (coalesced, vector stores where aligned).
//
// float32 activations re-anchor the state at every tile end: h = exp(A * sum dt) h_start +
// (the tile's scan from zero), that total decay from exp2_accurate, so the approximate
// per-step factors' small bias never compounds over more than a tile (without it, 1e-5 of
// drift after a few thousand steps of dt ~ 1e-3: inside float16 / bfloat16 tolerances, not
// float32's, so the 16-bit types skip the extra FMA per state and step).
#pragma once

#include "scan_args.h"
#include "scan_device.cuh"

namespace mamba_cuda {

// A tiling of the prefill kernel. Lanes of a warp: R state groups x CW channels; WC warps
// along channels per block; tiles of Tl = 32 steps.
template <int NS_, int R_, int WC_, int kMaxRegisters_>
struct Tiling {
  static constexpr int NS = NS_, R = R_, WC = WC_, kMaxRegisters = kMaxRegisters_;
  static constexpr int CW = 32 / R;   // channels per warp
  static constexpr int Dc = CW * WC;  // channels per block
  static constexpr int Np = NS * R;   // states per channel, padded
  static constexpr int Tl = 32;       // tile length
  static constexpr int kThreads = 32 * WC;
  static constexpr int VU = Dc * Tl / kThreads;  // steps of a channel per thread, all threads
  static constexpr int VB = Np * Tl / kThreads;  // steps of a B or C row per thread, all threads
  // Shared memory rows, padded against bank conflicts: (dt, dt*u) or (D*u, silu(z)) per
  // step; B or C per state; partial sums of C*h per thread state group.
  static constexpr int SDT = 2 * Tl + 4, SB = Tl + 4, SY = Tl + 4;
  static constexpr int kSmemFloats = 2 * Dc * SDT + 2 * Np * SB + Dc * R * SY + 2 * Dc * Np + Dc;
  static_assert(CW * R == 32, "lanes must fill a warp");
  static_assert(VU >= 1 && VB >= 1 && NS % 4 == 0, "tile shape");
};

// Element roles: each of the first Dc * Tl / VE threads owns VE consecutive steps of one
// channel (dt, dt*u, D*u, the gate, then y), in 16-byte accesses where the tile allows.
// Each of the first Np * Tl / VB threads owns VB consecutive steps of a B and a C row.
template <typename T, class K>
struct Roles {
  static constexpr int kVec = 16 / int(sizeof(T));
  static constexpr int VE = K::VU >= kVec ? K::VU : kVec;
  static constexpr int VB = K::VB > kVec ? K::VB : kVec;
  static constexpr int kElem = K::Dc * K::Tl / VE, kRows = K::Np * K::Tl / VB;
  static constexpr bool kAnchor = sizeof(T) == 4;  // re-anchor the state at tile ends
  static_assert(K::Tl % VE == 0 && K::Tl % VB == 0 && VE % 2 == 0, "element roles");
};

template <typename T, class K>
__global__ void __launch_bounds__(K::kThreads) __maxnreg__(K::kMaxRegisters) scan_prefill(const ScanArgs a) {
  constexpr int NS = K::NS, R = K::R, CW = K::CW, Dc = K::Dc, Np = K::Np;
  constexpr int Tl = K::Tl, SDT = K::SDT, SB = K::SB, SY = K::SY;
  constexpr int VE = Roles<T, K>::VE, VB = Roles<T, K>::VB, kElem = Roles<T, K>::kElem;
  constexpr int kRows = Roles<T, K>::kRows;
  constexpr bool kAnchor = Roles<T, K>::kAnchor;
  extern __shared__ float4 smem_f4[];
  float* sDT = reinterpret_cast<float*>(smem_f4);  // [Dc][SDT]: (dt, dt*u) per step
  float* sEp = sDT + Dc * SDT;                     // [Dc][SDT]: (D*u, silu(z)) per step
  float* sB = sEp + Dc * SDT;                      // [Np][SB]: B, row (n % NS) * R + n / NS
  float* sC = sB + Np * SB;                        // [Np][SB]: C, same rows
  float* sY = sC + Np * SB;                        // [Dc][R][SY]: partial sums of C*h
  float* sA2 = sY + Dc * R * SY;                   // [Dc][Np]: A * log2(e), 0 for padding
  float* sH = sA2 + Dc * Np;                       // [Dc][Np]: the state at the tile start
  float* sSum = sH + Dc * Np;                      // [Dc]: sum of dt over the tile

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const auto [b, g, d0, cvalid] = block_channels(a, Dc);
  const int L = int(a.L);  // < 2^30 (mamba_selective_scan_cuda_check)
  const int N = a.N;
  const int64_t row0 = int64_t(b) * a.dim + d0;  // row (b, d0) of u, delta, z, y and the states

  for (int k = tid; k < Dc * Np; k += K::kThreads) {
    const int cc = k / Np, n = k - cc * Np;
    const bool ok = cc < cvalid && n < N;
    sA2[k] = ok ? a.A[int64_t(d0 + cc) * N + n] * kLog2e : 0.f;
    sH[k] = ok && a.h0 ? a.h0[(row0 + cc) * N + n] : 0.f;
  }
  __syncthreads();

  // Recurrence role: states sg*NS + q of channel c.
  const int sg = lane % R, c = warp * CW + lane / R;
  float A2[NS], h[NS];  // h: the running state
  load_shared<NS>(A2, sA2 + c * Np + sg * NS);
  load_shared<NS>(h, sH + c * Np + sg * NS);

  const bool elem = tid < kElem;
  const int lc = elem ? tid * VE / Tl : 0, lt = elem ? tid * VE % Tl : 0;
  const bool lc_ok = elem && lc < cvalid;
  const int64_t at = (row0 + lc) * a.L + lt;  // element (b, d0 + lc, lt) of u, delta, z and y
  const T* u = static_cast<const T*>(a.u) + at;
  const T* delta = static_cast<const T*>(a.delta) + at;
  const T* z = a.z ? static_cast<const T*>(a.z) + at : nullptr;
  T* y = static_cast<T*>(a.y) + at;
  const float bias = lc_ok && a.delta_bias ? a.delta_bias[d0 + lc] : 0.f;
  const float Dv = lc_ok && a.D ? a.D[d0 + lc] : 0.f;
  const bool rows = tid < kRows;
  const int bn = rows ? tid * VB / Tl : 0, bt = rows ? tid * VB % Tl : 0;
  const bool bn_ok = rows && bn < N;
  const int64_t bat = ((int64_t(b) * a.G + g) * N + bn) * a.L + bt;  // element (b, g, bn, bt) of B, C
  const T* Bg = static_cast<const T*>(a.B) + bat;
  const T* Cg = static_cast<const T*>(a.C) + bat;
  float* sB_p = sB + ((bn % NS) * R + bn / NS) * SB + bt;

  Pack<T, VE> nu, nd, nz;  // the next tile's elements, loaded a tile ahead
  Pack<T, VB> nb, nc;
  auto load_tile = [&](int t0) {
    if (elem) {
      const int v = lc_ok ? min(max(L - t0 - lt, 0), VE) : 0;
      load_pack(nu, u + t0, v, a.vec & kVecU);
      load_pack(nd, delta + t0, v, a.vec & kVecDelta);
      if (z) load_pack(nz, z + t0, v, a.vec & kVecZ);
    }
    if (rows) {
      const int v = bn_ok ? min(max(L - t0 - bt, 0), VB) : 0;
      load_pack(nb, Bg + t0, v, a.vec & kVecB);
      load_pack(nc, Cg + t0, v, a.vec & kVecC);
    }
  };

  if (L > 0) load_tile(0);
  for (int t0 = 0; t0 < L; t0 += Tl) {
    __syncthreads();  // the previous tile's readers of shared memory are done

    // 1. Per element: dt, dt*u, D*u and the gate; the sum of dt over the tile; B and C.
    {
      float dt[VE], du[VE], skip[VE], gate[VE];
#pragma unroll
      for (int k = 0; k < VE; ++k) {
        float x = nd.get(k) + bias;
        if (a.softplus) x = softplus(x);
        const float uk = nu.get(k);
        dt[k] = lc_ok && t0 + lt + k < L ? x : 0.f;  // a zero step leaves the state as it is
        du[k] = dt[k] * uk;
        skip[k] = Dv * uk;
        gate[k] = z ? silu(nz.get(k)) : 1.f;
      }
      if (elem) {
        float* p = sDT + lc * SDT + 2 * lt;
#pragma unroll
        for (int k = 0; k < VE; k += 2) {
          *reinterpret_cast<float4*>(p + 2 * k) = make_float4(dt[k], du[k], dt[k + 1], du[k + 1]);
          *reinterpret_cast<float4*>(p + (sEp - sDT) + 2 * k) = make_float4(skip[k], gate[k], skip[k + 1], gate[k + 1]);
        }
      }
      {
        float sum = 0.f;
#pragma unroll
        for (int k = 0; k < VE; ++k) sum += dt[k];
        // The Tl / VE threads of a channel are consecutive lanes (every lane takes part).
#pragma unroll
        for (int m = 1; m < Tl / VE; m <<= 1) sum += __shfl_xor_sync(~0u, sum, m);
        if (elem && tid % (Tl / VE) == 0) sSum[lc] = sum;
      }
    }
    if (rows) {
      float fb[VB], fc[VB];
#pragma unroll
      for (int k = 0; k < VB; ++k) fb[k] = nb.get(k), fc[k] = nc.get(k);
      store_shared<VB>(sB_p, fb);
      store_shared<VB>(sB_p + (sC - sB), fc);
    }
    if (t0 + Tl < L) load_tile(t0 + Tl);
    __syncthreads();

    // 2. The recurrence.
    const float* dtp = sDT + c * SDT;
    const float* Bp = sB + sg * SB;
    const float* Cp = sC + sg * SB;
    float* yp = sY + (c * R + sg) * SY;
    float* hp = sH + c * Np + sg * NS;
    float hl[NS];  // the tile's scan from a zero state, for the re-anchoring
    if constexpr (kAnchor) {
      store_shared<NS>(hp, h);
#pragma unroll
      for (int q = 0; q < NS; ++q) hl[q] = 0.f;
    }
#pragma unroll 2
    for (int t = 0; t < Tl; t += 4) {
      float s[8], acc[4] = {0.f, 0.f, 0.f, 0.f};
      load_shared<8>(s, dtp + 2 * t);  // dt, dt*u of steps t .. t+3
      scan4<NS, kAnchor>(s, A2, Bp + t, Cp + t, R * SB, h, hl, acc);
      store_shared<4>(yp + t, acc);
    }
    if constexpr (kAnchor) {
      float start[NS];
      load_shared<NS>(start, hp);
      const float span = sSum[c];
#pragma unroll
      for (int q = 0; q < NS; ++q) h[q] = fmaf(exp2_accurate(A2[q] * span), start[q], hl[q]);
    }
    __syncthreads();

    // 3. Per element: sum the partials, skip connection, gate, store.
    if (elem) {
      float yv[VE], part[VE], ep[2 * VE];
      load_shared<VE>(yv, sY + lc * R * SY + lt);
#pragma unroll
      for (int s = 1; s < R; ++s) {
        load_shared<VE>(part, sY + (lc * R + s) * SY + lt);
#pragma unroll
        for (int k = 0; k < VE; ++k) yv[k] += part[k];
      }
      load_shared<2 * VE>(ep, sEp + lc * SDT + 2 * lt);
      Pack<T, VE> out;
#pragma unroll
      for (int k = 0; k < VE; ++k) out.set(k, (yv[k] + ep[2 * k]) * ep[2 * k + 1]);
      store_pack(out, y + t0, lc_ok ? min(L - t0 - lt, VE) : 0, a.vec & kVecY);
    }
  }

  store_shared<NS>(sH + c * Np + sg * NS, h);
  __syncthreads();
  for (int k = tid; k < Dc * Np; k += K::kThreads) {
    const int cc = k / Np, n = k - cc * Np;
    if (cc < cvalid && n < N) a.hT[(row0 + cc) * N + n] = sH[k];
  }
}

}  // namespace mamba_cuda
