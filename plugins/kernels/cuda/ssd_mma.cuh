// Warp-level matrix products of the SSD scan on the tensor cores: mma.sync m16n8k16 with
// 16-bit operands and float32 accumulation, fragments read from shared memory.
//
// Operands carry "pieces": a float operand that a 16-bit type cannot hold exactly is split
// into v = p0 + p1 (+ p2), each piece a 16-bit value, and a product sums the piece products
// with i + j < max(pieces of A, pieces of B) (the dropped terms are below float32's
// precision). So one code path serves every activation type:
//   - float16 / bfloat16 inputs (x, B, C) are exact in one piece of their own type; a
//     weighted operand that feeds the state (dt * decay * B) takes two pieces, since the
//     final state must hold 1e-4 (one bfloat16 rounding is 2e-3);
//   - float32 inputs are three bfloat16 pieces (8 + 8 + 8 significant bits), products six.
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with .bf16/.f16): lane = 4 g + t; A (16 x 16,
// row-major) holds (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..); B (16 x 8) holds
// (k = 2t..2t+1, n = g), (k = 2t+8.., n = g); the accumulator (16 x 8) holds (g, 2t..2t+1),
// (g+8, 2t..2t+1). Shared tiles of 16-bit elements are read with ldmatrix; float32 tiles
// element by element (their rows are padded so that either access is free of bank conflicts).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#include "scan_device.cuh"

namespace mamba_cuda {

// The 16-bit type the tensor cores multiply for activations of type T.
template <typename T>
using MmaType = std::conditional_t<std::is_same_v<T, __half>, __half, __nv_bfloat16>;

// Pieces an operand of activations of type T needs: exact inputs, and inputs scaled by a
// float32 weight.
template <typename T>
constexpr int kExactPieces = std::is_same_v<T, float> ? 3 : 1;
template <typename T>
constexpr int kWeightedPieces = std::is_same_v<T, float> ? 3 : 2;

template <typename M>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<M, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
}

template <typename M>
__device__ __forceinline__ float2 unpack2(uint32_t w) {
  if constexpr (std::is_same_v<M, __half>) {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
  } else {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  }
}

// v0, v1 (consecutive along k) as P pieces of M: piece i is the rounding of what the
// pieces before it left over.
template <typename M, int P>
__device__ __forceinline__ void split2(float v0, float v1, uint32_t (&out)[P]) {
#pragma unroll
  for (int i = 0; i < P; ++i) {
    out[i] = pack2<M>(v0, v1);
    if (i + 1 < P) {
      const float2 r = unpack2<M>(out[i]);
      v0 -= r.x, v1 -= r.y;
    }
  }
}

// Fragments in pieces.
template <int P>
struct FragA {
  uint32_t r[P][4];
};
template <int P>
struct FragB {
  uint32_t r[P][2];
};

template <typename M>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<M, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// c += A B over the piece products that matter.
template <typename M, int PA, int PB>
__device__ __forceinline__ void mma(float (&c)[4], const FragA<PA>& a, const FragB<PB>& b) {
  constexpr int kMax = PA > PB ? PA : PB;
#pragma unroll
  for (int i = 0; i < PA; ++i) {
#pragma unroll
    for (int j = 0; j < PB; ++j) {
      if (i + j < kMax) mma16816<M>(c, a.r[i], b.r[j]);
    }
  }
}

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  if (trans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_address(row)));
  }
}

// A shared tile: element (row, col) at base[row * ld + col], E = float or a 16-bit type.
template <typename E>
struct Tile {
  E* base;
  int ld;
  __device__ __forceinline__ E* at(int row, int col) const { return base + row * ld + col; }
  __device__ __forceinline__ float get(int row, int col) const { return to_float(*at(row, col)); }
};

// The A fragment (16 x 16) at rows m0, columns k0 of a matrix stored as s[m][k] (k_major
// = false) or s[k][m] (k_major = true), as floats in fragment order.
template <typename E>
__device__ __forceinline__ void load_a_floats(float (&f)[8], const Tile<E>& s, int m0, int k0, bool k_major) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = m0 + g + ((i >> 1) & 1) * 8, k = k0 + 2 * t + (i & 1) + (i >> 2) * 8;
    f[i] = k_major ? s.get(k, m) : s.get(m, k);
  }
}

// The B fragments of two adjacent 8-column tiles (n0 and n0 + 8; 16 x 8 each) at rows k0 of
// a matrix stored as s[n][k] (k_major = false) or s[k][n] (k_major = true), as floats:
// f[q][i] for tile q, i = 0..3 at k = k0 + 2t + (i & 1) + (i >> 1) * 8, n = n0 + 8q + g.
template <typename E>
__device__ __forceinline__ void load_b_floats(float (&f)[2][4], const Tile<E>& s, int n0, int k0, bool k_major) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int q = 0; q < 2; ++q) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int n = n0 + 8 * q + g, k = k0 + 2 * t + (i & 1) + (i >> 1) * 8;
      f[q][i] = k_major ? s.get(k, n) : s.get(n, k);
    }
  }
}

// The exact A fragment of a tile (see load_a_floats): ldmatrix for 16-bit elements.
template <typename M, int P, typename E>
__device__ __forceinline__ FragA<P> load_a(const Tile<E>& s, int m0, int k0, bool k_major) {
  FragA<P> a;
  if constexpr (std::is_same_v<E, float>) {
    float f[8];
    load_a_floats(f, s, m0, k0, k_major);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t w[P];
      split2<M, P>(f[2 * i], f[2 * i + 1], w);
#pragma unroll
      for (int j = 0; j < P; ++j) a.r[j][i] = w[j];
    }
  } else {
    static_assert(P == 1, "16-bit tiles are exact in one piece");
    // Lane l addresses row l % 8 of 8 x 8 matrix l / 8; matrices in register order.
    const int lane = threadIdx.x & 31, r = lane & 7, mi = lane >> 3;
    if (k_major) {  // matrix mi: k rows k0 + 8 (mi >> 1), m columns m0 + 8 (mi & 1)
      ldmatrix_x4(a.r[0], s.at(k0 + r + (mi >> 1) * 8, m0 + (mi & 1) * 8), true);
    } else {  // matrix mi: m rows m0 + 8 (mi & 1), k columns k0 + 8 (mi >> 1)
      ldmatrix_x4(a.r[0], s.at(m0 + r + (mi & 1) * 8, k0 + (mi >> 1) * 8), false);
    }
  }
  return a;
}

// The exact B fragments of two adjacent n tiles (see load_b_floats).
template <typename M, int P, typename E>
__device__ __forceinline__ void load_b(FragB<P> (&b)[2], const Tile<E>& s, int n0, int k0, bool k_major) {
  if constexpr (std::is_same_v<E, float>) {
    float f[2][4];
    load_b_floats(f, s, n0, k0, k_major);
#pragma unroll
    for (int q = 0; q < 2; ++q) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        uint32_t w[P];
        split2<M, P>(f[q][2 * i], f[q][2 * i + 1], w);
#pragma unroll
        for (int j = 0; j < P; ++j) b[q].r[j][i] = w[j];
      }
    }
  } else {
    static_assert(P == 1, "16-bit tiles are exact in one piece");
    const int lane = threadIdx.x & 31, r = lane & 7, mi = lane >> 3;
    uint32_t w[4];
    if (k_major) {  // matrix mi: k rows k0 + 8 (mi & 1), n columns n0 + 8 (mi >> 1)
      ldmatrix_x4(w, s.at(k0 + r + (mi & 1) * 8, n0 + (mi >> 1) * 8), true);
    } else {  // matrix mi: n rows n0 + 8 (mi >> 1), k columns k0 + 8 (mi & 1)
      ldmatrix_x4(w, s.at(n0 + r + (mi >> 1) * 8, k0 + (mi & 1) * 8), false);
    }
    b[0].r[0][0] = w[0], b[0].r[0][1] = w[1], b[1].r[0][0] = w[2], b[1].r[0][1] = w[3];
  }
}

// B fragments of two adjacent n tiles of a k-major tile, each element scaled by the weight
// of its k (w[i] for k = k0 + 2t + (i & 1) + (i >> 1) * 8), in P pieces.
template <typename M, int P, typename E>
__device__ __forceinline__ void load_b_weighted(FragB<P> (&b)[2], const Tile<E>& s, int n0, int k0,
                                                const float (&w)[4]) {
  float f[2][4];
  if constexpr (std::is_same_v<E, float>) {
    load_b_floats(f, s, n0, k0, true);
  } else {
    FragB<1> e[2];
    load_b<M, 1>(e, s, n0, k0, true);
#pragma unroll
    for (int q = 0; q < 2; ++q) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const float2 v = unpack2<M>(e[q].r[0][i]);
        f[q][2 * i] = v.x, f[q][2 * i + 1] = v.y;
      }
    }
  }
#pragma unroll
  for (int q = 0; q < 2; ++q) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      uint32_t p[P];
      split2<M, P>(f[q][2 * i] * w[2 * i], f[q][2 * i + 1] * w[2 * i + 1], p);
#pragma unroll
      for (int j = 0; j < P; ++j) b[q].r[j][i] = p[j];
    }
  }
}

// The A fragment of the k-step kk out of accumulators c[j] (16 x 8 tiles along k): the
// accumulator layout of tiles 2kk and 2kk+1 is the A layout, in P pieces.
template <typename M, int P, int J>
__device__ __forceinline__ FragA<P> accumulators_as_a(const float (&c)[J][4], int kk) {
  FragA<P> a;
  const float* c0 = c[2 * kk];
  const float* c1 = c[2 * kk + 1];
  const float v[8] = {c0[0], c0[1], c0[2], c0[3], c1[0], c1[1], c1[2], c1[3]};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint32_t w[P];
    split2<M, P>(v[2 * i], v[2 * i + 1], w);
#pragma unroll
    for (int j = 0; j < P; ++j) a.r[j][i] = w[j];
  }
  return a;
}

}  // namespace mamba_cuda
