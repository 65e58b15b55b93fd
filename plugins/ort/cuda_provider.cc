#include "cuda_provider.h"

#include <string>

namespace mamba_ort {
namespace {

// Device scratch memory from the session's allocator for `where` (so ORT accounts for it and
// reuses it in stream order), returned when the launch has been enqueued.
class Workspace {
 public:
  Workspace(Ort::KernelContext& context, const OrtMemoryInfo* where, size_t bytes) {
    if (!bytes) return;
    const OrtApi& api = Ort::GetApi();
    OrtKernelContext* raw = context.GetOrtKernelContext();
    Ort::ThrowOnError(api.KernelContext_GetAllocator(raw, where, &allocator_));
    Ort::ThrowOnError(api.KernelContext_GetScratchBuffer(raw, where, bytes, &data_));
  }
  ~Workspace() {
    if (data_) allocator_->Free(allocator_, data_);
    if (allocator_) Ort::GetApi().ReleaseAllocator(allocator_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* data() const { return data_; }

 private:
  OrtAllocator* allocator_ = nullptr;
  void* data_ = nullptr;
};

}  // namespace

void CudaProvider::launch(const mamba_selective_scan_params& p, Ort::KernelContext& context) {
  // The contract holds (bind_inputs checked it); what is left are the CUDA kernels' own limits.
  if (const char* limit = mamba_selective_scan_cuda_check(&p)) {
    throw ContractViolation(std::string(limit) + " (a limit of the CUDA kernel; the CPU execution provider has none)");
  }
  const Workspace workspace(context, context.GetInput(0).GetTensorMemoryInfo(),
                            mamba_selective_scan_cuda_workspace_size(&p));
  if (const int err = mamba_selective_scan_cuda(&p, workspace.data(), context.GetGPUComputeStream())) {
    throw std::runtime_error("the CUDA kernel failed to launch (cudaError " + std::to_string(err) + ")");
  }
}

}  // namespace mamba_ort
