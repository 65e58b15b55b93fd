// Runs the CUDA selective scan (C ABI of libmamba_kernels.so) over small cases that reach
// every kernel and tiling, for compute-sanitizer (memcheck, racecheck, synccheck): every
// tensor is its own allocation of exactly its size, so any access past a tensor is caught.
// With the argument `ssd`, the same for the SSD scan.
// Usage: sanitize_driver [ssd]  (links libmamba_kernels.so; exits 1 on any CUDA error)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "mamba_kernels.h"

namespace {

std::mt19937 rng(0);

// A device copy of n random values of type `dtype` (float32 for the float inputs), placed
// `offset` elements into an allocation of exactly that size.
void* random_device(size_t n, mamba_dtype dtype, size_t offset = 0) {
  if (n == 0) return nullptr;
  std::normal_distribution<float> dist(0.f, 0.5f);
  const size_t e = dtype == MAMBA_FLOAT32 ? 4 : 2;
  std::vector<unsigned char> host((n + offset) * e);
  for (size_t i = 0; i < n + offset; ++i) {
    const float f = dist(rng);
    if (dtype == MAMBA_FLOAT32) {
      memcpy(&host[i * e], &f, e);
    } else if (dtype == MAMBA_FLOAT16) {
      const __half h = __float2half(f);
      memcpy(&host[i * e], &h, e);
    } else {
      const __nv_bfloat16 h = __float2bfloat16(f);
      memcpy(&host[i * e], &h, e);
    }
  }
  void* d = nullptr;
  if (cudaMalloc(&d, host.size()) != cudaSuccess) exit(1);
  cudaMemcpy(d, host.data(), host.size(), cudaMemcpyHostToDevice);
  return static_cast<char*>(d) + offset * e;
}

struct Case {
  int64_t batch, dim, L, N, G;
  mamba_dtype dtype;
  bool optional;        // D, z, delta_bias, initial_state present
  const char* plan;     // MAMBA_KERNELS_SCAN_PLAN, or nullptr
  size_t misalign;      // elements of offset of u, delta, z, y into their allocations
};

int run(const Case& c) {
  if (c.plan) setenv("MAMBA_KERNELS_SCAN_PLAN", c.plan, 1);
  else unsetenv("MAMBA_KERNELS_SCAN_PLAN");
  const size_t act = c.batch * c.dim * c.L, state = c.batch * c.dim * c.N, bc = c.batch * c.G * c.N * c.L;
  mamba_selective_scan_params p{};
  p.batch = c.batch, p.dim = c.dim, p.seqlen = c.L, p.dstate = c.N, p.groups = c.G, p.dtype = c.dtype;
  p.u = random_device(act, c.dtype, c.misalign);
  p.delta = random_device(act, c.dtype, c.misalign);
  p.A = static_cast<const float*>(random_device(c.dim * c.N, MAMBA_FLOAT32));
  p.B = random_device(bc, c.dtype);
  p.C = random_device(bc, c.dtype);
  if (c.optional) {
    p.D = static_cast<const float*>(random_device(c.dim, MAMBA_FLOAT32));
    p.z = random_device(act, c.dtype, c.misalign);
    p.delta_bias = static_cast<const float*>(random_device(c.dim, MAMBA_FLOAT32));
    p.initial_state = static_cast<const float*>(random_device(state, MAMBA_FLOAT32));
  }
  p.delta_softplus = 1;
  p.y = random_device(act, c.dtype, c.misalign);
  p.final_state = static_cast<float*>(random_device(state, MAMBA_FLOAT32));
  if (const char* msg = mamba_selective_scan_cuda_check(&p)) {
    fprintf(stderr, "rejected: %s\n", msg);
    return 1;
  }
  const int err = mamba_selective_scan_cuda(&p, nullptr, nullptr);
  const cudaError_t sync = cudaDeviceSynchronize();
  printf("batch %lld dim %lld L %lld N %lld G %lld dtype %d optional %d plan %s misalign %zu: %s\n",
         (long long)c.batch, (long long)c.dim, (long long)c.L, (long long)c.N, (long long)c.G, int(c.dtype),
         int(c.optional), c.plan ? c.plan : "auto", c.misalign, err || sync ? "FAILED" : "ok");
  return err || sync ? 1 : 0;  // allocations are left to process exit
}

struct SsdCase {
  int64_t batch, L, H, P, N, G;
  mamba_dtype dtype;
  bool optional;        // D, z, dt_bias, initial_state present
  const char* segment;  // MAMBA_KERNELS_SSD_SEGMENT, or nullptr
  size_t misalign;      // elements of offset of x, dt, z, y into their allocations
};

int run_ssd(const SsdCase& c) {
  if (c.segment) setenv("MAMBA_KERNELS_SSD_SEGMENT", c.segment, 1);
  else unsetenv("MAMBA_KERNELS_SSD_SEGMENT");
  const size_t act = c.batch * c.L * c.H * c.P, state = c.batch * c.H * c.P * c.N, bc = c.batch * c.L * c.G * c.N;
  mamba_ssd_scan_params p{};
  p.batch = c.batch, p.seqlen = c.L, p.nheads = c.H, p.headdim = c.P, p.dstate = c.N, p.groups = c.G;
  p.dtype = c.dtype;
  p.x = random_device(act, c.dtype, c.misalign);
  p.dt = random_device(c.batch * c.L * c.H, c.dtype, c.misalign);
  p.A = static_cast<const float*>(random_device(c.H, MAMBA_FLOAT32));
  p.B = random_device(bc, c.dtype);
  p.C = random_device(bc, c.dtype);
  if (c.optional) {
    p.D = static_cast<const float*>(random_device(c.H, MAMBA_FLOAT32));
    p.z = random_device(act, c.dtype, c.misalign);
    p.dt_bias = static_cast<const float*>(random_device(c.H, MAMBA_FLOAT32));
    p.initial_state = static_cast<const float*>(random_device(state, MAMBA_FLOAT32));
  }
  p.dt_softplus = 1, p.dt_min = 0.f, p.dt_max = INFINITY;
  p.y = random_device(act, c.dtype, c.misalign);
  p.final_state = static_cast<float*>(random_device(state, MAMBA_FLOAT32));
  if (const char* msg = mamba_ssd_scan_cuda_check(&p)) {
    fprintf(stderr, "rejected: %s\n", msg);
    return 1;
  }
  void* workspace = nullptr;
  if (const size_t size = mamba_ssd_scan_cuda_workspace_size(&p)) {
    if (cudaMalloc(&workspace, size) != cudaSuccess) return 1;
  }
  const int err = mamba_ssd_scan_cuda(&p, workspace, nullptr);
  const cudaError_t sync = cudaDeviceSynchronize();
  printf("ssd batch %lld L %lld H %lld P %lld N %lld G %lld dtype %d optional %d segment %s misalign %zu: %s\n",
         (long long)c.batch, (long long)c.L, (long long)c.H, (long long)c.P, (long long)c.N, (long long)c.G,
         int(c.dtype), int(c.optional), c.segment ? c.segment : "auto", c.misalign, err || sync ? "FAILED" : "ok");
  return err || sync ? 1 : 0;  // allocations are left to process exit
}

int run_ssd_cases() {
  int failures = 0;
  const mamba_dtype types[] = {MAMBA_FLOAT32, MAMBA_FLOAT16, MAMBA_BFLOAT16};
  for (mamba_dtype t : types) {
    for (int64_t N : {16, 128, 200}) failures += run_ssd({1, 130, 2, 64, N, 1, t, true, nullptr, 0});
    failures += run_ssd({2, 70, 4, 80, 64, 2, t, true, "1", 0});       // segments, two p tiles
    failures += run_ssd({1, 400, 2, 64, 128, 1, t, true, "1", 0});     // 7 segments: the chaining kernel
    failures += run_ssd({1, 200, 2, 33, 17, 1, t, false, "2", 1});     // misaligned, scalar paths
    failures += run_ssd({2, 65, 3, 16, 256, 3, t, true, nullptr, 1});
    for (int64_t N : {5, 128, 256}) failures += run_ssd({2, 1, 3, 16, N, 3, t, true, nullptr, 0});  // decode
    failures += run_ssd({2, 0, 2, 8, 16, 1, t, true, nullptr, 0});
  }
  printf("%d failures\n", failures);
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && !strcmp(argv[1], "ssd")) return run_ssd_cases();
  int failures = 0;
  const mamba_dtype types[] = {MAMBA_FLOAT32, MAMBA_FLOAT16, MAMBA_BFLOAT16};
  const char* plans[] = {nullptr, "chained", "fused_r8", "fused"};
  for (mamba_dtype t : types) {
    for (const char* plan : plans) {
      failures += run({2, 12, 37, 16, 3, t, true, plan, 0});
      failures += run({1, 5, 70, 7, 1, t, false, plan, 1});
    }
    for (int64_t N : {1, 24, 33, 100, 256}) failures += run({1, 6, 45, N, 2, t, true, nullptr, 1});
    for (int64_t N : {5, 16, 100, 256}) failures += run({3, 7, 1, N, 7, t, true, nullptr, 0});  // decode
    failures += run({3, 7, 1, 16, 7, t, true, "decode8", 0});
    failures += run({2, 5, 1, 12, 1, t, false, "decode8", 1});
    failures += run({2, 4, 0, 16, 1, t, true, nullptr, 0});
  }
  printf("%d failures\n", failures);
  return failures ? 1 : 0;
}
