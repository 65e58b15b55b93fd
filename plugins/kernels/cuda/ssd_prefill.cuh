// The prefill SSD scan (seqlen >= 2): the chunked "state space duality" algorithm.
//
// A block owns one (batch, head, 64 columns of the head dim) and a run of chunks of 64 steps
// (a segment); it walks them in order, its [64, N] state in float32 registers. Per chunk:
//   1. cp.async brings x, B, C into shared memory one chunk ahead (float16 / bfloat16),
//      with the chunk's per-step values (dt, float64 cumulative sums of dt A, weights and
//      decays) that the pre-pass ssd_chunk_steps wrote (ssd_steps.cuh);
//   2. row phase, warp w owning 16 rows t (and 64 or 32 columns p): scores C B^T for s <= t
//      and the state's contribution C S_in^T share the k loop over N (one A fragment of C);
//      the scores times exp(cum_t - cum_s) dt_s become the A fragments of the intra-chunk
//      product with x straight from the accumulators; y = exp(cum_t) C S_in^T + that, plus
//      D x, gated by silu(z), stored. With 8 warps, the two warps of a row tile take
//      alternate 16-column tiles of its scores, each multiplies its own with all 64 columns
//      of x, and they swap the partial y of each other's columns through shared memory;
//   3. state phase, warp w owning N / warps state columns of all 64 rows p:
//      S = exp(cum_end) S + x^T (dt_s exp(cum_end - cum_s) B) (the weighted operand in two
//      pieces, see ssd_mma.cuh), then S goes to shared memory for the next chunk's row phase.
// Only two barriers per chunk. The tensor cores see 16-bit operands with float32
// accumulation; float32 activations are split into three bfloat16 pieces (ssd_mma.cuh).
//
// A sequence too long for the blocks the batch gives (batch 1: one block per head) is cut
// into segments scanned in parallel: ssd_segment_states (the same kernel, state phase only)
// gives each segment's end state from zero and total decay, and the full kernel's block of
// segment j starts from the initial state chained through those of segments 0..j-1 (a few
// FMAs per state element and segment, read from L2). With more than kSsdBlockChainMax
// segments, ssd_pass_segments chains them in between instead, and a block reads one state.
#pragma once

#include <type_traits>

#include "ssd_args.h"
#include "ssd_mma.cuh"
#include "ssd_steps.cuh"

namespace mamba_cuda {

constexpr int kSsdPT = 64;  // head-dim columns per block

// The block shape for activations T and states padded to NT columns (64, 128 or 256).
template <typename T, int NT>
struct SsdTiling {
  using E = T;            // shared-memory element: the activation type itself
  using M = MmaType<T>;   // tensor-core operand type
  // 8 warps for states padded to 128 columns or more (N > 64): twice the warps per
  // multiprocessor of 4 (2 blocks fit either way, by shared memory), at the price of an
  // exchange of partial outputs between the two warps sharing a row tile.
  static constexpr int kWarps = NT > 64 ? 8 : 4;
  static constexpr int kThreads = 32 * kWarps;
  // float32 tiles are twice as large: one stage, so that a block fits.
  static constexpr int kStages = std::is_same_v<T, float> ? 1 : 2;
  static constexpr int kPad = 16 / int(sizeof(E));  // one 16-byte access per row: no bank conflicts
  static constexpr int LX = kSsdPT + kPad, LB = NT + kPad;
  static constexpr int kStageElems = kSsdQ * LX + 2 * kSsdQ * LB;  // x, B, C
  static constexpr int kStateElems = kSsdPT * LB;                 // S for the row phase
  // A stage: the chunk's per-step values (ssd_steps.cuh), then x, B, C.
  static constexpr int kStageBytes = kSsdStepBytes + kStageElems * int(sizeof(E));
  static constexpr int kSmemBytes = kStages * kStageBytes + kStateElems * int(sizeof(E));
  static constexpr int kRowSplit = kWarps / 4;      // warps sharing a 16-row tile
  static constexpr int PW = kSsdPT / kRowSplit;     // p columns of y a warp finishes and stores
  static constexpr int kScoreTiles = 4 / kRowSplit; // 16-column score tiles a warp may own
  static constexpr int NW = NT / kWarps;            // state columns of a warp in the state phase
  static constexpr int NJ = NW / 8;
  static constexpr int PX = kExactPieces<T>;        // x, B, C, S (and the scores, rounded)
  static constexpr int PS = kWeightedPieces<T>;     // the weighted B of the state update
  static constexpr int kMinBlocks = (NT > 128 || std::is_same_v<T, float>) ? 1 : 2;
  static_assert(NJ % 2 == 0 && PW % 16 == 0 && kRowSplit <= 2, "tile shape");
  // The exchange of partial y (float4 per lane and 8-column tile) reuses the chunk's C tile.
  static_assert(kRowSplit == 1 || 4 * kRowSplit * (PW / 8) * 32 * 16 <= kSsdQ * LB * int(sizeof(E)), "exchange");
};

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// ROWS x COLS of g (row stride `stride`) into s (row stride ld) by the block's kThreads
// threads; rows >= rows_valid or columns >= cols_valid read as zero. vec: 16-byte aligned
// rows and cols_valid a multiple of 16 bytes, loaded with cp.async (completed by
// cp_async_wait_all); else plain loads. A thread's copies share its column and are a fixed
// number of rows apart, so the unrolled loop is an address increment and a row check per
// copy (a strided loop with per-copy divisions cost ~250 instructions per chunk).
template <int ROWS, int COLS, int kThreads, typename E>
__device__ __forceinline__ void load_tile(E* s, int ld, const E* g, int64_t stride, int rows_valid, int cols_valid,
                                          bool vec) {
  constexpr int V = 16 / int(sizeof(E));
  if (vec) {
    constexpr int kPerRow = COLS / V;
    static_assert(kThreads % kPerRow == 0 && (ROWS * kPerRow) % kThreads == 0, "tile shape");
    constexpr int kRowStep = kThreads / kPerRow, kCopies = ROWS * kPerRow / kThreads;
    const int r = threadIdx.x / kPerRow, col = (threadIdx.x % kPerRow) * V;
    const bool col_ok = col < cols_valid;
    const E* src = g + r * stride + col;
    const int64_t src_step = kRowStep * stride;
#pragma unroll
    for (int i = 0; i < kCopies; ++i, src += src_step) {
      const bool ok = col_ok && r + i * kRowStep < rows_valid;
      cp_async16(s + (r + i * kRowStep) * ld + col, ok ? src : g, ok ? 16 : 0);
    }
  } else {
    for (int c = threadIdx.x; c < ROWS * COLS; c += kThreads) {
      const int r = c / COLS, col = c % COLS;
      s[r * ld + col] = r < rows_valid && col < cols_valid ? g[r * stride + col] : from_float<E>(0.f);
    }
  }
}

// Two consecutive elements as floats (the second only where `both`); paired access when vec.
template <typename T>
__device__ __forceinline__ float2 load_two(const T* p, bool vec, bool both) {
  if (vec && both) {
    if constexpr (sizeof(T) == 4) {
      return *reinterpret_cast<const float2*>(p);
    } else {
      return unpack2<T>(*reinterpret_cast<const uint32_t*>(p));
    }
  }
  return make_float2(to_float(p[0]), both ? to_float(p[1]) : 0.f);
}

// The same pair of 16-bit elements as the word they make (low half first), unconverted.
template <typename T>
__device__ __forceinline__ uint32_t load_two_raw(const T* p, bool vec, bool both) {
  static_assert(sizeof(T) == 2, "16-bit elements");
  if (vec && both) return *reinterpret_cast<const uint32_t*>(p);
  const uint16_t* q = reinterpret_cast<const uint16_t*>(p);
  return both ? uint32_t(q[0]) | uint32_t(q[1]) << 16 : uint32_t(q[0]);
}

template <typename T>
__device__ __forceinline__ void store_two(T* p, float2 v, bool vec, bool both) {
  if (vec && both) {
    if constexpr (sizeof(T) == 4) {
      *reinterpret_cast<float2*>(p) = v;
    } else {
      *reinterpret_cast<uint32_t*>(p) = pack2<T>(v.x, v.y);
    }
    return;
  }
  p[0] = from_float<T>(v.x);
  if (both) p[1] = from_float<T>(v.y);
}

// The prefill kernel; kStatesOnly: ssd_segment_states (the end state of segment j from a zero
// state, into seg_states slot j + 1, and its log decay). Grid: (batch, head, p tile, segment).
template <typename T, int NT, bool kStatesOnly>
__global__ void __launch_bounds__(SsdTiling<T, NT>::kThreads, SsdTiling<T, NT>::kMinBlocks)
    ssd_prefill(const SsdArgs a) {
  using K = SsdTiling<T, NT>;
  using E = typename K::E;
  using M = typename K::M;
  constexpr int Q = kSsdQ, PX = K::PX, PS = K::PS, NJ = K::NJ, PTL = K::PW / 8, R = K::kRowSplit;
  constexpr int kAll = kSsdPT / 8;  // 8-column tiles of y across the block's columns
  extern __shared__ __align__(16) unsigned char smem[];
  E* state_tile = reinterpret_cast<E*>(smem + K::kStages * K::kStageBytes);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
  const int segs = kStatesOnly ? a.segments - 1 : a.segments;
  int rest = blockIdx.x;
  const int seg = rest % segs;
  rest /= segs;
  const int pt = rest % a.ptiles;
  const int bh = rest / a.ptiles;
  const int h = bh % a.H, b = bh / a.H;
  const int grp = h / a.heads_per_group;
  const int p0 = pt * kSsdPT;
  const int p_valid = min(kSsdPT, a.P - p0);
  const int64_t t_begin = int64_t(seg) * a.seg_chunks * Q;
  const int64_t t_end = min(a.L, t_begin + int64_t(a.seg_chunks) * Q);
  const int chunks = int((t_end - t_begin + Q - 1) / Q);

  const E* x = static_cast<const E*>(a.x) + ((int64_t(b) * a.L) * a.H + h) * a.P + p0;
  const E* Bg = static_cast<const E*>(a.B) + (int64_t(b) * a.L * a.G + grp) * a.N;
  const E* Cg = static_cast<const E*>(a.C) + (int64_t(b) * a.L * a.G + grp) * a.N;
  const int64_t x_stride = int64_t(a.H) * a.P, bc_stride = int64_t(a.G) * a.N;
  const bool vec_x = a.vec & kSsdVecX, vec_bc = a.vec & kSsdVecBC;

  const unsigned char* steps = a.steps + int64_t(bh) * ssd_chunks(a.L) * kSsdStepBytes;
  auto issue_loads = [&](int stage, int64_t t0) {
    unsigned char* st = smem + stage * K::kStageBytes;
    for (int i = threadIdx.x; i < kSsdStepBytes / 16; i += K::kThreads) {
      cp_async16(st + 16 * i, steps + (t0 / Q) * kSsdStepBytes + 16 * i, 16);
    }
    E* s = reinterpret_cast<E*>(st + kSsdStepBytes);
    const int rows = int(min(int64_t(Q), t_end - t0));
    load_tile<Q, kSsdPT, K::kThreads>(s, K::LX, x + t0 * x_stride, x_stride, rows, p_valid, vec_x);
    E* sB = s + Q * K::LX;
    load_tile<Q, NT, K::kThreads>(sB, K::LB, Bg + t0 * bc_stride, bc_stride, rows, a.N, vec_bc);
    if (!kStatesOnly) {
      load_tile<Q, NT, K::kThreads>(sB + Q * K::LB, K::LB, Cg + t0 * bc_stride, bc_stride, rows, a.N, vec_bc);
    }
    cp_async_commit();
  };

  // The state: warp w holds rows p = 16 mt + g (+8) and columns n = w NW + 8 j + 2 tq (+1).
  // Entering segment seg of the full kernel: h0 (or zeros), then for each earlier segment j
  // S = exp(log decay j) S + its end state from zero; or, chained by ssd_pass_segments, the
  // end state of segment seg - 1.
  const int nw0 = warp * K::NW;
  const bool vec_state = a.vec & kSsdVecState;
  const int64_t slot0 = int64_t(bh) * (a.segments - 1);
  float S[4][NJ][4];
  auto chain_in = [&](const float* src, float decay) {
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int p = 16 * mt + g + 8 * hf, n = nw0 + 8 * j + 2 * tq;
          float2 v = make_float2(0.f, 0.f);
          if (p < p_valid && n < a.N) v = load_two(src + int64_t(p0 + p) * a.N + n, vec_state, n + 1 < a.N);
          S[mt][j][2 * hf] = fmaf(decay, S[mt][j][2 * hf], v.x);
          S[mt][j][2 * hf + 1] = fmaf(decay, S[mt][j][2 * hf + 1], v.y);
        }
      }
    }
  };
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
    for (int j = 0; j < NJ; ++j) S[mt][j][0] = S[mt][j][1] = S[mt][j][2] = S[mt][j][3] = 0.f;
  }
  if (!kStatesOnly) {
    const bool chained = a.segments > kSsdBlockChainMax;
    const int first = chained ? max(seg - 1, 0) : 0;
    for (int j = a.h0 && (seg == 0 || !chained) ? -1 : first; j < seg; ++j) {  // j = -1: h0
      const float* src = j < 0 ? a.h0 + int64_t(bh) * a.P * a.N : a.seg_states + (slot0 + j) * a.P * a.N;
      chain_in(src, j < 0 || chained ? 0.f : exp2_accurate(a.seg_log_decay[slot0 + j] * kLog2e));
    }
  }
  auto store_state_tile = [&]() {  // S as E into the row phase's tile [p][n]
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          E* q = state_tile + (16 * mt + g + 8 * hf) * K::LB + nw0 + 8 * j + 2 * tq;
          store_two(q, make_float2(S[mt][j][2 * hf], S[mt][j][2 * hf + 1]), true, true);
        }
      }
    }
  };
  if (!kStatesOnly) store_state_tile();

  const float Dh = a.D ? a.D[h] : 0.f;
  double seg_log_decay = 0.0;

  issue_loads(0, t_begin);

  // Row tile rt has rt + 1 score tiles (16 columns s each). A multiprocessor's scheduler runs
  // warps w and w + 4: with 8 warps, the second half (member 1) takes the row tiles in
  // reverse, and the two members of row tile rt take alternate score tiles starting at
  // (member + rt) % 2, so that no scheduler gets more than 3 of the 10.
  const int rt = warp >= 4 ? 7 - warp : warp, member = warp >> 2, pw0 = member * K::PW;
  const int first_tile = (member + rt) % R;
  const int r0 = 16 * rt + g, r1 = r0 + 8;
  for (int k = 0; k < chunks; ++k) {
    const int64_t t0 = t_begin + int64_t(k) * Q;
    const int stage = K::kStages == 2 ? (k & 1) : 0;
    const SsdSteps st{smem + stage * K::kStageBytes};
    E* sx = reinterpret_cast<E*>(st.p + kSsdStepBytes);
    const Tile<E> xs{sx, K::LX}, Bs{sx + Q * K::LX, K::LB}, Cs{sx + Q * (K::LX + K::LB), K::LB};
    cp_async_wait_all();
    __syncthreads();  // chunk k in shared memory; everyone is done with chunk k - 1
    if (K::kStages == 2 && k + 1 < chunks) issue_loads(stage ^ 1, t0 + Q);
    if (kStatesOnly && threadIdx.x == 0) seg_log_decay += *st.log_decay();

    if constexpr (!kStatesOnly) {
      // The gate's loads first, as the raw 16-bit pairs: the products hide them (converted
      // here, the warp waited for each load at once: a fifth of the kernel's stalls).
      const int64_t row0 = ((int64_t(b) * a.L + t0 + r0) * a.H + h) * a.P + p0, row1 = row0 + 8 * x_stride;
      const bool vec_yz = a.vec & kSsdVecYZ;
      uint32_t zraw[2][PTL];
      if constexpr (sizeof(T) == 2) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
          for (int j = 0; j < PTL; ++j) {
            const int p = pw0 + 8 * j + 2 * tq;
            zraw[hf][j] = 0u;
            if (a.z && t0 + (hf ? r1 : r0) < t_end && p < p_valid) {
              zraw[hf][j] = load_two_raw(static_cast<const T*>(a.z) + (hf ? row1 : row0) + p, vec_yz, p + 1 < p_valid);
            }
          }
        }
      }
      // Row phase, products: this warp's score tiles [16 rows t, 16 columns s] and C S_in^T
      // [16 t, PW p].
      float acc_s[2 * K::kScoreTiles][4], acc_i[PTL][4];
#pragma unroll
      for (int j = 0; j < 2 * K::kScoreTiles; ++j) acc_s[j][0] = acc_s[j][1] = acc_s[j][2] = acc_s[j][3] = 0.f;
#pragma unroll
      for (int j = 0; j < PTL; ++j) acc_i[j][0] = acc_i[j][1] = acc_i[j][2] = acc_i[j][3] = 0.f;
      const Tile<E> Ss{state_tile, K::LB};
#pragma unroll 2
      for (int ks = 0; ks < NT / 16; ++ks) {
        const FragA<PX> ca = load_a<M, PX>(Cs, 16 * rt, 16 * ks, false);
#pragma unroll
        for (int i = 0; i < K::kScoreTiles; ++i) {
          const int jj = first_tile + R * i;
          if (jj <= rt) {
            FragB<PX> bb[2];
            load_b<M, PX>(bb, Bs, 16 * jj, 16 * ks, false);
            mma<M>(acc_s[2 * i], ca, bb[0]);
            mma<M>(acc_s[2 * i + 1], ca, bb[1]);
          }
        }
#pragma unroll
        for (int pp = 0; pp < PTL / 2; ++pp) {
          FragB<PX> bb[2];
          load_b<M, PX>(bb, Ss, pw0 + 16 * pp, 16 * ks, false);
          mma<M>(acc_i[2 * pp], ca, bb[0]);
          mma<M>(acc_i[2 * pp + 1], ca, bb[1]);
        }
      }
      __syncthreads();  // every read of the state tile and of C is done

      // Scores -> exp(cum_t - cum_s) dt_s C_t.B_s for s <= t, else 0.
      const double* cum = st.cum();
      const float *dts = st.dt(), *e_start = st.e_start();
      const double c0 = cum[r0], c1 = cum[r1];
#pragma unroll
      for (int i = 0; i < K::kScoreTiles; ++i) {
        const int jj = first_tile + R * i;
        if (jj <= rt) {
#pragma unroll
          for (int q = 0; q < 2; ++q) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int s = 16 * jj + 8 * q + 2 * tq + (e & 1), t = e < 2 ? r0 : r1;
              const float decay = ex2(float(((e < 2 ? c0 : c1) - cum[s])) * kLog2e);
              acc_s[2 * i + q][e] = s <= t ? acc_s[2 * i + q][e] * decay * dts[s] : 0.f;
            }
          }
        }
      }
      // y over all kAll tiles, this warp's own PW columns first: tile j covers columns
      // (pw0 + 8 j) mod 64, so that every register index is a constant.
      float y[kAll][4];
      const float e0 = e_start[r0], e1 = e_start[r1];
#pragma unroll
      for (int j = 0; j < kAll; ++j) {
        const bool own = j < PTL;
        y[j][0] = own ? acc_i[j][0] * e0 : 0.f, y[j][1] = own ? acc_i[j][1] * e0 : 0.f;
        y[j][2] = own ? acc_i[j][2] * e1 : 0.f, y[j][3] = own ? acc_i[j][3] * e1 : 0.f;
      }
#pragma unroll
      for (int i = 0; i < K::kScoreTiles; ++i) {
        const int jj = first_tile + R * i;
        if (jj <= rt) {
          const FragA<PX> sa = accumulators_as_a<M, PX>(acc_s, i);
#pragma unroll
          for (int pp = 0; pp < kAll / 2; ++pp) {
            FragB<PX> bb[2];
            load_b<M, PX>(bb, xs, (pw0 + 16 * pp) % kSsdPT, 16 * jj, true);
            mma<M>(y[2 * pp], sa, bb[0]);
            mma<M>(y[2 * pp + 1], sa, bb[1]);
          }
        }
      }
      if constexpr (R == 2) {
        // Swap the partial y of each other's columns with the other warp of the row tile,
        // through the chunk's C tile (free since the barrier above; the next chunk's copies go
        // to the other stage, or wait for the chunk's last barrier with one stage).
        float4* slots = reinterpret_cast<float4*>(Cs.base);
        float4* mine = slots + (rt * R + member) * PTL * 32 + lane;
        const float4* theirs = slots + (rt * R + 1 - member) * PTL * 32 + lane;
#pragma unroll
        for (int j = 0; j < PTL; ++j) {
          const float* v = y[PTL + j];
          mine[32 * j] = make_float4(v[0], v[1], v[2], v[3]);
        }
        asm volatile("bar.sync %0, 64;\n" ::"r"(1 + rt) : "memory");  // the row tile's two warps
#pragma unroll
        for (int j = 0; j < PTL; ++j) {
          const float4 v = theirs[32 * j];
          y[j][0] += v.x, y[j][1] += v.y, y[j][2] += v.z, y[j][3] += v.w;
        }
      }
      // + D x, gate, store.
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int t = hf ? r1 : r0;
        if (t0 + t >= t_end) continue;
        const int64_t row = hf ? row1 : row0;
#pragma unroll
        for (int j = 0; j < PTL; ++j) {
          const int p = pw0 + 8 * j + 2 * tq;
          if (p >= p_valid) continue;
          const bool both = p + 1 < p_valid;
          float2 v = make_float2(fmaf(Dh, xs.get(t, p), y[j][2 * hf]), fmaf(Dh, xs.get(t, p + 1), y[j][2 * hf + 1]));
          if (a.z) {
            const float2 zv = sizeof(T) == 2 ? unpack2<M>(zraw[hf][j])
                                             : load_two(static_cast<const T*>(a.z) + row + p, vec_yz, both);
            v.x *= silu(zv.x), v.y *= silu(zv.y);
          }
          store_two(static_cast<T*>(a.y) + row + p, v, vec_yz, both);
        }
      }
    }

    // State phase: S = exp(cum_end) S + x^T (w B), w_s = dt_s exp(cum_end - cum_s).
    {
      float acc_l[4][NJ][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
        for (int j = 0; j < NJ; ++j) acc_l[mt][j][0] = acc_l[mt][j][1] = acc_l[mt][j][2] = acc_l[mt][j][3] = 0.f;
      }
#pragma unroll
      for (int ks = 0; ks < Q / 16; ++ks) {
        float w[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = st.w_end()[16 * ks + 2 * tq + (i & 1) + (i >> 1) * 8];
        FragB<PS> bw[NJ];
#pragma unroll
        for (int q = 0; q < NJ / 2; ++q) {
          FragB<PS> two[2];
          load_b_weighted<M, PS>(two, Bs, nw0 + 16 * q, 16 * ks, w);
          bw[2 * q] = two[0], bw[2 * q + 1] = two[1];
        }
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
          const FragA<PX> xa = load_a<M, PX>(xs, 16 * mt, 16 * ks, true);
#pragma unroll
          for (int j = 0; j < NJ; ++j) mma<M>(acc_l[mt][j], xa, bw[j]);
        }
      }
      const float d = *st.chunk_decay();
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) S[mt][j][e] = fmaf(d, S[mt][j][e], acc_l[mt][j][e]);
        }
      }
    }
    if (!kStatesOnly && k + 1 < chunks) store_state_tile();
    if (K::kStages == 1 && k + 1 < chunks) {
      __syncthreads();  // every read of the stage is done
      issue_loads(0, t0 + Q);
    }
  }

  // The end state: the final state (last segment), or the segment's own (ssd_segment_states).
  float* dst = nullptr;
  if (kStatesOnly) {
    dst = a.seg_states + (slot0 + seg) * a.P * a.N;
    if (pt == 0 && threadIdx.x == 0) a.seg_log_decay[slot0 + seg] = float(seg_log_decay);
  } else if (seg == a.segments - 1) {
    dst = a.hT + int64_t(bh) * a.P * a.N;
  }
  if (dst) {
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
      for (int j = 0; j < NJ; ++j) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int p = 16 * mt + g + 8 * hf, n = nw0 + 8 * j + 2 * tq;
          if (p < p_valid && n < a.N) {
            store_two(dst + int64_t(p0 + p) * a.N + n, make_float2(S[mt][j][2 * hf], S[mt][j][2 * hf + 1]), vec_state,
                      n + 1 < a.N);
          }
        }
      }
    }
  }
}

// With more than kSsdBlockChainMax segments: turns each (batch, head)'s segment end states from
// zero, in place, into the true end states (from the initial state). One thread per state
// element; kBatch segments' loads are issued together.
template <int kBatch>
__global__ void __launch_bounds__(256) ssd_pass_segments(const SsdArgs a) {
  const int64_t pn = int64_t(a.P) * a.N, total = int64_t(a.batch) * a.H * pn;
  const int slots = a.segments - 1;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bh = i / pn, e = i - bh * pn;
    float* states = a.seg_states + bh * slots * pn + e;
    const float* log_decay = a.seg_log_decay + bh * slots;
    float s = a.h0 ? a.h0[i] : 0.f;
    for (int j0 = 0; j0 < slots; j0 += kBatch) {
      float local[kBatch], ld[kBatch];
#pragma unroll
      for (int q = 0; q < kBatch; ++q) {
        if (j0 + q < slots) local[q] = states[(j0 + q) * pn], ld[q] = log_decay[j0 + q];
      }
#pragma unroll
      for (int q = 0; q < kBatch; ++q) {
        if (j0 + q < slots) {
          s = fmaf(exp2_accurate(ld[q] * kLog2e), s, local[q]);
          states[(j0 + q) * pn] = s;
        }
      }
    }
  }
}

}  // namespace mamba_cuda
