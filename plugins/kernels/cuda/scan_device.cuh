// Device helpers of the CUDA selective scan: element types, vector loads with tails, and
// the elementwise functions of docs/ops.md written with the hardware's approximate units
// where their error (~2^-22 relative) stays far inside the float32 tolerance (1e-5).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

namespace mamba_cuda {

constexpr float kLog2e = 1.4426950408889634f;

// 2^x on the special-function unit: one MUFU.EX2, relative error ~2^-22, ftz.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// 2^x to ~1.5 ulp without the special-function unit, and without bias: a degree-6 fit of
// 2^f on [-1/2, 1/2] and the exponent field for the integer part (x clamped to [-126, 126]).
// The scan multiplies many per-step factors exp(dt*A) close to 1; ex2.approx's small
// systematic error would compound over a long state memory (1e-5 after a few thousand
// steps of dt ~ 1e-3), so each tile's total decay is recomputed with this one.
__device__ __forceinline__ float exp2_accurate(float x) {
  x = fminf(fmaxf(x, -126.f), 126.f);
  const float n = rintf(x), f = x - n;
  float p = fmaf(0.00015345921565312892f, f, 0.0013399932067841291f);
  p = fmaf(p, f, 0.009618488140404224f);
  p = fmaf(p, f, 0.05550328642129898f);
  p = fmaf(p, f, 0.24022646248340607f);
  p = fmaf(p, f, 0.6931471824645996f);
  p = fmaf(p, f, 1.f);
  return p * __int_as_float((int(n) + 127) << 23);
}

// softplus(x) = log(1 + e^x). Branch-free: max(x, 0) + log1p(w) with w = e^-|x| in (0, 1],
// and log1p(w) = 2 atanh(s), s = w / (2 + w) in (0, 1/3], as s times a degree-4 polynomial in
// s^2 (fitted, relative error 4e-9). Above 20 the correction (< 2.1e-9) is below half an ulp
// of x, so x passes through as torch's threshold has it, with no select. Small results
// (dt ~ 1e-3 in trained models) keep their relative accuracy (~1e-6 overall), which log2 on
// the special-function unit would not (its error is absolute near 1).
__device__ __forceinline__ float softplus(float x) {
  const float w = ex2(-fabsf(x) * kLog2e);
  const float s = __fdividef(w, 2.f + w);
  const float t = s * s;
  float p = fmaf(0.28178584575653076f, t, 0.2796054780483246f);
  p = fmaf(p, t, 0.4002491533756256f);
  p = fmaf(p, t, 0.6666631698608398f);
  p = fmaf(p, t, 2.f);
  return fmaf(s, p, fmaxf(x, 0.f));
}

// z * sigmoid(z); for z < -88, e^-z is inf and the quotient a signed zero.
__device__ __forceinline__ float silu(float z) { return __fdividef(z, 1.f + ex2(-z * kLog2e)); }

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round to nearest even, as docs/ops.md asks of y.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__device__ __forceinline__ T bits_to(uint32_t bits);
template <>
__device__ __forceinline__ __half bits_to<__half>(uint32_t bits) { return __ushort_as_half(uint16_t(bits)); }
template <>
__device__ __forceinline__ __nv_bfloat16 bits_to<__nv_bfloat16>(uint32_t bits) {
  return __ushort_as_bfloat16(uint16_t(bits));
}
__device__ __forceinline__ uint32_t to_bits(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ uint32_t to_bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

__host__ __device__ constexpr int min_int(int a, int b) { return a < b ? a : b; }

// V consecutive elements of T in registers, kept as the raw 32-bit words they were loaded
// as: split into 16-bit halves right after the load, the compiler would wait for the load
// there, where the data is meant to travel a whole tile ahead of its use.
template <typename T, int V>
struct Pack {
  static constexpr int kWords = (V * int(sizeof(T)) + 3) / 4;
  alignas(16) uint32_t w[kWords];
  __device__ __forceinline__ float get(int k) const {
    if constexpr (sizeof(T) == 4) {
      return __uint_as_float(w[k]);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {  // bfloat16 is float's top half
      return __uint_as_float(k & 1 ? w[k / 2] & 0xffff0000u : w[k / 2] << 16);
    } else {
      return to_float(bits_to<T>(k & 1 ? w[k / 2] >> 16 : w[k / 2] & 0xffffu));
    }
  }
  // Elements k and k + 1 (k even): one packing conversion for the 16-bit types.
  __device__ __forceinline__ void set2(int k, float v0, float v1) {
    if constexpr (sizeof(T) == 4) {
      w[k] = __float_as_uint(v0), w[k + 1] = __float_as_uint(v1);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      const __nv_bfloat162 p = __floats2bfloat162_rn(v0, v1);
      w[k / 2] = *reinterpret_cast<const uint32_t*>(&p);
    } else {
      const __half2 p = __floats2half2_rn(v0, v1);
      w[k / 2] = *reinterpret_cast<const uint32_t*>(&p);
    }
  }
  __device__ __forceinline__ void set(int k, float v) {
    if constexpr (sizeof(T) == 4) {
      w[k] = __float_as_uint(v);
    } else {
      const uint32_t half = to_bits(from_float<T>(v));
      w[k / 2] = k & 1 ? (w[k / 2] & 0xffffu) | (half << 16) : half;
    }
  }
};

// The access width of a Pack: its size up to 16 bytes (larger packs take several).
template <typename T, int V>
__host__ __device__ constexpr int pack_align() {
  return min_int(16, V * int(sizeof(T)));
}

template <int Bytes>
struct Word;
template <>
struct Word<2> {
  using type = uint16_t;
};
template <>
struct Word<4> {
  using type = uint32_t;
};
template <>
struct Word<8> {
  using type = uint2;
};
template <>
struct Word<16> {
  using type = uint4;
};

// Loads p[0, valid) into r and zeros the rest. `vec` says p is aligned to the pack's access
// width; then a full pack is read with vector loads. p is not touched when valid <= 0.
template <typename T, int V>
__device__ __forceinline__ void load_pack(Pack<T, V>& r, const T* p, int valid, bool vec) {
  constexpr int kAlign = pack_align<T, V>();
  using W = typename Word<kAlign>::type;
  constexpr int kLoads = V * int(sizeof(T)) / kAlign;
  if (vec && valid >= V) {
#pragma unroll
    for (int i = 0; i < kLoads; ++i) reinterpret_cast<W*>(r.w)[i] = reinterpret_cast<const W*>(p)[i];
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) r.set(i, i < valid ? to_float(p[i]) : 0.f);
  }
}

// Stores r[0, valid) to p (vector stores for a full, aligned pack).
template <typename T, int V>
__device__ __forceinline__ void store_pack(const Pack<T, V>& r, T* p, int valid, bool vec) {
  constexpr int kAlign = pack_align<T, V>();
  using W = typename Word<kAlign>::type;
  constexpr int kStores = V * int(sizeof(T)) / kAlign;
  if (vec && valid >= V) {
#pragma unroll
    for (int i = 0; i < kStores; ++i) reinterpret_cast<W*>(p)[i] = reinterpret_cast<const W*>(r.w)[i];
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) {
      if (i < valid) p[i] = from_float<T>(r.get(i));
    }
  }
}

// Reads V consecutive floats from shared memory with the widest aligned accesses.
template <int V>
__device__ __forceinline__ void load_shared(float (&r)[V], const float* p) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) {
      const float4 w = *reinterpret_cast<const float4*>(p + i);
      r[i] = w.x, r[i + 1] = w.y, r[i + 2] = w.z, r[i + 3] = w.w;
    }
  } else if constexpr (V == 2) {
    const float2 w = *reinterpret_cast<const float2*>(p);
    r[0] = w.x, r[1] = w.y;
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) r[i] = p[i];
  }
}

// Writes V consecutive floats to shared memory with the widest aligned accesses.
template <int V>
__device__ __forceinline__ void store_shared(float* p, const float (&r)[V]) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int i = 0; i < V; i += 4) *reinterpret_cast<float4*>(p + i) = make_float4(r[i], r[i + 1], r[i + 2], r[i + 3]);
  } else if constexpr (V == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(r[0], r[1]);
  } else {
#pragma unroll
    for (int i = 0; i < V; ++i) p[i] = r[i];
  }
}

// Four steps of the recurrence for NS states of a channel: s holds (dt, dt*u) of the steps;
// B and C point at the first state's row at the first step, `stride` floats between states;
// h is the running state and, with Anchor, hl the tile's scan from zero; acc[k] (zeroed by
// the caller) gets the sum over the NS states of C*h after step k.
template <int NS, bool Anchor>
__device__ __forceinline__ void scan4(const float (&s)[8], const float (&A2)[NS], const float* B, const float* C,
                                      int stride, float (&h)[NS], float (&hl)[NS], float (&acc)[4]) {
#pragma unroll
  for (int q = 0; q < NS; ++q) {
    float bq[4], cq[4];
    load_shared<4>(bq, B + q * stride);
    load_shared<4>(cq, C + q * stride);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float dA = ex2(s[2 * k] * A2[q]), dBu = s[2 * k + 1] * bq[k];
      h[q] = fmaf(dA, h[q], dBu);
      if constexpr (Anchor) hl[q] = fmaf(dA, hl[q], dBu);
      acc[k] = fmaf(cq[k], h[q], acc[k]);
    }
  }
}

}  // namespace mamba_cuda
