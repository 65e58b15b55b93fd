// Elementwise float32 functions of the CPU scan, written as plain branch-free arithmetic
// that the auto-vectoriser turns into SIMD (libm's expf/log1pf are opaque calls that stop it).
//
// exp_f32 is the hot one (batch * dim * L * N calls): a round-to-nearest range reduction
// x = k ln2 + r, |r| <= ln2/2, a degree-7 Taylor polynomial for e^r (truncation error
// below 6e-9 relative) and a scaling by 2^k built from exponent bits. Max error ~1 ulp.
#ifndef MAMBA_CPU_FAST_MATH_H
#define MAMBA_CPU_FAST_MATH_H

#include <cmath>
#include <cstdint>

#include "float_types.h"

namespace mamba_cpu {

// c ? a : b through bit masks. A plain ?: with a constant arm lets GCC split the loop into
// branches (constant-folding exp in one of them) and then it no longer vectorises.
MAMBA_INLINE float select(bool c, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return bits_float((float_bits(a) & mask) | (float_bits(b) & ~mask));
}

// 2^e for integer e in [-126, 127], built directly in the exponent field.
MAMBA_INLINE float pow2i(uint32_t e) { return bits_float((e + 127u) << 23); }

MAMBA_INLINE float exp_f32(float x) {
  // Below -104 the result rounds to 0; above 89 it overflows to inf. Comparisons keep NaN.
  x = select(x < -104.0f, -104.0f, x);
  x = select(x > 89.0f, 89.0f, x);
  // k = round(x / ln2): adding 1.5 * 2^23 rounds to an integer (nearest even) that then
  // sits in the low mantissa bits, so it is read off the bits without a float->int cast.
  const float shifter = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + shifter;
  const float k = shifted - shifter;
  const uint32_t ki = float_bits(shifted) - float_bits(shifter);  // k mod 2^32
  // r = x - k ln2 in two steps: ln2_hi has few mantissa bits so k * ln2_hi is exact.
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // k is in [-150, 129]: split 2^k in two factors that are both normal floats, so results
  // near the ends of the range under- or overflow through IEEE rounding like expf does.
  const uint32_t k1 = static_cast<uint32_t>(static_cast<int32_t>(ki) >> 1);
  return p * pow2i(k1) * pow2i(ki - k1);
}

// log(1 + v) for v in [0, 1]. 1 + v = 2^e m with m in [sqrt(1/2), sqrt(2)], and
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, summed to s^9 (error < 1e-9);
// corr puts back the rounding error of 1 + v to first order.
MAMBA_INLINE float log1p_unit(float v) {
  const float w = 1.0f + v;
  const float corr = (v - (w - 1.0f)) / w;
  const bool halve = w > 1.41421356f;
  const float f = select(halve, 0.5f * w, w) - 1.0f;
  const float s = f / (2.0f + f);
  const float s2 = s * s;
  float q = 2.0f / 9.0f;
  q = q * s2 + 2.0f / 7.0f;
  q = q * s2 + 2.0f / 5.0f;
  q = q * s2 + 2.0f / 3.0f;
  q = q * s2 + 2.0f;
  return select(halve, 0.693147181f, 0.0f) + s * q + corr;
}

// softplus as docs/ops.md defines it (x above 20 passes through, as in torch), computed as
// max(x, 0) + log1p(exp(-|x|)), which never overflows and vectorises.
MAMBA_INLINE float softplus_f32(float x) {
  const float r = select(x > 0.0f, x, 0.0f) + log1p_unit(exp_f32(-std::fabs(x)));
  return select(x > 20.0f, x, r);
}

MAMBA_INLINE float silu_f32(float x) { return x / (1.0f + exp_f32(-x)); }

}  // namespace mamba_cpu

#endif  // MAMBA_CPU_FAST_MATH_H
