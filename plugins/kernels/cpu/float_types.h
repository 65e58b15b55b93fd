// float16 / bfloat16 storage types of the CPU kernels and their conversions to and from
// float32 (docs/ops.md: widen on load, round to nearest even on store). Written with
// integer bit operations only, so they need no F16C/AVX512-BF16 and give the same bits on
// every machine.
#ifndef MAMBA_CPU_FLOAT_TYPES_H
#define MAMBA_CPU_FLOAT_TYPES_H

#include <cstdint>
#include <cstring>

// Forced inline: the scans are compiled twice (generic and AVX2 + FMA, see dispatch.h),
// and GCC only inlines a plain function into one with other target options when forced.
#define MAMBA_INLINE inline __attribute__((always_inline))
#define MAMBA_RESTRICT __restrict__

namespace mamba_cpu {

struct half_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

MAMBA_INLINE uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

MAMBA_INLINE float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

MAMBA_INLINE float to_float(float x) { return x; }

MAMBA_INLINE float to_float(half_t h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t magnitude = h.bits & 0x7fffu;
  if (magnitude >= 0x7c00u) {  // inf / NaN: keep the payload
    return bits_float(sign | 0x7f800000u | ((magnitude & 0x3ffu) << 13));
  }
  if (magnitude >= 0x0400u) {  // normal: rebias the exponent from 15 to 127
    return bits_float(sign | ((magnitude + ((127u - 15u) << 10)) << 13));
  }
  // Subnormal or zero: the value is magnitude * 2^-24, exact in float.
  return bits_float(sign | float_bits(static_cast<float>(magnitude) * 0x1p-24f));
}

MAMBA_INLINE float to_float(bf16_t b) { return bits_float(static_cast<uint32_t>(b.bits) << 16); }

template <typename T>
T from_float(float x);

template <>
MAMBA_INLINE float from_float<float>(float x) {
  return x;
}

template <>
MAMBA_INLINE half_t from_float<half_t>(float x) {
  const uint32_t u = float_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) {  // NaN: quiet, keep the top payload bits
    return {static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu))};
  }
  if (magnitude >= 0x477ff000u) {  // >= 65520 rounds past the largest half (65504): inf
    return {static_cast<uint16_t>(sign | 0x7c00u)};
  }
  if (magnitude < 0x38800000u) {
    // Below 2^-14 the result is subnormal, a multiple of 2^-24. Adding 0.5 (whose ulp is
    // 2^-24) lets the FPU round |x| to that grid, nearest even; the low bits of the sum
    // are then the half's bits (0x400 when it rounds up to the smallest normal).
    const float sum = bits_float(magnitude) + 0.5f;
    return {static_cast<uint16_t>(sign | (float_bits(sum) - float_bits(0.5f)))};
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits, ties to even.
  const uint32_t odd = (magnitude >> 13) & 1u;
  const uint32_t rounded = magnitude - ((127u - 15u) << 23) + 0xfffu + odd;
  return {static_cast<uint16_t>(sign | (rounded >> 13))};
}

template <>
MAMBA_INLINE bf16_t from_float<bf16_t>(float x) {
  const uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: truncating could make it inf, force quiet
    return {static_cast<uint16_t>((u >> 16) | 0x40u)};
  }
  const uint32_t odd = (u >> 16) & 1u;
  return {static_cast<uint16_t>((u + 0x7fffu + odd) >> 16)};
}

}  // namespace mamba_cpu

#endif  // MAMBA_CPU_FLOAT_TYPES_H
